"""Every name on the wire, defined once: subjects, queue groups and header names.

Subjects derive from the configured prefix (`nats.subject_prefix`), so several deployments can
share one NATS cluster. Model names become subject tokens through `model_token`, because NATS
reserves `.`, `*`, `>` and white space, while model names often contain `/` and `.`.
"""

from __future__ import annotations

import re

__all__ = [
    "CLASSIFIERS_QUEUE",
    "DISPATCHERS_QUEUE",
    "HEADER_CONFIG_REVISION",
    "HEADER_DEADLINE",
    "HEADER_PING",
    "HEADER_REPLY_TO",
    "HEADER_REQUEST_ID",
    "HEADER_TRACEPARENT",
    "JOBS_QUEUE",
    "Subjects",
    "model_token",
]

CLASSIFIERS_QUEUE = "classifiers"
DISPATCHERS_QUEUE = "dispatchers"
#: Queue group of the jobs workers for the core NATS subjects they serve (one worker each).
JOBS_QUEUE = "jobs"

#: The request id, as the client's `x-request-id` or one the ingress made.
HEADER_REQUEST_ID = "Lr-Request-Id"
#: Absolute deadline, Unix time in milliseconds; stages drop work that is past it.
HEADER_DEADLINE = "Lr-Deadline-Ms"
#: W3C trace context, passed through unchanged.
HEADER_TRACEPARENT = "traceparent"
#: The ingress inbox to answer, when the NATS reply subject is not it: the classifier forwards
#: with its own bounce subject as reply (to learn of "no responders") and the inbox here.
HEADER_REPLY_TO = "Lr-Reply-To"
#: A liveness probe: a service answers at once with an empty body and does no work.
HEADER_PING = "Lr-Ping"
#: The live config revision a request was routed under (`services.common.live_config`): a
#: later stage that runs an older one waits briefly for it. Ping answers carry the responder's.
HEADER_CONFIG_REVISION = "Lr-Config-Revision"

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def model_token(model: str) -> str:
    """A subject token for `model`: safe characters kept, others escaped as `~XX` (hex).

    Injective, so two different model names never share a dispatch subject.
    """
    return _UNSAFE.sub(lambda m: "".join(f"~{b:02x}" for b in m.group().encode()), model)


class Subjects:
    """The subjects of one deployment, from its prefix."""

    def __init__(self, prefix: str = "loraroute") -> None:
        self.prefix = prefix
        self.classify = f"{prefix}.classify"
        self.dispatch_all = f"{prefix}.dispatch.*"
        #: Dispatchers answer liveness probes here too (`ping_dispatch(base_model)`), so that
        #: the ingress's `/ready` needs no right to publish on the dispatch subjects.
        self.ping_dispatch_all = f"{prefix}.ping.dispatch.*"
        #: Classifiers and dispatchers listen here for cancellations (`cancel(request_id)`).
        self.cancel_all = f"{prefix}.cancel.*"
        #: The classifier's job lane: lines of batch jobs, served only when no interactive
        #: request waits (same messages and replies as `classify`).
        self.classify_jobs = f"{prefix}.classify.jobs"
        #: Job lines, results and dead letters (`job_lines(job_id)` ...), and batch control.
        self.job_lines_all = f"{prefix}.jobs.lines.*"
        self.job_results_all = f"{prefix}.jobs.results.*.*"
        self.job_dead_all = f"{prefix}.jobs.dead.*"
        self.jobs_control = f"{prefix}.jobs.control"
        # JetStream names allow no dots: the prefix with its dots as underscores.
        base = prefix.replace(".", "_")
        #: Streams, durable consumers and buckets of the jobs (`services.common.jetstream`).
        self.lines_stream = f"{base}_job_lines"
        self.results_stream = f"{base}_job_results"
        self.dead_stream = f"{base}_job_dead"
        self.control_stream = f"{base}_job_control"
        self.line_consumer = "job-lines"
        self.control_consumer = "job-control"
        self.batches_bucket = f"{base}_batches"
        self.files_bucket = f"{base}_files"
        #: The live config: KV bucket, key `config` (`services.common.live_config`).
        self.config_bucket = f"{base}_config"
        #: Where JetStream announces a line that reached `max_deliver` deliveries unsettled.
        self.lines_exhausted = (
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.lines_stream}.{self.line_consumer}"
        )

    def bounce(self, instance: str) -> str:
        """Reply-subject prefix of one classifier process; NATS "no responders" statuses for
        the requests it forwarded arrive below it (`<bounce>.<original reply subject>`)."""
        return f"{self.prefix}.bounce.{model_token(instance)}"

    def cancel(self, request_id: str) -> str:
        """Publish an empty message here when the client of `request_id` went away: a classifier
        drops it from its queue, the dispatcher running it stops its call to vLLM (which then
        stops generating)."""
        return f"{self.prefix}.cancel.{model_token(request_id)}"

    def dispatch(self, base_model: str) -> str:
        """The subject on which dispatchers for `base_model` listen."""
        return f"{self.prefix}.dispatch.{model_token(base_model)}"

    def ping_dispatch(self, base_model: str) -> str:
        """Where the ingress probes the dispatchers for `base_model` (`Lr-Ping` only)."""
        return f"{self.prefix}.ping.dispatch.{model_token(base_model)}"

    def inbox(self, kind: str) -> str:
        """The inbox prefix of the processes of one `kind` (`ingress`, `jobs`): each gets
        `<inbox>.<unique>.<token>` reply subjects below it, so that NATS permissions can let
        only that kind read them and only the kinds that answer write them."""
        return f"_INBOX.{self.prefix}.{kind}"

    def job_lines(self, job_id: str) -> str:
        """Where the lines of job `job_id` wait (the lines stream, a work queue)."""
        return f"{self.prefix}.jobs.lines.{model_token(job_id)}"

    def job_results(self, job_id: str, ok: bool | None = None) -> str:
        """Where the results of job `job_id` are kept: `.ok` for answers with status 200, `.err`
        for the rest; `ok=None` gives the filter matching both."""
        kind = "*" if ok is None else "ok" if ok else "err"
        return f"{self.prefix}.jobs.results.{model_token(job_id)}.{kind}"

    def job_dead(self, job_id: str | None) -> str:
        """Where the dead letters of job `job_id` go (`_` for a payload with no readable job)."""
        return f"{self.prefix}.jobs.dead.{model_token(job_id) if job_id else '_'}"
