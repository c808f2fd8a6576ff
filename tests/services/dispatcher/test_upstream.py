"""`services.dispatcher.upstream` (and its `connections`) against real servers on loopback: the connection pool (reuse,
its idle bound, its size), what ends a connection, framings, and how failures are reported.

Dispatch's own tests (`test_dispatch.py`) cover the bounds on the first byte and on silences,
streams and retries through this client; these cover the client alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.dispatcher import connections
from services.dispatcher.upstream import Upstream, UpstreamError

pytestmark = pytest.mark.integration

BODY = b'{"model":"medical-lora","messages":[{"role":"user","content":"hi"}]}'
ANSWER = b'{"id":"chatcmpl-1","object":"chat.completion"}'


class Server:
    """An aiohttp server on loopback that records each request's client port and how many
    requests it held at once; `delay` holds each answer, `handler` replaces the answer."""

    def __init__(self) -> None:
        self.peers: list[int] = []
        self.ids: list[str] = []
        self.busy = self.most_busy = 0
        self.delay = 0.0
        self.disconnected = asyncio.Event()
        self.handler: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.server = TestServer(app, host="127.0.0.1")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername")[1])
        self.ids.append(request.headers.get("X-Request-Id", ""))
        assert await request.read() == BODY
        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)
        try:
            await asyncio.sleep(self.delay)
            if self.handler is not None:
                return await self.handler(request)
            return web.Response(body=ANSWER, content_type="application/json")
        except (asyncio.CancelledError, ConnectionResetError):  # the client went
            self.disconnected.set()
            raise
        finally:
            self.busy -= 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/v1/chat/completions"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    fake = Server()
    await fake.server.start_server()
    try:
        yield fake
    finally:
        await fake.server.close()


@pytest.fixture
async def client() -> AsyncIterator[Upstream]:
    up = Upstream(max_connections_per_endpoint=4, connect_timeout_s=2.0)
    try:
        yield up
    finally:
        await up.close()


async def _call(client: Upstream, url: str, timeout_s: float = 5.0) -> tuple[int, str, bytes]:
    response = await client.post(url, BODY, {"X-Request-Id": "r1"}, timeout_s)
    try:
        return response.status, response.content_type, await response.read()
    finally:
        response.release()


async def test_an_answer_read_to_its_end_leaves_its_connection_for_the_next_call(
    server: Server, client: Upstream
) -> None:
    assert await _call(client, server.url) == (200, "application/json", ANSWER)
    assert await _call(client, server.url) == (200, "application/json", ANSWER)
    assert len(server.peers) == 2 and server.peers[0] == server.peers[1]


async def test_a_connection_idle_past_the_keepalive_bound_is_not_reused(
    server: Server, client: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections, "KEEPALIVE_S", 0.05)
    await _call(client, server.url)
    await asyncio.sleep(0.1)
    await _call(client, server.url)
    assert server.peers[0] != server.peers[1]


async def test_no_more_connections_than_the_limit_are_in_use_at_once(server: Server) -> None:
    server.delay = 0.05
    up = Upstream(max_connections_per_endpoint=2, connect_timeout_s=2.0)
    try:
        answers = await asyncio.gather(*(_call(up, server.url) for _ in range(6)))
    finally:
        await up.close()
    assert all(answer[0] == 200 for answer in answers)
    assert server.most_busy == 2 and len(set(server.peers)) == 2


async def test_calls_waiting_for_a_connection_are_served_in_their_order(server: Server) -> None:
    server.delay = 0.1
    up = Upstream(max_connections_per_endpoint=1, connect_timeout_s=2.0)

    async def call(name: str) -> None:
        response = await up.post(server.url, BODY, {"X-Request-Id": name}, 5.0)
        await response.read()
        response.release()

    async def one_then_another() -> None:
        await call("a")
        await call("c")  # the connection is idle at once, but "b" waits for it already

    try:
        first = asyncio.ensure_future(one_then_another())
        await asyncio.sleep(0.03)
        await asyncio.gather(first, call("b"))
    finally:
        await up.close()
    assert server.ids == ["a", "b", "c"]


async def test_a_call_waiting_for_a_connection_ends_at_its_deadline(server: Server) -> None:
    server.delay = 1.0
    up = Upstream(max_connections_per_endpoint=1, connect_timeout_s=2.0)
    try:
        first = asyncio.ensure_future(_call(up, server.url))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamError) as raised:
            await up.post(server.url, BODY, {}, 0.1)
        assert raised.value.stage == "timeout" and "deadline" in str(raised.value)
        assert (await first)[0] == 200
    finally:
        await up.close()


async def test_a_body_left_unread_closes_the_connection_so_the_server_sees_the_client_go(
    server: Server, client: Upstream
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        while True:
            await response.write(b"data: {}\n\n")
            await asyncio.sleep(0.01)

    server.handler = endless
    response = await client.post(server.url, BODY, {}, 5.0)
    assert response.content_type == "text/event-stream"
    chunks = response.chunks()
    assert (await anext(chunks)).startswith(b"data: {}")
    response.release()
    await asyncio.wait_for(server.disconnected.wait(), 2.0)
    server.handler = None
    await _call(client, server.url)
    assert server.peers[0] != server.peers[1]


async def test_a_chunked_answer_arrives_decoded(server: Server, client: Upstream) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in (ANSWER[:10], ANSWER[10:]):
            await response.write(piece)
        await response.write_eof()
        return response

    server.handler = chunked
    assert await _call(client, server.url) == (200, "application/json", ANSWER)
    server.handler = None
    await _call(client, server.url)
    assert server.peers[0] == server.peers[1]


async def test_an_answer_with_connection_close_is_not_reused(
    server: Server, client: Upstream
) -> None:
    async def closing(request: web.Request) -> web.StreamResponse:
        return web.Response(body=ANSWER, headers={"Connection": "close"})

    server.handler = closing
    assert (await _call(client, server.url))[2] == ANSWER
    server.handler = None
    await _call(client, server.url)
    assert server.peers[0] != server.peers[1]


@contextlib.asynccontextmanager
async def _raw_server(answer: bytes, *, close: bool) -> AsyncIterator[str]:
    """A server (its URL) that answers any request with `answer` as written, then closes the
    connection if asked, else holds it until the client goes."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if close:
            writer.close()
        else:
            await reader.read()

    raw = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        for writer in writers:
            writer.close()
        raw.close()
        await raw.wait_closed()
        await asyncio.sleep(0)


