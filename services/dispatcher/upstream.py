"""The HTTP client towards vLLM: pooled keep-alive HTTP/1.1 connections, parsed by httptools.

The dispatcher sends one kind of request (a JSON POST) and reads status, content type and body,
whole or as it arrives; a general client costs more than that needs. Per non-streamed request to
the mock vLLM on loopback (uvloop), `aiohttp.ClientSession` cost 109 µs of CPU at 64 in flight
and 235 µs at 1, this client 39 µs and 87 µs; plain `httpx.AsyncClient` is far worse (its pool
is quadratic, encode/httpx#3215). `loadtest/bench_upstream_client.py`, docs/benchmarks.md.

`Upstream.post` returns an `UpstreamResponse` (status, then the body read whole or chunk by
chunk) and raises `UpstreamError` with a `stage` that the retry rules need: `connect` (nothing
reached the server: safe to retry elsewhere, and the endpoint is marked down), `timeout` (no
answer in time) or `io` (the connection broke, or the answer was not HTTP). Three bounds apply
besides the request's deadline, whichever comes first: the connect (`connect_timeout_s`), the
first byte (`first_byte_timeout_s`, from the call: a stream's first chunk, a non-streamed
answer's head) and every later silence (`between_chunks_timeout_s`); the error says which one
fired, so a hung vLLM costs its client one of them, never the whole deadline.

Connections (`connections`): at most `max_connections_per_endpoint` per endpoint in use at once
(more calls wait for one, within their own bounds); a connection goes back to the pool once its
answer was read to the end, and is closed instead when it was not (a cancelled or failed call),
so vLLM sees the disconnect and stops generating. A pooled connection idle for `KEEPALIVE_S`,
below uvicorn's (and so vLLM's) 5 s, is never reused, so a connection the server is about to
close is not picked. Bodies are sent as they are (no compression is asked for or undone).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Literal
from urllib.parse import urlsplit

from services.dispatcher.connections import (
    KEEPALIVE_S,
    ConnectFailed,
    Connection,
    EndpointConnections,
)

__all__ = ["KEEPALIVE_S", "Upstream", "UpstreamError", "UpstreamResponse"]


class UpstreamError(Exception):
    """A call to vLLM failed without an HTTP answer.

    `stage`: `connect` (refused or unreachable; nothing was sent), `timeout` (no answer before
    the deadline), `io` (the connection broke while sending or reading).
    """

    def __init__(self, stage: Literal["connect", "timeout", "io"], message: str) -> None:
        super().__init__(message)
        self.stage = stage


class UpstreamResponse:
    """One HTTP answer from vLLM. Call `release()` when done (the `post` caller's duty).

    Reads end at the request's deadline `end`, at `first_by` for the first byte of the body
    when the head came without one (a stream; `first_by_s` after the call), and after `gap_s`
    of silence otherwise (loop times; None: no such bound)."""

    def __init__(
        self,
        connection: Connection,
        endpoint: EndpointConnections,
        *,
        end: float | None = None,
        first_by: float | None = None,
        first_by_s: float = 0.0,
        gap_s: float | None = None,
    ) -> None:
        self._connection = connection
        self._endpoint: EndpointConnections | None = endpoint
        self.status = connection.status
        self.content_type = connection.content_type
        self._end = end
        self._first_by = first_by
        self._first_by_s = first_by_s
        self._gap_s = gap_s
        self._started = False

    def _next_bound(self, now: float) -> tuple[float | None, str]:
        """When the next read must have returned, and what to call it if it has not."""
        if not self._started and self._first_by is not None:
            limit, what = self._first_by, "vLLM sent no first byte within first_byte_timeout_s"
            what += f" ({self._first_by_s:g} s)"
        elif self._gap_s is not None:
            limit = now + self._gap_s
            what = f"vLLM was silent for more than between_chunks_timeout_s ({self._gap_s:g} s)"
        else:
            limit, what = None, ""
        if self._end is not None and (limit is None or self._end <= limit):
            return self._end, "the request's deadline passed while vLLM was answering"
        return limit, what

    async def _read_some(self) -> bytes:
        """The next bytes of the body (b"" at its end). Raises `UpstreamError`."""
        connection = self._connection
        while not connection.ready():
            limit, what = self._next_bound(asyncio.get_running_loop().time())
            if not await connection.changed(limit) and not connection.ready():
                raise UpstreamError("timeout", what)
        if connection.chunks:
            self._started = True
            return connection.take()
        if connection.done:
            return b""
        raise UpstreamError("io", f"the answer from vLLM broke: {connection.error!r}")

    async def read(self) -> bytes:
        """The whole body (its head was the first byte). Raises `UpstreamError` (`timeout` or
        `io`)."""
        self._started = True
        parts: list[bytes] = []
        while chunk := await self._read_some():
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in chunks of whatever size the socket delivered.
        Raises `UpstreamError` (`timeout` or `io`)."""
        while chunk := await self._read_some():
            yield chunk

    def release(self) -> None:
        """Give the connection back to the pool; close it when the body was not read to its
        end (a cancelled or failed call), so vLLM sees the disconnect and stops generating.
        Idempotent."""
        endpoint, self._endpoint = self._endpoint, None
        if endpoint is None:
            return
        connection = self._connection
        reuse = (
            connection.done
            and not connection.chunks
            and connection.error is None
            and connection.keep_alive
            and not connection.stray
        )
        endpoint.give_back(connection, reuse)


class _Target:
    """A URL split once: its endpoint's key, and the request line and `Host` header."""

    __slots__ = ("head", "key", "url")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.url = url
        self.key = (parts.scheme, parts.hostname, port)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host = parts.netloc.rpartition("@")[2]
        self.head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n".encode("latin-1")


def _header_lines(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"a line break in the HTTP header {name!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class Upstream:
    """The pooled client. `close()` at shutdown."""

    def __init__(
        self,
        *,
        max_connections_per_endpoint: int,
        connect_timeout_s: float,
        first_byte_timeout_s: float | None = None,
        between_chunks_timeout_s: float | None = None,
        api_key: str | None = None,
    ) -> None:
        self.max_connections_per_endpoint = max_connections_per_endpoint
        self.connect_timeout_s = connect_timeout_s
        self.first_byte_timeout_s = first_byte_timeout_s
        self.between_chunks_timeout_s = between_chunks_timeout_s
        self._auth = f"Authorization: Bearer {api_key}\r\n".encode() if api_key else b""
        self._targets: dict[str, _Target] = {}
        self._endpoints: dict[tuple[str, str, int], EndpointConnections] = {}
        self._tls: ssl.SSLContext | None = None

    def _endpoint(self, target: _Target) -> EndpointConnections:
        endpoint = self._endpoints.get(target.key)
        if endpoint is None:
            scheme, host, port = target.key
            if scheme == "https" and self._tls is None:
                self._tls = ssl.create_default_context()
            endpoint = EndpointConnections(
                scheme, host, port, self.max_connections_per_endpoint, self._tls
            )
            self._endpoints[target.key] = endpoint
        return endpoint

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float | None,
    ) -> UpstreamResponse:
        """POST `body` (JSON) to `url`; return once the status line and headers arrived.

        `timeout_s` is what is left of the request's deadline (None: none); the head must also
        come within `first_byte_timeout_s`. Raises `UpstreamError`, and `ValueError` for a URL
        that is not http(s) or a header value with a line break.
        """
        target = self._targets.get(url)
        if target is None:
            target = self._targets[url] = _Target(url)
        request = b"".join(
            [
                target.head,
                b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body),
                self._auth,
                _header_lines(headers),
                b"\r\n",
                body,
            ]
        )
        endpoint = self._endpoint(target)
        now = asyncio.get_running_loop().time()
        end = None if timeout_s is None else now + timeout_s
        first_by = None if self.first_byte_timeout_s is None else now + self.first_byte_timeout_s
        head_by = min((t for t in (end, first_by) if t is not None), default=None)
        connection = endpoint.reuse(now)
        if connection is None:
            try:
                async with asyncio.timeout_at(head_by):
                    connection = await endpoint.connect(self.connect_timeout_s)
            except ConnectFailed as failed:
                error = failed.__cause__
                if failed.timed_out:
                    raise UpstreamError("connect", f"connecting to {url} timed out") from error
                said = (error.strerror if isinstance(error, OSError) else None) or repr(error)
                raise UpstreamError("connect", f"cannot connect to {url}: {said}") from error
            except TimeoutError as error:
                raise UpstreamError("timeout", self._no_answer(url, head_by == end)) from error
        try:
            connection.send(request)
            while not connection.head and connection.error is None:
                waited = await connection.changed(head_by)
                if not waited and not connection.head and connection.error is None:
                    raise UpstreamError("timeout", self._no_answer(url, head_by == end))
            if not connection.head:
                raise UpstreamError("io", f"request to {url} failed: {connection.error!r}")
        except BaseException:
            endpoint.give_back(connection, reuse=False)
            raise
        return UpstreamResponse(
            connection,
            endpoint,
            end=end,
            first_by=first_by,
            first_by_s=self.first_byte_timeout_s or 0.0,
            gap_s=self.between_chunks_timeout_s,
        )

    def _no_answer(self, url: str, deadline: bool) -> str:
        what = (
            "the request's deadline passed"
            if deadline
            else f"no first byte within first_byte_timeout_s ({self.first_byte_timeout_s:g} s)"
        )
        return f"no answer from {url}: {what}"

    async def close(self) -> None:
        """Close every connection (calls still reading see their connection break)."""
        for endpoint in self._endpoints.values():
            endpoint.close()
