"""Keep-alive HTTP/1.1 connections to one vLLM endpoint, and their pool: the transport under
`upstream.Upstream`.

A `Connection` writes a request and parses its answer with httptools as the bytes arrive (the
head, the body pieces, the end or a failure); a reader waits for the next of them with
`changed`. An `EndpointConnections` holds the idle connections to one `scheme://host:port`
(most recently used last), counts those in use against its limit, and queues the calls that
wait for one. A connection goes back to the pool only once its answer was read to the end; one
idle for `KEEPALIVE_S` or longer, closed by the server, or sent bytes nobody asked for is never
reused.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import cast

import httptools

__all__ = ["KEEPALIVE_S", "ConnectFailed", "Connection", "EndpointConnections"]

#: Idle time after which a pooled connection is not reused; below vLLM's 5 s keep-alive.
KEEPALIVE_S = 4.0
#: Bytes of an answer held unread before the connection stops reading (resumes once read).
_HIGH_WATER = 1 << 20
#: What a missing `Content-Type` reads as (RFC 9110 8.3).
_OCTET_STREAM = "application/octet-stream"


def _wake(waiter: asyncio.Future[bool], value: bool = True) -> None:
    if not waiter.done():
        waiter.set_result(value)


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: writes a request, parses its answer as the bytes arrive.

    The parser's callbacks fill in the head (`status`, `content_type`, `head`), queue the body
    (`chunks`), and mark the end (`done`) or a failure (`error`); a reader waits for any of
    them with `changed`."""

    def __init__(self, pool: EndpointConnections) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.content_type = _OCTET_STREAM
        self.head = self.done = self.keep_alive = False
        self.error: BaseException | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.idle_since = 0.0
        #: Bytes came while no request was open (a misbehaving server): never reuse.
        self.stray = False
        self._busy = False
        self._interim = False
        self._framed = False  # a length or chunked framing: the end does not need the close
        self._paused = False
        self._waiter: asyncio.Future[bool] | None = None

    # ------------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not `asyncio.Transport` subclasses: no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            self.stray = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(error)
        self._notify()

    def eof_received(self) -> bool:
        return False  # close the transport; `connection_lost` ends the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.head and not self.done and not self._framed:
            self.done = True  # an answer delimited by the close (no length, not chunked)
        elif not self.done:
            self._fail(exc or ConnectionResetError("the server closed the connection"))
        self._pool.lost(self)
        self._notify()

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        if self.done or not self._busy:  # a second answer to one request: not ours to read
            self.stray = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.stray:
            return
        lower = name.lower()
        if lower == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            self.content_type = media.decode("latin-1") or _OCTET_STREAM
        elif lower == b"content-length" or (
            lower == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self._framed = True

    def on_headers_complete(self) -> None:
        if self.stray:
            return
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the answer follows
            self._interim = True
            self.content_type, self._framed = _OCTET_STREAM, False
            return
        self.status = status
        self.keep_alive = self._parser.should_keep_alive()
        if status in (204, 304):
            self._framed = True
        self.head = True

    def on_body(self, body: bytes) -> None:
        if self.stray:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.stray:
            return
        if self._interim:
            self._interim = False
            return
        self.done = True

    # ------------------------------------------------------------------ the caller's side

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.close()

    def _notify(self) -> None:
        if self._waiter is not None:
            _wake(self._waiter)

    def ready(self) -> bool:
        """True when a reader has something: body bytes, the end, or a failure."""
        return bool(self.chunks) or self.done or self.error is not None

    def usable(self, now: float) -> bool:
        """True when this idle connection may carry another request."""
        return (
            self.transport is not None
            and not self.transport.is_closing()
            and self.error is None
            and not self.stray
            and now - self.idle_since < KEEPALIVE_S
        )

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self._busy = True
        self.head = self.done = False
        self.status, self.content_type, self._framed = 0, _OCTET_STREAM, False
        self.transport.write(request)

    def take(self) -> bytes:
        """The body bytes received and not read yet (b"" when none)."""
        data = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def changed(self, deadline: float | None) -> bool:
        """Wait until bytes arrive or the connection ends, at most until `deadline` (loop
        time; None: no bound). False when the deadline came first."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = None if deadline is None else loop.call_at(deadline, _wake, waiter, False)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            self._waiter = None

    def finished(self) -> None:
        """The answer was read to its end: the connection may carry the next request."""
        self._busy = False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class ConnectFailed(Exception):
    """Connecting failed (`timed_out`: within `connect_timeout_s`); the cause is chained."""

    def __init__(self, timed_out: bool) -> None:
        super().__init__()
        self.timed_out = timed_out


class EndpointConnections:
    """The connections to one `scheme://host:port`: idle ones (most recent last), how many
    calls hold one (`in_use`, at most `limit`), and the calls waiting for one, served in their
    order: a freed slot is handed to the first waiter (counted for it at once), so a later call
    cannot take it first."""

    def __init__(self, scheme: str, host: str, port: int, limit: int, tls: ssl.SSLContext | None):
        self.host, self.port, self.limit = host, port, limit
        self.tls = tls if scheme == "https" else None
        self.idle: list[Connection] = []
        self.in_use = 0
        self.waiting: deque[asyncio.Future[None]] = deque()
        self.open: set[Connection] = set()

    def _take_idle(self, now: float) -> Connection | None:
        """An idle connection fit for a request, taken from the pool (stale ones are closed)."""
        while self.idle:
            connection = self.idle.pop()
            if connection.usable(now):
                return connection
            connection.close()
        return None

    def reuse(self, now: float) -> Connection | None:
        """An idle connection for a call, when one is there and a slot is free with nobody
        waiting for it; else None (`connect` then waits or opens one)."""
        if self.waiting or self.in_use >= self.limit:
            return None
        connection = self._take_idle(now)
        if connection is not None:
            self.in_use += 1
        return connection

    async def connect(self, timeout_s: float) -> Connection:
        """A connection for a call: once a slot is free (after the calls that waited before),
        an idle one, else a new one. Raises `ConnectFailed`, or `CancelledError` when the
        caller's bounds end the wait."""
        loop = asyncio.get_running_loop()
        if self.waiting or self.in_use >= self.limit:
            waiter: asyncio.Future[None] = loop.create_future()
            self.waiting.append(waiter)
            try:
                await waiter  # `_free_slot` counts the slot for this call before waking it
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._free_slot()  # handed a slot, but gone: the next waiter gets it
                elif waiter in self.waiting:
                    self.waiting.remove(waiter)
                raise
        else:
            self.in_use += 1
        connection = self._take_idle(loop.time())
        if connection is not None:
            return connection
        try:
            try:
                async with asyncio.timeout(timeout_s):
                    _, connection = await loop.create_connection(
                        lambda: Connection(self),
                        self.host,
                        self.port,
                        ssl=self.tls,
                        server_hostname=self.host if self.tls is not None else None,
                    )
            except TimeoutError as error:
                raise ConnectFailed(timed_out=True) from error
            except OSError as error:
                raise ConnectFailed(timed_out=False) from error
        except BaseException:
            self._free_slot()
            raise
        self.open.add(connection)
        return connection

    def give_back(self, connection: Connection, reuse: bool) -> None:
        """End a call's use of `connection`: pooled when `reuse`, else closed."""
        if reuse and connection.transport is not None:
            connection.idle_since = asyncio.get_running_loop().time()
            connection.finished()
            self.idle.append(connection)
        else:
            connection.close()
        self._free_slot()

    def lost(self, connection: Connection) -> None:
        self.open.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)

    def _free_slot(self) -> None:
        """A call stopped holding a slot: hand it to the first waiting call, if any."""
        self.in_use -= 1
        while self.waiting and self.in_use < self.limit:
            waiter = self.waiting.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)

    def close(self) -> None:
        for connection in list(self.open):
            connection.close()
        self.idle.clear()
