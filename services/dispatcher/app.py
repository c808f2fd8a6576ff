"""The dispatcher, wired: one NATS connection, one upstream client, one subscription per base model.

`DispatcherWorker.start` connects and subscribes to `<prefix>.dispatch.<base model>` for every
configured base model, in queue group `dispatchers` (and to its probe subject
`<prefix>.ping.dispatch.<base model>`), and starts `LoraSync` in the background (reads of every
endpoint's adapters, runtime loads); `stop` drains: no new messages, every request in flight
finished (or cut at the timeout), then the adapter reads stop and the clients and connection
close. `on_config` is the one place a new live config revision reaches the dispatcher
(endpoints, settings, subscriptions, and `lora_sync.apply` for the adapters).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry

from schemas.config import Config
from services.common import bus
from services.common.keepalive import Keepalives
from services.common.live_config import LiveConfig
from services.common.subjects import DISPATCHERS_QUEUE, Subjects
from services.dispatcher.dispatch import Dispatch
from services.dispatcher.endpoints import EndpointPool, model_endpoints
from services.dispatcher.handlers import DispatcherHandlers
from services.dispatcher.lora_state import LoraState
from services.dispatcher.lora_sync import LoraSync
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
        config_revision: int = 0,
    ) -> None:
        self.config = config
        self.nats_url = nats_url
        self.name = name or f"dispatcher-{uuid.uuid4().hex[:8]}"
        self.subjects = Subjects(config.nats.subject_prefix)
        self.metrics = DispatcherMetrics(registry if registry is not None else CollectorRegistry())
        self.pool = EndpointPool(config.vllm_endpoints, models=model_endpoints(config))
        self.lora = LoraState()
        #: Adapter reads and loads; `on_config` passes each new revision to `lora_sync.apply`.
        self.lora_sync: LoraSync | None = None
        self._lora_task: asyncio.Task[None] | None = None
        self._lora_applies: set[asyncio.Task[None]] = set()
        self.vllm_api_key = vllm_api_key
        self.nats_options = nats_options or {}
        self.live = LiveConfig(
            config,
            service="dispatcher",
            apply=self.on_config,
            registry=self.metrics.registry,
            revision=config_revision,
        )
        self.nc: Client | None = None
        self.upstream: Upstream | None = None
        self.handlers: DispatcherHandlers | None = None
        self.keepalives: Keepalives | None = None
        self._subs: dict[str, Subscription] = {}
        self._cancel_sub: Subscription | None = None

    @property
    def dispatch_subjects(self) -> list[str]:
        return [self.subjects.dispatch(base) for base in self.config.model_config]

    def _wanted(self, handlers: DispatcherHandlers) -> dict[str, Callable[[Msg], Awaitable[None]]]:
        """Every subject to serve, with its handler: each base model's dispatch subject and its
        probe subject (`<prefix>.ping.dispatch.<base model>`)."""
        wanted: dict[str, Callable[[Msg], Awaitable[None]]] = {}
        for base in self.config.model_config:
            wanted[self.subjects.dispatch(base)] = handlers.on_dispatch
            wanted[self.subjects.ping_dispatch(base)] = handlers.on_ping
        return wanted

    async def on_config(self, config: Config, revision: int) -> None:
        """Run a new live config revision: its endpoints and base models (requests in flight
        finish on the endpoint they were sent to), `dispatcher.max_attempts` and
        `check_response_model`; then subscribe to the dispatch subjects of base models it
        adds and drain those of models it removes. The connection limits and the connect
        timeout stay as started (`live_config.RESTART_ONLY`). Work that must follow a new
        revision (an endpoint's adapters, say) belongs here."""
        self.pool.update(config.vllm_endpoints, model_endpoints(config))
        self.config = config
        if self.handlers is not None:
            self.handlers.dispatch.config = config.dispatcher
        await self._subscribe()
        if self.lora_sync is not None:
            # In the background: reading every endpoint must not delay the revision's report.
            self._lora_applies.add(task := asyncio.create_task(self._apply_adapters(config)))
            task.add_done_callback(self._lora_applies.discard)

    async def _subscribe(self) -> None:
        """Subscribe to the dispatch subject of every configured base model, and drain the
        subscriptions of base models no longer configured."""
        if self.nc is None or self.handlers is None:
            return
        wanted = self._wanted(self.handlers)
        for subject in [s for s in self._subs if s not in wanted]:
            with contextlib.suppress(Exception):  # closed: nothing more can arrive anyway
                await self._subs.pop(subject).drain()  # type: ignore[no-untyped-call]
        for subject, handler in wanted.items():
            if subject not in self._subs:
                self._subs[subject] = await self.nc.subscribe(
                    subject, queue=DISPATCHERS_QUEUE, cb=handler
                )

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
            self.nc = await bus.connect(
                self.nats_url,
                name=self.name,
                # Its own replies (the live config's JetStream calls) below its kind's prefix,
                # which NATS permissions let only dispatchers read.
                inbox_prefix=self.subjects.inbox("dispatcher"),
                **credentials,
            )
        except BaseException:
            await self.upstream.close()
            raise
        self.lora_sync = LoraSync(self.lora, self.config, api_key=self.vllm_api_key)
        # The first read and reconcile run in the background: a vLLM that is down or slow must
        # not hold up the dispatcher's start.
        self._lora_task = asyncio.create_task(self._sync_adapters(self.lora_sync))
        dispatch = Dispatch(
            config=settings,
            pool=self.pool,
            upstream=self.upstream,
            lora=self.lora,
            max_message_bytes=self.nc.max_payload,
        )
        nc = self.nc
        self.keepalives = Keepalives(
            lambda subject, payload: bus.answer(nc, subject, payload),
            heartbeat_s=self.config.liveness.heartbeat_s,
            held_by="dispatcher",
        )
        self.handlers = DispatcherHandlers(
            nc=self.nc,
            dispatch=dispatch,
            metrics=self.metrics,
            keepalives=self.keepalives,
            live=self.live,
        )
        self.keepalives.start()
        await self._subscribe()
        # No queue group: a cancellation must reach whichever dispatcher runs the request.
        self._cancel_sub = await self.nc.subscribe(
            self.subjects.cancel_all, cb=self.handlers.on_cancel
        )
        await self.nc.flush()
        await self.live.start(self.nc)

    async def _apply_adapters(self, config: Config) -> None:
        if self.lora_sync is not None:
            with contextlib.suppress(Exception):  # failures are logged; run() retries them
                await self.lora_sync.apply(config)

    async def _sync_adapters(self, sync: LoraSync) -> None:
        with contextlib.suppress(Exception):  # failures are logged; run() retries them
            await sync.apply(self.config)
        await sync.run()

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Drain: stop intake, finish requests in flight (cancelled after `timeout_s`), close."""
        if self.nc is None:
            return
        nc, self.nc = self.nc, None
        await self.live.stop()
        for sub in self._subs.values():
            with contextlib.suppress(Exception):  # closed: nothing more can arrive anyway
                await sub.drain()  # type: ignore[no-untyped-call]
        self._subs = {}
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
        for task in list(self._lora_applies):
            task.cancel()
        if self._lora_task is not None:
            self._lora_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lora_task
            self._lora_task = None
        if self.lora_sync is not None:
            await self.lora_sync.close()
            self.lora_sync = None
        if self.upstream is not None:
            await self.upstream.close()
            self.upstream = None
