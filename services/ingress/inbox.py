"""The ingress's one reply subscription: a wildcard inbox, one token per open request.

Every request the ingress publishes names `<prefix>.<token>` as its reply subject; the single
subscription `<prefix>.*` hands each arriving message to the mailbox of its token. A stream is
many messages on one token, which NATS' own `request()` (first reply only) cannot carry.

A mailbox is removed when its request ends, however it ends (answer, deadline, client gone);
messages that arrive later find no mailbox and are dropped and counted, so a disconnected client
leaves nothing behind. This module knows no NATS client: `app.py` calls `deliver` from its
subscription callback (and `lose_all` / `restored` from the connection's callbacks), and tests
call them directly.

Lost work is noticed here. Keepalives (`ReplyAlive`) are consumed by `receive`, which only
remembers who sent them; silence longer than the inbox's `stall_s` returns `Lost` rather than
waiting for the deadline, and so does the loss of this process's NATS connection (`lose_all`),
since replies published while it is down never arrive.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Literal

import msgspec

from schemas.errors import ErrorKind, error_response
from schemas.wire import ReplyAlive, ReplyError, ReplyMessage, decode_reply
from services.common.log import get_logger

__all__ = ["NO_RESPONDERS", "Inbox", "Lost", "Mailbox", "NoResponders"]

_log = get_logger()

#: The status header NATS puts on its own "no responders" answer.
_STATUS = "Status"


class NoResponders:
    """NATS answered that nobody is subscribed to the subject published to."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_RESPONDERS"


NO_RESPONDERS = NoResponders()

HeldBy = Literal["classifier", "dispatcher"]


class Lost:
    """The request's answer cannot come: the worker holding it sent nothing for `stall_s`
    (`bus` False: it died, or hangs), or this process's NATS connection dropped (`bus` True:
    replies sent meanwhile are gone). `held_by` is the last holder that sent a keepalive (None:
    none did)."""

    __slots__ = ("bus", "held_by", "silent_s")

    def __init__(self, *, bus: bool, held_by: HeldBy | None, silent_s: float) -> None:
        self.bus = bus
        self.held_by = held_by
        self.silent_s = silent_s

    @property
    def retryable(self) -> bool:
        """True when the request may be sent again: it was lost while a classifier held it, so
        vLLM was not called (and nothing reached the client, or it would not be waiting)."""
        return not self.bus and self.held_by == "classifier"

    def __repr__(self) -> str:
        return f"Lost(bus={self.bus}, held_by={self.held_by!r})"


