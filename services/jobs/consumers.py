"""The jobs worker's two durable pull consumers, created at start-up when missing.

| consumer (`Subjects`) | stream           | ack wait                  | deliveries          |
|-----------------------|------------------|---------------------------|---------------------|
| `line_consumer`       | `lines_stream`   | `line_ack_wait(jobs)`     | `jobs.max_deliver`  |
| `control_consumer`    | `control_stream` | 10 minutes                | `jobs.max_deliver`  |

JetStream's own `backoff` list would replace the ack wait (the server sets the ack wait to its
first value), so a line running longer than that would be redelivered while it still runs.
The worker applies `jobs.backoff_s` itself instead, as the delay of each `nak` (`backoff_delay`),
and the ack wait stays a little above the line's own deadline: a worker that dies mid-line has
the line redelivered about `line_timeout_s` later. As with the streams, an existing consumer
with other settings is a `JetStreamSetupError`, never a silent change.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from schemas.config import Jobs
from services.common.jetstream import JetStreamSetupError
from services.common.subjects import Subjects

__all__ = [
    "ACK_MARGIN_S",
    "CONTROL_ACK_WAIT_S",
    "backoff_delay",
    "control_consumer",
    "ensure_consumer",
    "line_ack_wait",
    "line_consumer",
]

#: At most this much longer than a line's deadline is its ack wait: time to store its result
#: and ack it (less for short deadlines, so a dead worker's lines come back soon).
ACK_MARGIN_S = 30.0
#: Ack wait of a control message: starting a 50,000-line batch publishes every line first.
CONTROL_ACK_WAIT_S = 600.0
#: Lines that may be delivered and unacked at once, across every worker, per unit of
#: `jobs.concurrency`: room for many workers plus the lines waiting out a backoff (a nak'ed line
#: still counts as pending until it is redelivered).
_PENDING_PER_SLOT = 32
_COMPARED = ("ack_policy", "ack_wait", "max_deliver", "max_ack_pending", "filter_subject")


def line_consumer(subjects: Subjects, jobs: Jobs) -> ConsumerConfig:
    """The durable consumer every jobs worker shares on the lines stream."""
    return ConsumerConfig(
        durable_name=subjects.line_consumer,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=line_ack_wait(jobs),
        max_deliver=jobs.max_deliver,
        max_ack_pending=jobs.concurrency * _PENDING_PER_SLOT,
        filter_subject=subjects.job_lines_all,
    )


def control_consumer(subjects: Subjects, jobs: Jobs) -> ConsumerConfig:
    """The durable consumer every jobs worker shares on the control stream."""
    return ConsumerConfig(
        durable_name=subjects.control_consumer,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=CONTROL_ACK_WAIT_S,
        max_deliver=jobs.max_deliver,
        max_ack_pending=1024,
        filter_subject=subjects.jobs_control,
    )


def line_ack_wait(jobs: Jobs) -> float:
    """A line's ack wait: its deadline plus a margin (`ACK_MARGIN_S`, at most the deadline)."""
    return jobs.line_timeout_s + min(ACK_MARGIN_S, jobs.line_timeout_s)


def backoff_delay(jobs: Jobs, deliveries: int) -> float:
    """Seconds before a line that failed on its `deliveries`-th delivery is delivered again
    (`jobs.backoff_s`, its last value repeating)."""
    steps = jobs.backoff_s
    return steps[min(max(deliveries, 1), len(steps)) - 1]


def _differences(want: ConsumerConfig, have: ConsumerConfig) -> list[str]:
    found = []
    for field in _COMPARED:
        wanted, existing = getattr(want, field), getattr(have, field)
        same = (
            abs(float(wanted or 0) - float(existing or 0)) < 1e-3
            if field == "ack_wait"
            else wanted == existing
        )
        if not same:
            found.append(f"{field}: the config asks for {wanted!r}, the consumer has {existing!r}")
    return found


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create the durable consumer `config.durable_name` on `stream` if missing; raise
    `JetStreamSetupError` when it exists with other settings or cannot be created."""
    assert config.durable_name is not None
    try:
        info = await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        try:
            await js.add_consumer(stream, config)
        except Exception as error:
            raise JetStreamSetupError(
                f"consumer {config.durable_name} on {stream}: cannot create it: {error}"
            ) from error
        return
    differences = _differences(config, info.config)
    if differences:
        raise JetStreamSetupError(
            f"consumer {config.durable_name} on {stream} exists with other settings ("
            + "; ".join(differences)
            + "); change the config to match, or delete the consumer to recreate it"
        )
