"""A durable pull consumer served by one worker: fetch in batches, one task per message.

At most `concurrency` messages run at once: each fetch asks for as many as there are free
slots. A fetch that finds nothing, or fails because NATS is away (a restart, a reconnect),
is simply tried again, so a worker keeps serving once the server is back; the consumer itself
lives in JetStream and survives the restart. `stop` stops fetching, waits for the running
messages, then cancels the rest (their handler naks them, so another worker takes them over).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

__all__ = ["PullLoop"]

_log = structlog.get_logger("loraroute.jobs")

#: How long one fetch waits for messages; also how long `stop` may wait for the fetch loop.
_FETCH_TIMEOUT_S = 1.0
#: Pause after a failed fetch (NATS away) before the next one.
_RETRY_PAUSE_S = 0.5


class PullLoop:
    """Runs `handle(msg)` for every message of the durable consumer `durable` on `stream`.
    `handle` must settle the message (ack, nak or term) and never raise."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        concurrency: int,
        handle: Callable[[Msg], Coroutine[Any, Any, None]],
    ) -> None:
        self.js = js
        self.stream = stream
        self.durable = durable
        self.concurrency = concurrency
        self.handle = handle
        self.tasks: set[asyncio.Task[None]] = set()
        self._free = concurrency
        self._freed = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        """Bind to the consumer (which must exist) and start fetching."""
        self._sub = await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        self._loop = asyncio.create_task(self._run(self._sub))

    def _release(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._free += 1
        self._freed.set()

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        while not self._stopping:
            while self._free == 0 and not self._stopping:
                self._freed.clear()
                await self._freed.wait()
            if self._stopping:
                break
            want, self._free = self._free, 0
            try:
                msgs = await sub.fetch(want, timeout=_FETCH_TIMEOUT_S)
            except (TimeoutError, nats.errors.TimeoutError):
                msgs = []
            except Exception as error:  # NATS away or restarting: try again shortly
                _log.debug("fetch_failed", consumer=self.durable, error=repr(error))
                self._free += want
                await asyncio.sleep(_RETRY_PAUSE_S)
                continue
            self._free += want - len(msgs)
            for msg in msgs:
                task = asyncio.create_task(self.handle(msg))
                self.tasks.add(task)
                task.add_done_callback(self._release)

    async def stop(self, timeout_s: float) -> None:
        """Stop fetching; wait up to `timeout_s` for running messages, then cancel the rest."""
        self._stopping = True
        self._freed.set()
        if self._loop is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._loop, _FETCH_TIMEOUT_S + 1.0)
        if self._sub is not None:
            # Draining the connection would otherwise wait on the fetch inbox until its timeout.
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self.tasks:
            _done, late = await asyncio.wait(set(self.tasks), timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
