"""The HTTP client towards vLLM: one pooled aiohttp session, behind a small seam.

aiohttp rather than httpx: at 64 requests in flight, a plain `httpx.AsyncClient` cost 8.4 ms
CPU per request (its pool bookkeeping is quadratic, encode/httpx#3215), httpx with the
`httpx-aiohttp` transport 0.39 ms, and aiohttp alone 0.15 ms (`loadtest/bench_upstream_client.py`,
docs/benchmarks.md). The dispatcher needs little of httpx's API, so the cheaper client wins.

`Upstream.post` returns an `UpstreamResponse` (status, then the body read whole or chunk by
chunk) and raises `UpstreamError` with a `stage` that the retry rules need: `connect` (nothing
reached the server: safe to retry elsewhere, and the endpoint is marked down), `timeout` (no
answer in time) or `io` (the connection broke). Pooled connections idle at most
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
    """One HTTP answer from vLLM. Call `release()` when done (the `post` caller's duty)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.content_type

    async def read(self, timeout_s: float | None) -> bytes:
        """The whole body. Raises `UpstreamError` (`timeout` or `io`)."""
        try:
            # asyncio.timeout, not wait_for: no extra task per call on the hot path.
            async with asyncio.timeout(timeout_s):
                return await self._response.read()
        except TimeoutError as error:
            raise UpstreamError("timeout", "vLLM did not finish its answer in time") from error
        except aiohttp.ClientError as error:
            raise UpstreamError("io", f"reading vLLM's answer failed: {error!r}") from error

    async def chunks(self, timeout_s: float | None) -> AsyncIterator[bytes]:
        """The body as it arrives, in chunks of whatever size the socket delivered.

        `timeout_s` bounds the whole stream. Raises `UpstreamError` (`timeout` or `io`).
        """
        loop = asyncio.get_running_loop()
        end = None if timeout_s is None else loop.time() + timeout_s
        content = self._response.content
        while True:
            if end is not None and end <= loop.time():
                raise UpstreamError("timeout", "the stream passed the request's deadline")
            try:
                async with asyncio.timeout_at(end):
                    chunk = await content.readany()
            except TimeoutError as error:
                raise UpstreamError(
                    "timeout", "the stream passed the request's deadline"
                ) from error
            except aiohttp.ClientError as error:
                raise UpstreamError("io", f"the stream from vLLM broke: {error!r}") from error
            if not chunk:
                return
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
        api_key: str | None = None,
    ) -> None:
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

        `timeout_s` bounds the wait for the response head. Raises `UpstreamError`.
        """
        all_headers = {"Content-Type": "application/json", **self._auth, **headers}
        try:
            async with asyncio.timeout(timeout_s):
                response = await self._session.post(url, data=body, headers=all_headers)
        except aiohttp.ConnectionTimeoutError as error:
            raise UpstreamError("connect", f"connecting to {url} timed out") from error
        except TimeoutError as error:
            raise UpstreamError("timeout", f"no answer from {url} in time") from error
        except aiohttp.ClientConnectorError as error:
            raise UpstreamError(
                "connect", f"cannot connect to {url}: {error.strerror or error!r}"
            ) from error
        except (aiohttp.ClientError, OSError) as error:
            raise UpstreamError("io", f"request to {url} failed: {error!r}") from error
        return UpstreamResponse(response)

    async def close(self) -> None:
        await self._session.close()
