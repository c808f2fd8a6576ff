"""The classifier worker, wired: NATS subscriptions, batcher and handlers around one engine.

Lifespan: `load_engine` builds the engine once from the config and refuses a config whose
categories the model's labels cannot reach; `ClassifierWorker.start` connects, starts the
batcher and subscribes to the classify subject and the job lane (`classify_jobs`) in queue group
`classifiers` (plus this process's bounce subject and the cancel subjects); `stop` drains: no new messages, every accepted request answered,
then the connection is closed.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry

from schemas.config import Config, ConfigError, ConfigIssue, check
from services.classifier.batch_queue import Batch, BatchQueue
from services.classifier.batcher import Batcher
from services.classifier.errors import LabelMappingError
from services.classifier.handlers import ClassifierHandlers
from services.classifier.intake import BatchResult, Intake
from services.classifier.labels import LabelMap
from services.classifier.metrics import WorkerMetrics
from services.classifier.route import Router
from services.classifier.work import Item
from services.common import bus
from services.common.keepalive import Keepalives
from services.common.live_config import LiveConfig
from services.common.subjects import CLASSIFIERS_QUEUE, Subjects

if TYPE_CHECKING:
    from services.classifier.engine import Engine
    from services.classifier.tokens import Encoded

__all__ = ["ClassifierWorker", "load_engine"]


def load_engine(config: Config) -> Engine:
    """Build the engine the config names and check the config against the model's labels.

    Raises `ConfigError` listing every category no model label reaches, and the engine's
    `ClassifierError`s (missing model directory, provider) as they come.
    """
    from services.classifier.engine import Engine  # onnxruntime loads here, not at import

    model = config.classifier.category_model
    engine = Engine.from_model_dir(
        model.model_id,
        category_labels={c.name: c.mmlu_categories for c in config.categories},
        category_mapping_path=Path(model.category_mapping_path)
        if model.category_mapping_path
        else None,
        use_cpu=model.use_cpu,
        intra_op_threads=config.inference.intra_op_threads,
        inter_op_threads=config.inference.inter_op_threads,
        max_batch_size=config.batching.max_batch_size,
        onnx_file=config.inference.onnx_file,
        spin_wait=config.inference.spin_wait,
        correct_spelling=config.inference.correct_spelling,
    )
    verify_labels(config, engine.labels)
    return engine


def verify_labels(config: Config, labels: tuple[str, ...]) -> None:
    """Raise `ConfigError` unless every config category is reachable from `labels`."""
    errors, _warnings = check(config, labels=labels)
    if errors:
        raise ConfigError(errors, "config does not fit the classifier model")


class ClassifierWorker:
    """One worker process's NATS side. `engine` is built by the caller (see `load_engine`)."""

    def __init__(
        self,
        config: Config,
        engine: Engine,
        nats_url: str,
        *,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
        nats_options: dict[str, str] | None = None,
        config_revision: int = 0,
    ) -> None:
        verify_labels(config, engine.labels)
        self.nats_options = nats_options or {}
        self.config = config
        self.engine = engine
        self.nats_url = nats_url
        self.name = name or f"classifier-{uuid.uuid4().hex[:8]}"
        self.subjects = Subjects(config.nats.subject_prefix)
        self.metrics = WorkerMetrics(registry if registry is not None else CollectorRegistry())
        if engine.tokenizer.corrector is not None:
            self.metrics.watch_spelling(engine.tokenizer.corrector.totals)
        self.router = Router(config, config_revision)
        self.live = LiveConfig(
            config,
            service="classifier",
            apply=self.on_config,
            registry=self.metrics.registry,
            revision=config_revision,
        )
        self.intake: Intake | None = None
        self.nc: Client | None = None
        self.batcher: Batcher[Item, Encoded, BatchResult] | None = None
        self.keepalives: Keepalives | None = None
        self._subs: list[Subscription] = []

    async def on_config(self, config: Config, revision: int) -> None:
        """Run a new live config revision: check it against the model's labels, build its
        router and label map, then swap both in at once (requests already queued keep the
        revision they arrived under). Raises `ConfigError` to refuse it. The model itself and
        the batching and inference settings stay as started (`live_config.RESTART_ONLY`)."""
        verify_labels(config, self.engine.labels)
        try:
            label_map = LabelMap.build(
                self.engine.labels, {c.name: c.mmlu_categories for c in config.categories}
            )
        except LabelMappingError as error:
            raise ConfigError([ConfigIssue("categories", str(error))]) from error
        router = Router(config, revision)
        self.engine.label_map = label_map
        self.config, self.router = config, router
        if self.intake is not None:
            self.intake.swap(router, label_map)

    def _prepare(self, batch: Batch[Item]) -> Encoded:
        from services.classifier.tokens import Encoded

        now = time.perf_counter()
        queued = self.metrics.stage_seconds.labels("queue")
        for entry in batch.entries:
            queued.observe(now - entry.payload.work.received)
        return Encoded.collate(
            [e.payload.encoded for e in batch.entries], self.engine.tokenizer.pad_id
        )

    def _run(self, encoded: Encoded) -> BatchResult:
        # On the inference thread: the only place the model runs.
        start = time.perf_counter()
        results = self.engine.classify_encoded(encoded)
        return results, time.perf_counter() - start

    async def start(self) -> None:
        """Connect, start the batcher and subscribe. Raises when NATS cannot be reached."""
        batching = self.config.batching
        queue: BatchQueue[Item] = BatchQueue(
            max_batch_size=min(batching.max_batch_size, self.engine.backend.max_batch_size),
            max_batch_tokens=batching.max_batch_tokens,
            max_wait_s=batching.max_wait_ms / 1000.0,
            max_queue=batching.max_queue,
            max_job_queue=batching.max_job_queue,
            max_job_batch_size=batching.max_job_batch_size,
            job_quiet_s=batching.job_quiet_s,
            run_when_idle=batching.run_when_idle,
        )
        credentials: dict[str, Any] = dict(self.nats_options)
        self.nc = await bus.connect(
            self.nats_url,
            name=self.name,
            # Its own replies (the live config's JetStream calls) below its kind's prefix,
            # which NATS permissions let only classifiers read.
            inbox_prefix=self.subjects.inbox("classifier"),
            **credentials,
        )
        bounce = self.subjects.bounce(self.name)
        # The batcher calls back into the handlers, which hold the batcher: bind late.
        handlers: ClassifierHandlers
        self.batcher = Batcher(
            queue,
            prepare=self._prepare,
            run=self._run,
            complete=lambda batch, result, error: handlers.complete(batch, result, error),
            expire=lambda entries: handlers.expire(entries),
        )
        intake = self.intake = Intake(
            router=self.router,
            tokenizer=self.engine.tokenizer,
            batcher=self.batcher,
            metrics=self.metrics,
            label_map=self.engine.label_map,
            # Before the batcher's inference thread starts: the engine is not thread-safe.
            neutral=self.engine.neutral_probabilities(),
        )
        nc = self.nc
        self.keepalives = Keepalives(
            lambda subject, payload: bus.answer(nc, subject, payload),
            heartbeat_s=self.config.liveness.heartbeat_s,
            held_by="classifier",
        )
        handlers = ClassifierHandlers(
            nc=self.nc,
            subjects=self.subjects,
            bounce=bounce,
            intake=intake,
            metrics=self.metrics,
            live=self.live,
            keepalives=self.keepalives,
        )
        # Watch the live config; a revision pushed since the config was read arrives first.
        await self.live.start(self.nc)
        self.batcher.start()
        self.keepalives.start()
        # The bounce subscription first: a forward must never race its own "no responders".
        self._subs.append(await self.nc.subscribe(f"{bounce}.>", cb=handlers.on_bounce))
        self._subs.append(
            await self.nc.subscribe(
                self.subjects.classify, queue=CLASSIFIERS_QUEUE, cb=handlers.on_classify
            )
        )
        self._subs.append(
            await self.nc.subscribe(
                self.subjects.classify_jobs, queue=CLASSIFIERS_QUEUE, cb=handlers.on_classify_job
            )
        )
        # No queue group: the request may wait in any worker's queue.
        self._subs.append(await self.nc.subscribe(self.subjects.cancel_all, cb=handlers.on_cancel))
        await self.nc.flush()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Drain: stop intake, answer every accepted request, then close. Safe to call twice."""
        if self.nc is None:
            return
        nc, self.nc = self.nc, None
        await self.live.stop()
        intake = self._subs[1:3]  # the classify subject and the job lane
        for sub in intake:
            if nc.is_closed:
                break
            # Unsubscribe, then let the callback finish what already arrived (it only queues).
            with contextlib.suppress(Exception):  # closed: nothing more can arrive anyway
                await sub.drain()  # type: ignore[no-untyped-call]
        if self.batcher is not None:
            await self.batcher.drain(timeout_s)
            await self.batcher.close()
        if self.keepalives is not None:
            await self.keepalives.stop()
        await bus.close(nc)
        self._subs = []
