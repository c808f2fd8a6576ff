"""`services.jobs.consumers`: the consumer settings from the config, and the backoff."""

from __future__ import annotations

from nats.js.api import AckPolicy

from schemas.config import Jobs
from services.common.subjects import Subjects
from services.jobs.consumers import backoff_delay, line_ack_wait, line_consumer


def test_the_line_consumer_follows_the_config() -> None:
    jobs = Jobs(line_timeout_s=600.0, max_deliver=4, concurrency=8)
    config = line_consumer(Subjects("p"), jobs)
    assert config.durable_name == "job-lines" and config.filter_subject == "p.jobs.lines.*"
    assert config.ack_policy == AckPolicy.EXPLICIT and config.max_deliver == 4
    assert config.ack_wait == line_ack_wait(jobs) == 630.0
    assert config.backoff is None  # the server would replace the ack wait with it
    assert config.max_ack_pending is not None and config.max_ack_pending >= 8
    assert line_ack_wait(Jobs(line_timeout_s=2.0)) == 4.0


def test_backoff_steps_then_repeats_the_last() -> None:
    jobs = Jobs(backoff_s=[1.0, 5.0, 30.0])
    assert [backoff_delay(jobs, n) for n in (1, 2, 3, 4, 9)] == [1.0, 5.0, 30.0, 30.0, 30.0]