async def test_an_answer_that_ends_with_the_connection_is_read_whole(client: Upstream) -> None:
    async with _raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\r\n" + ANSWER,
        close=True,
    ) as url:
        assert await _call(client, url) == (200, "application/json", ANSWER)


async def test_an_answer_cut_short_is_an_io_error(client: Upstream) -> None:
    async with _raw_server(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
        + ANSWER,
        close=True,
    ) as url:
        response = await client.post(url, BODY, {}, 5.0)
        try:
            with pytest.raises(UpstreamError) as raised:
                await response.read()
        finally:
            response.release()
    assert raised.value.stage == "io"


async def test_an_answer_that_is_not_http_is_an_io_error(client: Upstream) -> None:
    async with _raw_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", close=False) as url:
        with pytest.raises(UpstreamError) as raised:
            await client.post(url, BODY, {}, 5.0)
    assert raised.value.stage == "io"


async def test_a_silent_server_is_a_timeout_naming_the_first_byte_bound() -> None:
    up = Upstream(max_connections_per_endpoint=1, connect_timeout_s=2.0, first_byte_timeout_s=0.1)
    try:
        async with _raw_server(b"", close=False) as url:
            with pytest.raises(UpstreamError) as raised:
                await up.post(url, BODY, {}, 5.0)
    finally:
        await up.close()
    assert raised.value.stage == "timeout" and "first_byte_timeout_s" in str(raised.value)


async def test_nobody_listening_is_a_connect_error_naming_the_url(client: Upstream) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1/chat/completions"
    with pytest.raises(UpstreamError) as raised:
        await client.post(url, BODY, {}, 5.0)
    assert raised.value.stage == "connect" and url in str(raised.value)


async def test_a_header_with_a_line_break_is_refused(server: Server, client: Upstream) -> None:
    with pytest.raises(ValueError, match="line break"):
        await client.post(server.url, BODY, {"X-Request-Id": "a\r\nInjected: 1"}, 5.0)
    assert server.peers == []
