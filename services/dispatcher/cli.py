"""`loraroute dispatcher --nats URL --config FILE`: run one dispatcher.

Serves every configured base model's dispatch subject until SIGTERM or SIGINT, then drains
(requests in flight finish) and exits 0. Exit status 2: bad config; 1: NATS unreachable.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.config import Config
from services.common.worker_cli import Worker, WorkerOptions, run_worker
from services.dispatcher.app import DispatcherWorker

__all__ = ["main"]


def _build(config: Config, options: WorkerOptions) -> DispatcherWorker:
    return DispatcherWorker(
        config,
        options.nats_url,
        name=options.name,
        registry=options.registry,
        vllm_api_key=options.settings.vllm_api_key,
        nats_options=options.settings.nats_options(),
        config_revision=options.config_revision,
    )


def _ready(worker: Worker) -> dict[str, object]:
    assert isinstance(worker, DispatcherWorker)
    return {"subjects": worker.dispatch_subjects, "config_revision": worker.live.revision}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dispatcher; return its exit status."""
    return run_worker("dispatcher", __doc__.splitlines()[0], argv, _build, ready=_ready)
