"""`loraroute jobs --nats URL --config FILE`: run one jobs worker.

Creates the job streams, buckets and consumers when missing, runs batch lines and finalizes
batches until SIGTERM or SIGINT, then drains (lines in flight finish, or go back to the stream
for another worker) and exits 0. Exit status 2: bad config or mismatched JetStream settings;
1: NATS unreachable.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.config import Config
from services.common.jetstream import JetStreamSetupError
from services.common.worker_cli import Worker, WorkerOptions, run_worker
from services.jobs.app import JobsWorker

__all__ = ["main"]


def _build(config: Config, options: WorkerOptions) -> JobsWorker:
    return JobsWorker(
        config,
        options.nats_url,
        name=options.name,
        registry=options.registry,
        nats_options=options.settings.nats_options(),
        config_revision=options.config_revision,
    )


def _ready(worker: Worker) -> dict[str, object]:
    assert isinstance(worker, JobsWorker)
    return {
        "lines_stream": worker.subjects.lines_stream,
        "concurrency": worker.config.jobs.concurrency,
        "config_revision": worker.live.revision,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the jobs worker; return its exit status."""
    return run_worker(
        "jobs",
        __doc__.splitlines()[0],
        argv,
        _build,
        ready=_ready,
        startup_errors=(JetStreamSetupError,),
    )
