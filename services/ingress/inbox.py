"""The ingress's one reply subscription: a wildcard inbox, one token per open request.

Every request the ingress publishes names `<prefix>.<token>` as its reply subject; the single
subscription `<prefix>.*` hands each arriving message to the mailbox of its token. A stream is
many messages on one token, which NATS' own `request()` (first reply only) cannot carry.

A mailbox is removed when its request ends, however it ends (answer, deadline, client gone);
messages that arrive later find no mailbox and are dropped and counted, so a disconnected client
leaves nothing behind. This module knows no NATS client: `app.py` calls `deliver` from its
subscription callback, and tests call it directly.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from types import TracebackType

import msgspec

from schemas.errors import ErrorKind, error_response
from schemas.wire import ReplyError, ReplyMessage, decode_reply
from services.common.log import get_logger

__all__ = ["NO_RESPONDERS", "Inbox", "Mailbox", "NoResponders"]

_log = get_logger()

#: The status header NATS puts on its own "no responders" answer.
_STATUS = "Status"


class NoResponders:
    """NATS answered that nobody is subscribed to the subject published to."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_RESPONDERS"


NO_RESPONDERS = NoResponders()

_Item = tuple[Mapping[str, str] | None, bytes]


class Mailbox:
    """The replies to one request. Use as a context manager so the token is always released."""

    __slots__ = ("_inbox", "_queue", "reply", "token")

    def __init__(self, inbox: Inbox, token: str) -> None:
        self._inbox = inbox
        self.token = token
        self.reply = f"{inbox.prefix}.{token}"
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()

    def put(self, item: _Item) -> None:
        self._queue.put_nowait(item)

    async def receive_raw(self, timeout_s: float) -> _Item:
        """The next message as it came: headers and payload. Raises `TimeoutError` when none
        comes within `timeout_s`."""
        if self._queue.empty():
            if timeout_s <= 0:
                raise TimeoutError
            async with asyncio.timeout(timeout_s):
                return await self._queue.get()
        return self._queue.get_nowait()

    async def receive(self, timeout_s: float) -> ReplyMessage | NoResponders:
        """The next reply, decoded. Raises `TimeoutError` when none comes within `timeout_s`.

        A message that is not a valid reply (a bug or version skew upstream) becomes a 502
        `ReplyError` rather than an exception, so the request still gets one clear answer.
        """
        headers, data = await self.receive_raw(timeout_s)
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

    def __init__(self, prefix: str) -> None:
        """`prefix` must be unique to this process (e.g. the NATS client's `new_inbox()`)."""
        self.prefix = prefix
        self.subscription = f"{prefix}.*"
        self._mailboxes: dict[str, Mailbox] = {}
        self._cut = len(prefix) + 1
        #: Messages that arrived for a token no longer open (late replies, disconnected clients).
        self.dropped = 0

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