#: A reply (headers, payload), or None: the bus connection was lost.
_Item = tuple[Mapping[str, str] | None, bytes] | None


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Mailbox:
    """The replies to one request. Use as a context manager so the token is always released.

    Replies wait in a deque; a reader that finds it empty waits on one future, which the next
    `put` or its time limit completes (a plain timer, no `asyncio.Queue` or `asyncio.timeout`
    per request)."""

    __slots__ = ("_inbox", "_items", "_waiter", "epoch", "held_by", "reply", "token")

    def __init__(self, inbox: Inbox, token: str) -> None:
        self._inbox = inbox
        self.token = token
        self.reply = f"{inbox.prefix}.{token}"
        self._items: deque[_Item] = deque()
        self._waiter: asyncio.Future[None] | None = None
        #: The inbox's connection epoch at opening: a later one means the bus was lost since.
        self.epoch = inbox.epoch
        #: Who last sent a keepalive; once `dispatcher`, vLLM may have been called.
        self.held_by: HeldBy | None = None

    def put(self, item: _Item) -> None:
        self._items.append(item)
        if self._waiter is not None:
            _wake(self._waiter)

    async def _arrival(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for a message; True when one is there."""
        if self._items:
            return True
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        return bool(self._items)

    async def receive_raw(self, timeout_s: float) -> _Item:
        """The next message as it came: headers and payload, or None when the bus connection
        was lost. Raises `TimeoutError` when none comes within `timeout_s`."""
        if not self._items and (timeout_s <= 0 or not await self._arrival(timeout_s)):
            raise TimeoutError
        return self._items.popleft()

    async def receive(self, timeout_s: float) -> ReplyMessage | NoResponders | Lost:
        """The next reply, decoded. Raises `TimeoutError` when none comes within `timeout_s`;
        returns `Lost` when nothing at all (not even a keepalive) came for the inbox's
        `stall_s`, or the bus connection was lost. Keepalives are consumed here.

        A message that is not a valid reply (a bug or version skew upstream) becomes a 502
        `ReplyError` rather than an exception, so the request still gets one clear answer.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        stall_s = self._inbox.stall_s
        while True:
            if not self._items:
                left = end - loop.time()
                if left <= 0:
                    raise TimeoutError
                stalls = stall_s is not None and stall_s < left
                if not await self._arrival(stall_s if stall_s is not None and stalls else left):
                    if not stalls:
                        raise TimeoutError
                    assert stall_s is not None
                    bus = not self._inbox.connected or self._inbox.epoch != self.epoch
                    return Lost(bus=bus, held_by=self.held_by, silent_s=stall_s)
            item = self._items.popleft()
            if item is None:
                return Lost(bus=True, held_by=self.held_by, silent_s=0.0)
            message = self._decode(*item)
            if not isinstance(message, ReplyAlive):
                return message
            if self.held_by != "dispatcher":
                self.held_by = message.held_by

    def _decode(
        self, headers: Mapping[str, str] | None, data: bytes
    ) -> ReplyMessage | NoResponders:
        if headers is not None and headers.get(_STATUS) == "503" and not data:
            return NO_RESPONDERS
        try:
            return decode_reply(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            _log.warning("unreadable_reply", reply=self.reply, error=str(error))
            return ReplyError(
                status=502,
                error=error_response(
                    ErrorKind.BAD_GATEWAY, "The router's pipeline sent an unreadable reply."
                ),
            )

    def close(self) -> None:
        """Release the token; later messages for it are dropped. Idempotent."""
        self._inbox.release(self.token)

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Inbox:
    """Token -> mailbox map behind one wildcard subscription on `subscription` (`<prefix>.*`)."""

    def __init__(self, prefix: str, *, stall_s: float | None = None) -> None:
        """`prefix` must be unique to this process (e.g. the NATS client's `new_inbox()`);
        `stall_s` is `liveness.stall_s` (None: silence is only bounded by each deadline)."""
        self.prefix = prefix
        self.subscription = f"{prefix}.*"
        self.stall_s = stall_s
        self._mailboxes: dict[str, Mailbox] = {}
        self._cut = len(prefix) + 1
        #: Messages that arrived for a token no longer open (late replies, disconnected clients).
        self.dropped = 0
        #: Whether the bus connection is up; the count of its losses; when it came back last.
        self.connected = True
        self.epoch = 0
        self.restored_at: float | None = None
        #: Requests given up as lost (silence past `stall_s`, or a lost connection).
        self.lost = 0

    def lose_all(self) -> int:
        """The bus connection dropped: every open request gets `Lost` (bus) at once, since
        replies published while it is down never arrive. Returns how many were open."""
        self.connected = False
        self.epoch += 1
        for mailbox in self._mailboxes.values():
            mailbox.put(None)
        return len(self._mailboxes)

    def restored(self) -> None:
        """The bus connection is back."""
        self.connected = True
        self.restored_at = time.monotonic()

    def bus_unsettled(self, within_s: float) -> bool:
        """True while the bus is down or came back less than `within_s` ago (workers may still
        be reconnecting and subscribing)."""
        if not self.connected:
            return True
        return self.restored_at is not None and time.monotonic() - self.restored_at < within_s

    def open(self) -> Mailbox:
        """A mailbox with a fresh token; the caller must `close()` it (or use `with`)."""
        token = secrets.token_hex(8)
        while token in self._mailboxes:  # pragma: no cover - 64 random bits
            token = secrets.token_hex(8)
        mailbox = Mailbox(self, token)
        self._mailboxes[token] = mailbox
        return mailbox

    def release(self, token: str) -> None:
        self._mailboxes.pop(token, None)

    def deliver(self, subject: str, headers: Mapping[str, str] | None, data: bytes) -> bool:
        """Hand one message to its mailbox. Returns False (and counts it) when none is open."""
        mailbox = self._mailboxes.get(subject[self._cut :])
        if mailbox is None:
            self.dropped += 1
            return False
        mailbox.put((headers, data))
        return True

    def __len__(self) -> int:
        """Open mailboxes, i.e. requests waiting for replies."""
        return len(self._mailboxes)
