"""Limits on a connection until its request's header is in: a deadline and a size cap.

uvicorn's httptools protocol has neither: a client that connects and sends nothing, or sends a
header one byte at a time and never finishes it (slow loris), holds its socket for as long as it
likes, and a header line that never ends grows in memory without bound (`timeout_keep_alive`
runs only between requests). `guarded_protocol` returns uvicorn's protocol with both limits:

- the whole header (request line and headers) must arrive within `header_timeout_s` of the
  connection being made, or of the first byte of a later request on a kept-alive connection;
  otherwise the connection is closed, after a 408 when part of a header had come;
- a header larger than `max_header_bytes` gets 431 and the connection is closed, as soon as
  that many bytes have arrived without the header being complete.

Once the header is in, the request is the app's: its body and its answer have their own limits
(`ingress.max_body_bytes`, the request's deadline).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from schemas.errors import ErrorKind, error_response

__all__ = ["guarded_protocol"]


def _response(status: int, kind: ErrorKind, message: str) -> bytes:
    body = msgspec.json.encode(error_response(kind, message))
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _HeaderTooLarge(Exception):
    """Raised from a parser callback to stop parsing a header over the cap."""


class _GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a header size cap."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 32 * 1024
    _timed_out: bytes = b""
    _too_large: bytes = b""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._header_began = 0.0  # loop time of a later request's first byte
        self._awaiting_header = True
        self._header_bytes = 0  # bytes received while the header is incomplete (approximate)
        self._header_size = 0  # the parsed request line and headers (exact)
        self._over = False

    # -------------------------------------------------------------- the deadline

    def _arm(self, began: float) -> None:
        if self._timer is None:
            self._timer = self.loop.call_at(began + self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._header_bytes and not self._answering():
            self.transport.write(self._timed_out)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.loop.time())

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -------------------------------------------------------------- the size cap

    def _grow(self, size: int) -> None:
        self._header_size += size
        if self._header_size > self.max_header_bytes:
            self._over = True
            raise _HeaderTooLarge

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._awaiting_header or self.transport.is_closing():
            return
        # A later request's header did not come whole: its deadline runs from its first byte
        # (a header that arrives in one read, the usual case, needs no timer at all).
        self._arm(self._header_began)
        self._header_bytes += len(data)
        if self._header_bytes > self.max_header_bytes:
            self._refuse_large()

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers 400 to every parser error; one raised by `_grow` is a 431.
        if self._over:
            self._refuse_large()
        else:
            super().send_400_response(msg)

    def _refuse_large(self) -> None:
        self._disarm()
        if not self._answering():
            self.transport.write(self._too_large)
        self.transport.close()

    def _answering(self) -> bool:
        """An earlier request's answer is being sent (a pipelined client): writing an error now
        would land inside its bytes, so the connection is only closed."""
        return self.cycle is not None and not self.cycle.response_complete

    # -------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_header = True
        self._header_size = 0
        self._header_began = self.loop.time()

    def on_url(self, url: bytes) -> None:
        self._grow(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_header = False
        self._header_bytes = 0
        self._disarm()
        super().on_headers_complete()


def guarded_protocol(header_timeout_s: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol (pass it as `uvicorn.Config(http=...)`) with these limits."""
    return type(
        "GuardedHttpTools",
        (_GuardedHttpTools,),
        {
            "header_timeout_s": header_timeout_s,
            "max_header_bytes": max_header_bytes,
            "_timed_out": _response(
                408,
                ErrorKind.HEADER_TIMEOUT,
                f"The request header did not arrive within {header_timeout_s:g} s.",
            ),
            "_too_large": _response(
                431,
                ErrorKind.HEADER_TOO_LARGE,
                f"The request header is larger than {max_header_bytes} bytes.",
            ),
        },
    )
