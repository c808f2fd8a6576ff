"""Keepalives from a worker to the requesters of the requests it holds (`liveness` config).

Core NATS tells a requester nothing when the worker holding its request dies: without a sign
of life it could only wait for its deadline. A worker therefore registers each request it holds
(`hold`) and marks every message it sends for it (`Held.sent`); once per `heartbeat_s` a sweep
sends a `ReplyAlive` to each request that has been silent for a whole period, so a requester
hears something at least every two heartbeats while its request lives, and takes a longer
silence (`liveness.stall_s`) as lost work. A request answered within a heartbeat, the common
case, costs a dict entry and no message at all.

`send(subject, payload)` publishes to a requester (`bus.answer`); nothing here knows NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog

from schemas.wire import ReplyAlive, encoder

__all__ = ["Held", "Keepalives"]

_log = structlog.get_logger("loraroute.keepalive")

#: Publishes one payload to a requester's reply subject.
Send = Callable[[str, bytes], Awaitable[None]]


class Held:
    """One request a worker holds: where its requester listens, whether anything was sent to it
    since the last sweep, and whether a keepalive went out for it."""

    __slots__ = ("alerted", "quiet", "reply")

    def __init__(self, reply: str) -> None:
        self.reply = reply
        #: Nothing sent since the last sweep; the next sweep sends a keepalive.
        self.quiet = False
        #: A keepalive was sent: the requester knows this worker holds the request.
        self.alerted = False

    def sent(self) -> None:
        """Something went to the requester: no keepalive is due for another period."""
        self.quiet = False


class Keepalives:
    """The requests one worker holds, keyed by their reply subject, and the sweep that keeps
    their requesters informed. `held_by` says what the keepalives tell (`ReplyAlive`)."""

    def __init__(
        self,
        send: Send,
        *,
        heartbeat_s: float,
        held_by: Literal["classifier", "dispatcher"],
    ) -> None:
        self._send = send
        self.heartbeat_s = heartbeat_s
        self.payload = encoder.encode(ReplyAlive(held_by=held_by))
        self._held: dict[str, Held] = {}
        self._task: asyncio.Task[None] | None = None
        #: Keepalives sent since start.
        self.sent_total = 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, reply: str) -> Held:
        """Start holding the request answered at `reply` (a new hold replaces an old one)."""
        held = Held(reply)
        self._held[reply] = held
        return held

    def release(self, reply: str) -> Held | None:
        """Stop holding the request at `reply`; the `Held` it had, if any. Idempotent."""
        return self._held.pop(reply, None)

    async def sweep(self) -> int:
        """One pass: a keepalive to every request silent since the previous pass; the others
        are marked quiet for the next. Returns how many were sent."""
        due: list[Held] = []
        for held in self._held.values():
            if held.quiet:
                due.append(held)
            else:
                held.quiet = True
        for held in due:
            held.alerted = True
            try:
                await self._send(held.reply, self.payload)
            except Exception as error:  # a closed connection: the requester learns by silence
                _log.debug("keepalive_failed", error=repr(error))
                break
        self.sent_total += len(due)
        return len(due)

    def start(self) -> None:
        """Sweep every `heartbeat_s` until `stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="keepalives")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self.sweep()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
