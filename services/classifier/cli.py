"""`loraroute classifier --nats URL --config FILE`: run one classifier worker.

Loads the config and the model once, refuses to start when the config's categories do not fit
the model's labels, serves until SIGTERM or SIGINT, then drains (every accepted request is
answered) and exits 0. Exit status 2: bad config or model; 1: NATS unreachable.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.config import Config
from services.classifier.app import ClassifierWorker, load_engine
from services.classifier.errors import ClassifierError
from services.common.worker_cli import Worker, WorkerOptions, run_worker

__all__ = ["main"]


def _build(config: Config, options: WorkerOptions) -> ClassifierWorker:
    return ClassifierWorker(
        config,
        load_engine(config),
        options.nats_url,
        name=options.name,
        registry=options.registry,
        nats_options=options.settings.nats_options(),
        config_revision=options.config_revision,
    )


def _ready(worker: Worker) -> dict[str, object]:
    assert isinstance(worker, ClassifierWorker)
    return {
        "subject": worker.subjects.classify,
        "labels": list(worker.engine.labels),
        "max_batch_size": worker.config.batching.max_batch_size,
        "config_revision": worker.live.revision,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker; return its exit status."""
    return run_worker(
        "classifier",
        __doc__.splitlines()[0],
        argv,
        _build,
        ready=_ready,
        startup_errors=(ClassifierError,),
    )
