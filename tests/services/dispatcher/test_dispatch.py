"""`services.dispatcher.dispatch` against real HTTP servers on loopback.

Local aiohttp servers play vLLM with exact bytes and chosen failures (errors of both envelope
shapes, retries before the first byte only, deadlines, the model check, streams cut short,
dead endpoints); a final class runs the mock vLLM as a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from schemas.config import Dispatcher as DispatcherConfig
from schemas.config import VllmEndpoint
from schemas.wire import (
    DispatchRequest,
    ReplyEnd,
    ReplyError,
    ReplyHead,
    ReplyMessage,
    ReplyResponse,
    Route,
    StreamChunk,
    encode_reply,
)
from services.common.bus import RequestMeta, deadline_after
from services.dispatcher.dispatch import Dispatch
from services.dispatcher.endpoints import EndpointPool
from services.dispatcher.upstream import Upstream

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeVllm:
    """A loopback HTTP server whose chat handler the test sets; records the bodies received."""

    def __init__(self) -> None:
        self.handler: Handler | None = None
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.server = TestServer(app, host="127.0.0.1")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.json())
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        assert self.handler is not None
        return await self.handler(request)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port


@pytest.fixture
async def vllm() -> AsyncIterator[FakeVllm]:
    fake = FakeVllm()
    await fake.server.start_server()
    try:
        yield fake
    finally:
        await fake.server.close()


@pytest.fixture
async def vllm2() -> AsyncIterator[FakeVllm]:
    fake = FakeVllm()
    await fake.server.start_server()
    try:
        yield fake
    finally:
        await fake.server.close()


def _completion(model: str = "medical-lora") -> bytes:
    return (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"'
        + model.encode()
        + b'","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
    )


def json_handler(body: bytes, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, content_type="application/json")

    return handler


FRAMES = [
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"medical-lora","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"medical-lora","choices":[{"index":0,"delta":{"content":" caf\xc3\xa9"},"logprobs":null,"finish_reason":null}]}\n\n',
    b": keep-alive\n\n",
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"medical-lora","choices":[{"index":0,"delta":{"content":"!"},"logprobs":null,"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]


def sse_handler(frames: list[bytes], *, cut: bool = False, pause: float = 0.005) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        for frame in frames:
            await response.write(frame)
            await asyncio.sleep(pause)
        if cut:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write_eof()
        return response

    return handler


def _endpoint(name: str, port: int, weight: float = 1.0) -> VllmEndpoint:
    return VllmEndpoint(name=name, address="127.0.0.1", port=port, weight=weight)


class Harness:
    """A `Dispatch` over chosen endpoints, collecting what it sends."""

    def __init__(
        self, endpoints: list[VllmEndpoint], max_message_bytes: int | None = None, **config: Any
    ) -> None:
        self.pool = EndpointPool(endpoints)
        self.config = DispatcherConfig(**config)
        self.upstream = Upstream(
            max_connections_per_endpoint=16,
            connect_timeout_s=2.0,
            first_byte_timeout_s=self.config.first_byte_timeout_s,
            between_chunks_timeout_s=self.config.between_chunks_timeout_s,
        )
        self.dispatch = Dispatch(
            config=self.config,
            pool=self.pool,
            upstream=self.upstream,
            max_message_bytes=max_message_bytes,
        )
        self.sent: list[ReplyMessage] = []

    async def send(self, message: ReplyMessage) -> None:
        self.sent.append(message)

    async def run(
        self,
        body: dict[str, Any],
        *,
        deadline_s: float = 10.0,
        endpoints: list[str] | None = None,
        model: str = "medical-lora",
    ) -> Any:
        route = Route(
            model=model, base_model="llama2-7b", endpoints=endpoints or list(self.pool.endpoints)
        )
        request = DispatchRequest(route=route, body=msgspec.Raw(msgspec.json.encode(body)))
        meta = RequestMeta(
            request_id="req-1",
            deadline_ms=deadline_after(deadline_s),
            traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        )
        return await self.dispatch.run(request, meta, self.send)


@pytest.fixture
async def harness_factory() -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(endpoints: list[VllmEndpoint], **config: Any) -> Harness:
        h = Harness(endpoints, **config)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.upstream.close()


CHAT = {"model": "MoM", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True}


def _only_error(h: Harness) -> ReplyError:
    assert len(h.sent) == 1, h.sent
    reply = h.sent[0]
    assert isinstance(reply, ReplyError)
    return reply


class TestWhole:
    async def test_body_passes_through_byte_exact_with_headers(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = json_handler(_completion())
        h = harness_factory([_endpoint("a", vllm.port)])
        outcome = await h.run(CHAT)
        assert outcome.status == 200 and outcome.attempts == 1
        [reply] = h.sent
        assert isinstance(reply, ReplyResponse) and reply.status == 200
        assert bytes(reply.body) == _completion()
        assert vllm.bodies[0]["model"] == "medical-lora"
        assert vllm.headers[0]["x-request-id"] == "req-1"
        assert vllm.headers[0]["traceparent"].startswith("00-aaaa")

    async def test_client_errors_pass_through_in_the_current_envelope(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        legacy = b'{"object":"error","message":"bad max_tokens","type":"BadRequestError","param":"max_tokens","code":400}'
        vllm.handler = json_handler(legacy, status=400)
        h = harness_factory([_endpoint("a", vllm.port)])
        await h.run(CHAT)
        error = _only_error(h)
        assert error.status == 400
        assert (
            error.error.error.message == "bad max_tokens"
            and error.error.error.param == "max_tokens"
        )
        assert error.error.error.type == "BadRequestError" and len(vllm.bodies) == 1

    async def test_unauthorized_is_a_gateway_error(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = json_handler(b'{"error":"Unauthorized"}', status=401)
        h = harness_factory([_endpoint("a", vllm.port)])
        await h.run(CHAT)
        assert _only_error(h).status == 502

    @pytest.mark.parametrize("status", [503, 500])
    async def test_retryable_status_goes_to_another_endpoint(
        self, status: int, vllm: FakeVllm, vllm2: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = json_handler(
            b'{"error":{"message":"busy","type":"ServiceUnavailableError","param":null,"code":503}}',
            status=status,
        )
        vllm2.handler = json_handler(_completion())
        h = harness_factory([_endpoint("a", vllm.port, 1000), _endpoint("b", vllm2.port, 0.001)])
        outcome = await h.run(CHAT)
        assert outcome.status == 200 and outcome.attempts == 2 and outcome.endpoint == "b"
        assert isinstance(h.sent[0], ReplyResponse) and len(h.sent) == 1

    async def test_retryable_status_on_the_only_endpoint_is_returned(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = json_handler(
            b'{"error":{"message":"busy","type":"Service Unavailable","param":null,"code":503}}',
            status=503,
        )
        h = harness_factory([_endpoint("a", vllm.port)])
        await h.run(CHAT)
        assert _only_error(h).status == 503 and len(vllm.bodies) == 1

    async def test_missing_adapter_on_one_endpoint_tries_another(
        self, vllm: FakeVllm, vllm2: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = json_handler(
            b'{"error":{"message":"The model `medical-lora` does not exist.","type":"NotFoundError","param":"model","code":404}}',
            status=404,
        )
        vllm2.handler = json_handler(_completion())
        h = harness_factory([_endpoint("a", vllm.port, 1000), _endpoint("b", vllm2.port, 0.001)])
        assert (await h.run(CHAT)).status == 200
        h1 = harness_factory([_endpoint("a", vllm.port)])
        await h1.run(CHAT)
        assert _only_error(h1).status == 404

    async def test_an_answer_larger_than_one_message_goes_in_pieces(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        big = _completion()[:-2] + b',"pad":"' + b"x" * 20_000 + b'"}'
        vllm.handler = json_handler(big)
        h = harness_factory([_endpoint("a", vllm.port)], max_message_bytes=8192)
        outcome = await h.run(CHAT)
        head, *pieces, end = h.sent
        assert isinstance(head, ReplyHead) and head.whole and head.status == 200
        assert head.route is not None and head.route.model == "medical-lora"
        assert all(isinstance(p, StreamChunk) for p in pieces) and len(pieces) == 3
        assert [p.seq for p in pieces] == [0, 1, 2]  # type: ignore[union-attr]
        assert all(len(encode_reply(p)) <= 8192 for p in h.sent)
        assert b"".join(p.data for p in pieces) == big  # type: ignore[union-attr]
        assert isinstance(end, ReplyEnd) and end.chunks == 3 and end.error is None
        assert outcome.status == 200 and outcome.chunks == 3
        # One that fits travels whole, as before.
        vllm.handler = json_handler(_completion())
        h2 = harness_factory([_endpoint("a", vllm.port)], max_message_bytes=8192)
        await h2.run(CHAT)
        assert [type(m) for m in h2.sent] == [ReplyResponse]

    async def test_wrong_model_in_the_answer(
        self, vllm: FakeVllm, vllm2: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = json_handler(_completion("llama2-7b"))
        vllm2.handler = json_handler(_completion())
        h = harness_factory([_endpoint("a", vllm.port)])
        outcome = await h.run(CHAT)
        error = _only_error(h)
        # The client reads that the model was wrong; which endpoint and model, the log reads.
        assert error.status == 502 and "llama2-7b" not in error.error.error.message
        assert "'medical-lora'" in error.error.error.message
        assert outcome.detail == "endpoint a answered for model 'llama2-7b'"
        h2 = harness_factory([_endpoint("a", vllm.port, 1000), _endpoint("b", vllm2.port, 0.001)])
        assert (await h2.run(CHAT)).endpoint == "b"
        h3 = harness_factory([_endpoint("a", vllm.port)], check_response_model=False)
        await h3.run(CHAT)
        assert isinstance(h3.sent[0], ReplyResponse)

    async def test_dead_endpoint_fails_over_and_is_marked_down(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = json_handler(_completion())
        dead = _endpoint("dead", _free_port(), 1000)
        h = harness_factory([dead, _endpoint("live", vllm.port, 0.001)])
        outcome = await h.run(CHAT)
        assert outcome.status == 200 and outcome.endpoint == "live" and outcome.attempts == 2
        assert h.pool.is_down("dead")
        # While it is down, the live endpoint is tried first.
        assert (await h.run(CHAT)).attempts == 1

    async def test_every_endpoint_dead_is_502(
        self, harness_factory: Callable[..., Harness]
    ) -> None:
        h = harness_factory([_endpoint("d1", _free_port()), _endpoint("d2", _free_port())])
        outcome = await h.run(CHAT)
        assert _only_error(h).status == 502 and outcome.attempts == 2
        # The client reads the cause; the endpoint and its URL are for the log only.
        assert _only_error(h).error.error.message == "The model server could not be reached."
        assert outcome.detail is not None and "http://127.0.0.1:" in outcome.detail
        # The last endpoint tried (equal weights: either may go first).
        assert outcome.detail.startswith(f"endpoint {outcome.endpoint}: ")

    async def test_next_best_model_when_every_endpoint_of_the_winner_is_down(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = json_handler(_completion("llama2-7b"))
        h = harness_factory([_endpoint("dead", _free_port()), _endpoint("live", vllm.port)])
        fallback = Route(model="llama2-7b", base_model="llama2-7b", endpoints=["live"])
        route = Route(
            model="medical-lora",
            base_model="llama2-7b",
            adapter="medical-lora",
            endpoints=["dead"],
            fallbacks=[fallback],
        )
        request = DispatchRequest(route=route, body=msgspec.Raw(msgspec.json.encode(CHAT)))
        meta = RequestMeta(request_id="req-fb", deadline_ms=deadline_after(10.0))
        outcome = await h.dispatch.run(request, meta, h.send)
        assert (outcome.status, outcome.model, outcome.fallbacks_used) == (200, "llama2-7b", 1)
        (reply,) = h.sent
        assert isinstance(reply, ReplyResponse) and reply.route == fallback
        assert vllm.bodies[-1]["model"] == "llama2-7b"

    async def test_no_fallback_after_a_final_error(
        self, vllm: FakeVllm, vllm2: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        # A 400 is the client's problem, not the model's: the next-best entry is not tried.
        vllm.handler = json_handler(
            b'{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}', 400
        )
        vllm2.handler = json_handler(_completion("llama2-7b"))
        h = harness_factory([_endpoint("first", vllm.port), _endpoint("second", vllm2.port)])
        route = Route(
            model="medical-lora",
            base_model="llama2-7b",
            endpoints=["first"],
            fallbacks=[Route(model="llama2-7b", base_model="llama2-7b", endpoints=["second"])],
        )
        request = DispatchRequest(route=route, body=msgspec.Raw(msgspec.json.encode(CHAT)))
        meta = RequestMeta(request_id="req-nf", deadline_ms=deadline_after(10.0))
        outcome = await h.dispatch.run(request, meta, h.send)
        assert (outcome.status, outcome.fallbacks_used) == (400, 0)
        assert vllm2.bodies == []

    async def test_deadline_before_the_answer_is_504(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        released = asyncio.Event()

        async def slow(request: web.Request) -> web.StreamResponse:
            # Answers only once the test has its outcome (or after a minute).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), 60)
            return web.Response(body=_completion(), content_type="application/json")

        vllm.handler = slow
        h = harness_factory([_endpoint("a", vllm.port)])
        started = time.monotonic()
        outcome = await h.run(CHAT, deadline_s=0.3)
        released.set()
        # The 504 came while vLLM still held the answer back: the deadline cut the call.
        assert _only_error(h).status == 504 and outcome.status == 504
        assert time.monotonic() - started >= 0.25

    async def test_a_hung_vllm_is_504_after_the_first_byte_timeout_tried_once_per_endpoint(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        released = asyncio.Event()

        async def hang(request: web.Request) -> web.StreamResponse:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), 60)
            return web.Response(body=_completion(), content_type="application/json")

        vllm.handler = hang
        h = harness_factory([_endpoint("a", vllm.port)], first_byte_timeout_s=0.2)
        outcome = await h.run(CHAT, deadline_s=60.0)
        released.set()
        error = _only_error(h)
        assert error.status == 504 and outcome.status == 504
        # The client reads what happened; the log (`detail`) names the setting.
        assert error.error.error.message == "The model server did not answer in time."
        assert outcome.detail is not None and "first_byte_timeout_s" in outcome.detail
        assert len(vllm.bodies) == 1  # a timeout is not tried again on the same endpoint

    async def test_expired_work_never_reaches_vllm(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = json_handler(_completion())
        h = harness_factory([_endpoint("a", vllm.port)])
        await h.run(CHAT, deadline_s=-1)
        assert _only_error(h).status == 504 and vllm.bodies == []

    async def test_invalid_body_is_400(self, harness_factory: Callable[..., Harness]) -> None:
        h = harness_factory([_endpoint("a", _free_port())])
        route = Route(model="m", base_model="m")
        await h.dispatch.run(
            DispatchRequest(route=route, body=msgspec.Raw(b"[1]")),
            RequestMeta(request_id="r"),
            h.send,
        )
        assert _only_error(h).status == 400


class TestStream:
    async def test_bytes_arrive_exactly_as_vllm_sent_them(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = sse_handler(FRAMES)
        h = harness_factory([_endpoint("a", vllm.port)])
        outcome = await h.run(STREAM)
        head, *chunks, end = h.sent
        assert isinstance(head, ReplyHead) and head.status == 200 and head.route is not None
        assert all(isinstance(c, StreamChunk) for c in chunks)
        assert [c.seq for c in chunks] == list(range(len(chunks)))  # type: ignore[union-attr]
        assert b"".join(c.data for c in chunks) == b"".join(FRAMES)  # type: ignore[union-attr]
        assert isinstance(end, ReplyEnd) and end.error is None and end.chunks == len(chunks)
        assert outcome.stream and outcome.chunks == len(chunks)

    async def test_a_read_larger_than_one_message_is_cut_into_several(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        frames = [FRAMES[0], b"data: " + b"x" * 9000 + b"\n\n", FRAMES[-1]]
        vllm.handler = sse_handler(frames)
        h = harness_factory([_endpoint("a", vllm.port)], max_message_bytes=4096)
        outcome = await h.run(STREAM)
        head, *chunks, end = h.sent
        assert isinstance(head, ReplyHead) and not head.whole
        assert all(len(encode_reply(c)) <= 4096 for c in chunks)
        assert len(chunks) >= 4  # the 9 KB frame alone needs three
        assert [c.seq for c in chunks] == list(range(len(chunks)))  # type: ignore[union-attr]
        assert b"".join(c.data for c in chunks) == b"".join(frames)  # type: ignore[union-attr]
        assert isinstance(end, ReplyEnd) and end.error is None and end.chunks == len(chunks)
        assert outcome.chunks == len(chunks)

    async def test_a_stream_cut_after_the_first_byte_ends_with_an_error_and_no_retry(
        self, vllm: FakeVllm, vllm2: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = sse_handler(FRAMES[:2], cut=True)
        vllm2.handler = sse_handler(FRAMES)
        h = harness_factory([_endpoint("a", vllm.port, 1000), _endpoint("b", vllm2.port, 0.001)])
        await h.run(STREAM)
        assert isinstance(h.sent[0], ReplyHead)
        end = h.sent[-1]
        assert isinstance(end, ReplyEnd) and end.error is not None
        assert end.error.error.code == 502
        assert vllm2.bodies == []

    async def test_a_stream_with_no_first_chunk_is_504_before_any_byte(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        async def head_only(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            with contextlib.suppress(ConnectionError):
                await asyncio.sleep(60)
            return response

        vllm.handler = head_only
        h = harness_factory([_endpoint("a", vllm.port)], first_byte_timeout_s=0.2)
        outcome = await h.run(STREAM, deadline_s=60.0)
        error = _only_error(h)
        assert error.status == 504 and error.error.error.message.endswith("in time.")
        assert outcome.detail is not None and "first_byte_timeout_s" in outcome.detail

    async def test_a_stream_silent_between_chunks_ends_with_an_in_band_504(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        async def stalls(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(FRAMES[0])
            with contextlib.suppress(ConnectionError):
                await asyncio.sleep(60)
            return response

        vllm.handler = stalls
        h = harness_factory([_endpoint("a", vllm.port)], between_chunks_timeout_s=0.2)
        outcome = await h.run(STREAM, deadline_s=60.0)
        head, chunk, end = h.sent
        assert isinstance(head, ReplyHead) and isinstance(chunk, StreamChunk)
        assert isinstance(end, ReplyEnd) and end.error is not None
        assert end.error.error.code == 504
        assert outcome.detail is not None and "between_chunks_timeout_s" in outcome.detail
        assert outcome.chunks == 1

    async def test_in_band_vllm_error_is_passed_through(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        frames = [
            FRAMES[0],
            b'data: {"error":{"message":"Internal server error","type":"InternalServerError","param":null,"code":500}}\n\n',
            b"data: [DONE]\n\n",
        ]
        vllm.handler = sse_handler(frames)
        h = harness_factory([_endpoint("a", vllm.port)])
        await h.run(STREAM)
        chunks = [m for m in h.sent if isinstance(m, StreamChunk)]
        assert b"".join(c.data for c in chunks) == b"".join(frames)
        end = h.sent[-1]
        assert isinstance(end, ReplyEnd) and end.error is None

    async def test_wrong_model_in_the_first_frame_is_caught_before_any_byte(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = sse_handler([FRAMES[0].replace(b"medical-lora", b"llama2-7b"), *FRAMES[1:]])
        h = harness_factory([_endpoint("a", vllm.port)])
        await h.run(STREAM)
        assert _only_error(h).status == 502

    async def test_error_before_the_stream_is_a_plain_error(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = json_handler(
            b'{"error":{"message":"nope","type":"BadRequestError","param":null,"code":400}}',
            status=400,
        )
        h = harness_factory([_endpoint("a", vllm.port)])
        await h.run(STREAM)
        assert _only_error(h).status == 400

    async def test_deadline_mid_stream_ends_in_band(
        self, vllm: FakeVllm, harness_factory: Callable[..., Harness]
    ) -> None:
        vllm.handler = sse_handler(FRAMES, pause=0.4)
        h = harness_factory([_endpoint("a", vllm.port)])
        await h.run(STREAM, deadline_s=0.6)
        end = h.sent[-1]
        assert isinstance(h.sent[0], ReplyHead)
        assert isinstance(end, ReplyEnd) and end.error is not None and end.error.error.code == 504


@pytest.fixture(scope="module")
def mock_vllm() -> Iterator[int]:
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraroute",
            "mock-vllm",
            "--port",
            str(port),
            "--model",
            "llama2-7b",
            "--lora-modules",
            "medical-lora=medical-lora",
            "--echo",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("mock vLLM did not start")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class TestAgainstMockVllm:
    async def test_echo_shows_the_applied_route(
        self, mock_vllm: int, harness_factory: Callable[..., Harness]
    ) -> None:
        h = harness_factory([_endpoint("mock", mock_vllm)])
        route = Route(
            model="medical-lora",
            base_model="llama2-7b",
            system_prompt="You are a medical expert.",
            use_reasoning=False,
            reasoning_type="chat_template_kwargs",
            reasoning_parameter="enable_thinking",
            endpoints=["mock"],
        )
        body = {
            "model": "MoM",
            "messages": [{"role": "user", "content": "What causes high blood pressure?"}],
        }
        await h.dispatch.run(
            DispatchRequest(route=route, body=msgspec.Raw(msgspec.json.encode(body))),
            RequestMeta(request_id="r1", deadline_ms=deadline_after(10)),
            h.send,
        )
        [reply] = h.sent
        assert isinstance(reply, ReplyResponse) and reply.status == 200
        answer = msgspec.json.decode(reply.body)
        assert answer["model"] == "medical-lora"
        seen = msgspec.json.decode(answer["choices"][0]["message"]["content"])
        assert seen["model"] == "medical-lora"
        assert seen["messages"][0] == {"role": "system", "content": "You are a medical expert."}
        assert seen["chat_template_kwargs"] == {"enable_thinking": False}

    async def test_stream_and_dead_endpoint_failover(
        self, mock_vllm: int, harness_factory: Callable[..., Harness]
    ) -> None:
        h = harness_factory(
            [_endpoint("dead", _free_port(), 1000), _endpoint("mock", mock_vllm, 0.001)]
        )
        outcome = await h.run({**STREAM, "max_tokens": 8})
        assert outcome.endpoint == "mock" and outcome.status == 200
        data = b"".join(m.data for m in h.sent if isinstance(m, StreamChunk))
        assert data.endswith(b"data: [DONE]\n\n")
        end = h.sent[-1]
        assert isinstance(end, ReplyEnd) and end.error is None

    async def test_unknown_adapter_is_404(
        self, mock_vllm: int, harness_factory: Callable[..., Harness]
    ) -> None:
        h = harness_factory([_endpoint("mock", mock_vllm)])
        await h.run(CHAT, model="legal-lora")
        error = _only_error(h)
        assert error.status == 404 and error.error.error.type == "NotFoundError"
