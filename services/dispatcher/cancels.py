"""Which requests a cancellation stops: the ones running here, and the ones still on their way.

A cancellation can overtake its request: the client may leave while the request still waits in
the classifier's queue. A cancel for a request not running here is remembered until the
request's deadline (at most `REMEMBERED_CANCELS` of them), and such a request is answered with
an error when it arrives instead of being sent to vLLM.

Requests are known by the subject token of their id (`services.common.subjects.model_token`),
the last token of `<prefix>.cancel.<request id>`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.common import bus

__all__ = ["REMEMBERED_CANCELS", "Cancels"]

#: At most this many cancellations of requests not (yet) running here are remembered.
REMEMBERED_CANCELS = 10_000
#: How long a cancellation without a deadline header is remembered.
_CANCEL_MEMORY_MS = 300_000


class Cancels:
    """The running requests' tasks by token, and the cancels that overtook their request.

    `clock` is Unix time in milliseconds, the unit of deadlines; `limit` defaults to
    `REMEMBERED_CANCELS` as it is when the instance is built.
    """

    def __init__(self, *, limit: int | None = None, clock: Callable[[], int] = bus.now_ms) -> None:
        self.limit = REMEMBERED_CANCELS if limit is None else limit
        self.clock = clock
        # Subject token of the request id -> its running task.
        self._running: dict[str, asyncio.Task[None]] = {}
        # Subject token -> Unix ms until which a cancel that overtook its request counts.
        self._cancelled: dict[str, int] = {}

    def overtaken(self, token: str) -> bool:
        """True when a cancel for `token` arrived before its request and still counts; the
        cancel is then used up, so a later request that reuses the id runs."""
        return self._cancelled.pop(token, 0) > self.clock()

    def running(self, token: str, task: asyncio.Task[None]) -> None:
        """Track `task` as the request `token` until it finishes."""
        self._running[token] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._running.get(token) is finished:
                del self._running[token]

        task.add_done_callback(done)

    def cancel(self, token: str, deadline_ms: int | None) -> bool:
        """Stop the request `token` if it runs here (True), else remember the cancel until
        `deadline_ms` (Unix ms; a default span when None or 0) in case the request is still on
        its way (False). Past `limit`, the expired go first, then the oldest."""
        task = self._running.get(token)
        if task is not None:
            if not task.done():
                task.cancel()
            return True
        now = self.clock()
        self._cancelled[token] = deadline_ms or now + _CANCEL_MEMORY_MS
        if len(self._cancelled) > self.limit:
            for key in [k for k, until in self._cancelled.items() if until <= now]:
                del self._cancelled[key]
            while len(self._cancelled) > self.limit:  # the oldest go first
                del self._cancelled[next(iter(self._cancelled))]
        return False
