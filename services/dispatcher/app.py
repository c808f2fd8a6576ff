"""The dispatcher, wired: one NATS connection, one upstream client, one subscription per base model.

`DispatcherWorker.start` connects and subscribes to `<prefix>.dispatch.<base model>` for every
configured base model, in queue group `dispatchers`; `stop` drains: no new messages, every
request in flight finished (or cut at the timeout), then the client and connection close.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry

from schemas.config import Config
from services.common import bus
from services.common.keepalive import Keepalives
from services.common.subjects import DISPATCHERS_QUEUE, Subjects
from services.dispatcher.dispatch import Dispatch
from services.dispatcher.endpoints import EndpointPool
from services.dispatcher.handlers import DispatcherHandlers
from services.dispatcher.metrics import DispatcherMetrics
from services.dispatcher.upstream import Upstream

__all__ = ["DispatcherWorker"]


class DispatcherWorker:
    """One dispatcher process's NATS and HTTP sides."""

    def __init__(
        self,
        config: Config,
        nats_url: str,
        *,
        name: str | None = None,
        registry: CollectorRegistry | None = None,
        vllm_api_key: str | None = None,
        nats_options: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.nats_url = nats_url
        self.name = name or f"dispatcher-{uuid.uuid4().hex[:8]}"
        self.subjects = Subjects(config.nats.subject_prefix)
        self.metrics = DispatcherMetrics(registry if registry is not None else CollectorRegistry())
        self.pool = EndpointPool(config.vllm_endpoints)
        self.vllm_api_key = vllm_api_key
        self.nats_options = nats_options or {}
        self.nc: Client | None = None
        self.upstream: Upstream | None = None
        self.handlers: DispatcherHandlers | None = None
        self.keepalives: Keepalives | None = None
        self._subs: list[Subscription] = []
        self._cancel_sub: Subscription | None = None

    @property
    def dispatch_subjects(self) -> list[str]:
        return [self.subjects.dispatch(base) for base in self.config.model_config]

    async def start(self) -> None:
        """Connect and subscribe. Raises when NATS cannot be reached."""
        settings = self.config.dispatcher
        self.upstream = Upstream(
            max_connections_per_endpoint=settings.max_connections_per_endpoint,
            connect_timeout_s=settings.connect_timeout_s,
            first_byte_timeout_s=settings.first_byte_timeout_s,
            between_chunks_timeout_s=settings.between_chunks_timeout_s,
            api_key=self.vllm_api_key,
        )
        try:
            credentials: dict[str, Any] = dict(self.nats_options)
            self.nc = await bus.connect(self.nats_url, name=self.name, **credentials)
        except BaseException:
            await self.upstream.close()
            raise
        dispatch = Dispatch(config=settings, pool=self.pool, upstream=self.upstream)
        nc = self.nc
        self.keepalives = Keepalives(
            lambda subject, payload: bus.answer(nc, subject, payload),
            heartbeat_s=self.config.liveness.heartbeat_s,
            held_by="dispatcher",
        )
        self.handlers = DispatcherHandlers(
            nc=self.nc, dispatch=dispatch, metrics=self.metrics, keepalives=self.keepalives
        )
        self.keepalives.start()
        for subject in self.dispatch_subjects:
            self._subs.append(
                await self.nc.subscribe(
                    subject, queue=DISPATCHERS_QUEUE, cb=self.handlers.on_dispatch
                )
            )
        # No queue group: a cancellation must reach whichever dispatcher runs the request.
        self._cancel_sub = await self.nc.subscribe(
            self.subjects.cancel_all, cb=self.handlers.on_cancel
        )
        await self.nc.flush()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Drain: stop intake, finish requests in flight (cancelled after `timeout_s`), close."""
        if self.nc is None:
            return
        nc, self.nc = self.nc, None
        for sub in self._subs:
            with contextlib.suppress(Exception):  # closed: nothing more can arrive anyway
                await sub.drain()  # type: ignore[no-untyped-call]
        self._subs = []
        if self.handlers is not None and self.handlers.tasks:
            pending = set(self.handlers.tasks)
            _done, late = await asyncio.wait(pending, timeout=timeout_s)
            self.handlers.stopping = True
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        if self.keepalives is not None:
            await self.keepalives.stop()
        await bus.close(nc)
        if self.upstream is not None:
            await self.upstream.close()
            self.upstream = None
