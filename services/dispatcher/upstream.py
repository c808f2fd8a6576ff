"""The HTTP client towards vLLM: one pooled aiohttp session, behind a small seam.

aiohttp rather than httpx: at 64 requests in flight, a plain `httpx.AsyncClient` cost 8.4 ms
CPU per request (its pool bookkeeping is quadratic, encode/httpx#3215), httpx with the
`httpx-aiohttp` transport 0.39 ms, and aiohttp alone 0.15 ms (`loadtest/bench_upstream_client.py`,
docs/benchmarks.md). The dispatcher needs little of httpx's API, so the cheaper client wins.

`Upstream.post` returns an `UpstreamResponse` (status, then the body read whole or chunk by
chunk) and raises `UpstreamError` with a `stage` that the retry rules need: `connect` (nothing
reached the server: safe to retry elsewhere, and the endpoint is marked down), `timeout` (no
answer in time) or `io` (the connection broke). Three bounds apply besides the request's
deadline, whichever comes first: the connect (`connect_timeout_s`), the first byte
(`first_byte_timeout_s`, from the call: a stream's first chunk, a non-streamed answer's head)
and every later silence (`between_chunks_timeout_s`); the error says which one fired, so a hung
vLLM costs its client one of them, never the whole deadline. Pooled connections idle at most
`KEEPALIVE_S`, below uvicorn's (and so vLLM's) 5 s, so a connection the server is about to
close is not reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Literal

import aiohttp

__all__ = ["KEEPALIVE_S", "Upstream", "UpstreamError", "UpstreamResponse"]

#: Idle time after which a pooled connection is closed; below vLLM's 5 s keep-alive.
KEEPALIVE_S = 4.0


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
        response: aiohttp.ClientResponse,
        *,
        end: float | None = None,
        first_by: float | None = None,
        first_by_s: float = 0.0,
        gap_s: float | None = None,
    ) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.content_type
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
        loop = asyncio.get_running_loop()
        limit, what = self._next_bound(loop.time())
        try:
            # asyncio.timeout_at, not wait_for: no extra task per chunk on the hot path.
            async with asyncio.timeout_at(limit):
                chunk = await self._response.content.readany()
        except TimeoutError as error:
            raise UpstreamError("timeout", what) from error
        except aiohttp.ClientError as error:
            raise UpstreamError("io", f"the answer from vLLM broke: {error!r}") from error
        self._started = True
        return chunk

    async def read(self) -> bytes:
        """The whole body (its head was the first byte). Raises `UpstreamError` (`timeout` or
        `io`)."""
        self._started = True
        parts: list[bytes] = []
        while chunk := await self._read_some():
            parts.append(chunk)
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in chunks of whatever size the socket delivered.
        Raises `UpstreamError` (`timeout` or `io`)."""
        while chunk := await self._read_some():
            yield chunk

    def release(self) -> None:
        """Give the connection back to the pool; close it when the body was not read to its
        end (a cancelled or failed call), so vLLM sees the disconnect and stops generating."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class Upstream:
    """The pooled client. Create inside a running loop; `close()` at shutdown."""

    def __init__(
        self,
        *,
        max_connections_per_endpoint: int,
        connect_timeout_s: float,
        first_byte_timeout_s: float | None = None,
        between_chunks_timeout_s: float | None = None,
        api_key: str | None = None,
    ) -> None:
        self.first_byte_timeout_s = first_byte_timeout_s
        self.between_chunks_timeout_s = between_chunks_timeout_s
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=max_connections_per_endpoint,
            keepalive_timeout=KEEPALIVE_S,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout_s: float | None,
    ) -> UpstreamResponse:
        """POST `body` (JSON) to `url`; return once the status line and headers arrived.

        `timeout_s` is what is left of the request's deadline (None: none); the head must also
        come within `first_byte_timeout_s`. Raises `UpstreamError`.
        """
        all_headers = {"Content-Type": "application/json", **self._auth, **headers}
        now = asyncio.get_running_loop().time()
        end = None if timeout_s is None else now + timeout_s
        first_by = None if self.first_byte_timeout_s is None else now + self.first_byte_timeout_s
        head_by = min((t for t in (end, first_by) if t is not None), default=None)
        try:
            async with asyncio.timeout_at(head_by):
                response = await self._session.post(url, data=body, headers=all_headers)
        except aiohttp.ConnectionTimeoutError as error:
            raise UpstreamError("connect", f"connecting to {url} timed out") from error
        except TimeoutError as error:
            what = (
                "the request's deadline passed"
                if head_by == end
                else f"no first byte within first_byte_timeout_s ({self.first_byte_timeout_s:g} s)"
            )
            raise UpstreamError("timeout", f"no answer from {url}: {what}") from error
        except aiohttp.ClientConnectorError as error:
            raise UpstreamError(
                "connect", f"cannot connect to {url}: {error.strerror or error!r}"
            ) from error
        except (aiohttp.ClientError, OSError) as error:
            raise UpstreamError("io", f"request to {url} failed: {error!r}") from error
        return UpstreamResponse(
            response,
            end=end,
            first_by=first_by,
            first_by_s=self.first_byte_timeout_s or 0.0,
            gap_s=self.between_chunks_timeout_s,
        )

    async def close(self) -> None:
        await self._session.close()
