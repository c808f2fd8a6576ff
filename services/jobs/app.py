"""The jobs worker, wired: one NATS connection, the job streams and buckets, two pull consumers.

`JobsWorker.start` connects, creates what is missing (`ensure_job_resources`, the two durable
consumers), then serves the lines consumer (up to `jobs.concurrency` lines at once), the control
consumer, JetStream's advisory of lines that reached their last delivery unsettled, and a
periodic sweep for running batches ready to end (window passed, or every line answered). `stop` drains:
no more fetching, lines in flight finish (or are nak'ed for another worker after the timeout;
a line only waiting for the pipeline to come back is nak'ed at once), then the connection
closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry

from schemas.config import Config
from services.common import bus
from services.common.jetstream import ensure_job_resources
from services.common.live_config import LiveConfig
from services.common.subjects import JOBS_QUEUE, Subjects
from services.jobs.consumers import (
    control_consumer,
    ensure_consumer,
    line_consumer,
)
from services.jobs.handlers import JobsHandlers
from services.jobs.metrics import JobsMetrics
from services.jobs.pull import PullLoop
from services.jobs.store import BatchStore

__all__ = ["SWEEP_INTERVAL_S", "JobsWorker"]

_log = structlog.get_logger("loraroute.jobs")

#: How often the worker looks for running batches ready to end (see `JobsHandlers.sweep`).
SWEEP_INTERVAL_S = 2.0
#: Control messages (start, cancel, finalize) one worker handles at once.
_CONTROL_CONCURRENCY = 4


class JobsWorker:
    """One jobs worker process's NATS side."""

    def __init__(
        self,
        config: Config,
        nats_url: str,
        *,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
        nats_options: dict[str, str] | None = None,
        config_revision: int = 0,
    ) -> None:
        self.config = config
        self.nats_url = nats_url
        self.name = name or f"jobs-{uuid.uuid4().hex[:8]}"
        self.subjects = Subjects(config.nats.subject_prefix)
        self.metrics = JobsMetrics(registry if registry is not None else CollectorRegistry())
        self.nats_options = nats_options or {}
        # The jobs settings are read at start-up (`live_config.RESTART_ONLY`): the worker
        # reports the revision it runs and which pushed changes wait for its restart.
        self.live = LiveConfig(
            config,
            service="jobs",
            apply=self.on_config,
            registry=self.metrics.registry,
            revision=config_revision,
        )
        self.nc: Client | None = None
        self.handlers: JobsHandlers | None = None
        self._loops: list[PullLoop] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._advisories: Subscription | None = None

    async def on_config(self, config: Config, revision: int) -> None:
        """A new live config revision: nothing a jobs worker runs changes before a restart."""

    async def start(self) -> None:
        """Connect, create the job resources and consumers, start serving. Raises when NATS
        cannot be reached, and `JetStreamSetupError` when a stream or consumer mismatches."""
        jobs = self.config.jobs
        credentials: dict[str, Any] = dict(self.nats_options)
        self.nc = await bus.connect(
            self.nats_url,
            name=self.name,
            inbox_prefix=self.subjects.inbox("jobs"),
            **credentials,
        )
        try:
            js = self.nc.jetstream()
            resources = await ensure_job_resources(js, self.subjects, jobs)
            await ensure_consumer(
                js, self.subjects.lines_stream, line_consumer(self.subjects, jobs)
            )
            await ensure_consumer(
                js, self.subjects.control_stream, control_consumer(self.subjects, jobs)
            )
        except BaseException:
            await bus.close(self.nc)
            self.nc = None
            raise
        self.handlers = JobsHandlers(
            nc=self.nc,
            js=js,
            subjects=self.subjects,
            jobs=jobs,
            batches=BatchStore(resources.batches),
            files=resources.files,
            metrics=self.metrics,
            limits=self.config.limits,
            stall_s=self.config.liveness.stall_s,
        )
        self._loops = [
            PullLoop(
                js,
                stream=self.subjects.control_stream,
                durable=self.subjects.control_consumer,
                concurrency=_CONTROL_CONCURRENCY,
                handle=self.handlers.on_control,
            ),
            PullLoop(
                js,
                stream=self.subjects.lines_stream,
                durable=self.subjects.line_consumer,
                concurrency=jobs.concurrency,
                handle=self.handlers.on_line,
            ),
        ]
        # A line whose every delivery died with its worker is announced here, once.
        self._advisories = await self.nc.subscribe(
            self.subjects.lines_exhausted, queue=JOBS_QUEUE, cb=self.handlers.on_exhausted
        )
        for loop in self._loops:
            await loop.start()
        self._sweeper = asyncio.create_task(self._sweep(self.handlers))
        await self.live.start(self.nc)

    async def _sweep(self, handlers: JobsHandlers) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await handlers.sweep()
            except Exception as error:  # NATS away: the next sweep tries again
                _log.debug("sweep_failed", error=repr(error))

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Drain: stop fetching, finish lines in flight (nak'ed after `timeout_s`), close."""
        if self.nc is None:
            return
        nc, self.nc = self.nc, None
        await self.live.stop()
        if self.handlers is not None:
            self.handlers.stopping.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._advisories is not None:
            with contextlib.suppress(Exception):
                await self._advisories.unsubscribe()
            self._advisories = None
        await asyncio.gather(*(loop.stop(timeout_s) for loop in self._loops))
        self._loops = []
        await bus.close(nc)
