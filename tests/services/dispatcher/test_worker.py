"""The dispatcher over a real nats-server: replies reach the ingress inbox, failures are answered."""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.config import Config, decode_config
from schemas.wire import (
    DispatchRequest,
    ReplyAlive,
    ReplyEnd,
    ReplyError,
    ReplyHead,
    ReplyResponse,
    Route,
    StreamChunk,
    decode_reply,
    encoder,
    reply_decoder,
)
from services.common import bus
from services.dispatcher.app import DispatcherWorker

pytestmark = pytest.mark.integration

COMPLETION = (
    b'{"id":"x","object":"chat.completion","created":1,"model":"medical-lora","choices":[]}'
)
FRAMES = [
    b'data: {"id":"x","object":"chat.completion.chunk","created":1,"model":"medical-lora","choices":[]}\n\n',
    b"data: [DONE]\n\n",
]


@pytest.fixture
def vllm_calls() -> list[dict[str, Any]]:
    """The bodies the fake vLLM received, in order."""
    return []


@pytest.fixture
async def vllm_port(vllm_calls: list[dict[str, Any]]) -> AsyncIterator[int]:
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        vllm_calls.append(body)
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for frame in FRAMES:
                await response.write(frame)
            await response.write_eof()
            return response
        return web.Response(body=COMPLETION, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        yield server.port
    finally:
        await server.close()


@pytest.fixture
def config(repo_root: Path, vllm_port: int) -> Config:
    data: dict[str, Any] = copy.deepcopy(
        yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    )
    data["nats"] = {"subject_prefix": f"t{uuid.uuid4().hex[:10]}"}
    data["vllm_endpoints"][0]["port"] = vllm_port
    return decode_config(data)


@pytest.fixture
async def worker(config: Config, nats_url: str) -> AsyncIterator[DispatcherWorker]:
    w = DispatcherWorker(config, nats_url, name="dispatcher-test")
    await w.start()
    try:
        yield w
    finally:
        await w.stop(5)


async def _collect(nc: Client, inbox: str) -> asyncio.Queue[Msg]:
    queue: asyncio.Queue[Msg] = asyncio.Queue()
    await nc.subscribe(inbox, cb=queue.put)
    await nc.flush()
    return queue


def _request(stream: bool = False) -> bytes:
    body = {
        "model": "medical-lora",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }
    route = Route(
        model="medical-lora",
        base_model="llama2-7b",
        reason="passthrough",
        endpoints=["vllm-primary"],
    )
    return encoder.encode(DispatchRequest(route=route, body=msgspec.Raw(msgspec.json.encode(body))))


async def test_passthrough_answer_on_the_nats_reply(
    worker: DispatcherWorker, client: Client
) -> None:
    inbox = f"_INBOX.{uuid.uuid4().hex}.t1"
    replies = await _collect(client, inbox)
    meta = bus.RequestMeta(request_id="r1", deadline_ms=bus.deadline_after(5))
    await client.publish(
        worker.dispatch_subjects[0], _request(), reply=inbox, headers=meta.to_headers()
    )
    reply = reply_decoder.decode((await asyncio.wait_for(replies.get(), 5)).data)
    assert isinstance(reply, ReplyResponse) and bytes(reply.body) == COMPLETION


async def test_stream_goes_to_the_reply_to_header(worker: DispatcherWorker, client: Client) -> None:
    inbox = f"_INBOX.{uuid.uuid4().hex}.t2"
    replies = await _collect(client, inbox)
    meta = bus.RequestMeta(request_id="r2", deadline_ms=bus.deadline_after(5), reply_to=inbox)
    await client.publish(
        worker.dispatch_subjects[0],
        _request(stream=True),
        reply="some.bounce.subject",
        headers=meta.to_headers(),
    )
    kinds = []
    while True:
        msg = await asyncio.wait_for(replies.get(), 5)
        message = decode_reply(msg.data)
        kinds.append(type(message))
        if isinstance(message, StreamChunk):
            # One header line, then vLLM's bytes as they came (no base64 inside JSON).
            head = f'{{"type":"chunk","v":1,"seq":{message.seq}}}\n'.encode()
            assert msg.data == head + message.data and message.data.startswith(b"data: ")
        if isinstance(message, ReplyEnd):
            break
    assert kinds[0] is ReplyHead and kinds[-1] is ReplyEnd
    assert set(kinds[1:-1]) == {StreamChunk}


async def test_bad_message_is_400(worker: DispatcherWorker, client: Client) -> None:
    inbox = f"_INBOX.{uuid.uuid4().hex}.t3"
    replies = await _collect(client, inbox)
    await client.publish(worker.dispatch_subjects[0], b"{}", reply=inbox, headers={"a": "b"})
    reply = reply_decoder.decode((await asyncio.wait_for(replies.get(), 5)).data)
    assert isinstance(reply, ReplyError) and reply.status == 400
    # msgspec's text about the pipeline's own message stays in the log.
    assert reply.error.error.message == "The dispatcher could not read the request."


async def test_ping_and_no_responders(worker: DispatcherWorker, client: Client) -> None:
    assert await bus.ping(client, worker.dispatch_subjects[0])
    assert not await bus.ping(client, worker.subjects.dispatch("no-such-model"), timeout_s=0.5)
    # The probe subject the ingress's /ready uses, which needs no right to dispatch.
    for base in worker.config.model_config:
        assert await bus.ping(client, worker.subjects.ping_dispatch(base))
    assert not await bus.ping(client, worker.subjects.ping_dispatch("no-such-model"), 0.5)


async def test_stop_finishes_requests_in_flight(
    config: Config, nats_url: str, client: Client
) -> None:
    w = DispatcherWorker(config, nats_url, name="drain")
    await w.start()
    inbox = f"_INBOX.{uuid.uuid4().hex}.t4"
    replies = await _collect(client, inbox)
    for _ in range(3):
        await client.publish(
            w.dispatch_subjects[0], _request(), reply=inbox, headers={"Lr-Request-Id": "x"}
        )
    await client.flush()
    await asyncio.sleep(0.01)
    await w.stop(5)
    got = [reply_decoder.decode((await asyncio.wait_for(replies.get(), 5)).data) for _ in range(3)]
    assert all(isinstance(r, ReplyResponse) for r in got)


async def test_cancel_stops_the_call_to_vllm(config: Config, nats_url: str, client: Client) -> None:
    disconnected = asyncio.Event()
    frames_sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal frames_sent
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            while True:
                await response.write(FRAMES[0])
                frames_sent += 1
                await asyncio.sleep(0.02)
        except ConnectionError:
            pass
        finally:  # the handler only ends when the client went away (or is cancelled for it)
            disconnected.set()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", endless)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    data = msgspec.to_builtins(config)
    data["vllm_endpoints"][0]["port"] = server.port
    w = DispatcherWorker(decode_config(data), nats_url, name="cancel-test")
    await w.start()
    try:
        inbox = f"_INBOX.{uuid.uuid4().hex}.t5"
        replies = await _collect(client, inbox)
        meta = bus.RequestMeta(request_id="client.gone 1", deadline_ms=bus.deadline_after(30))
        await client.publish(
            w.dispatch_subjects[0], _request(stream=True), reply=inbox, headers=meta.to_headers()
        )
        first = reply_decoder.decode((await asyncio.wait_for(replies.get(), 5)).data)
        assert isinstance(first, ReplyHead)
        await client.publish(w.subjects.cancel("client.gone 1"), b"")
        await asyncio.wait_for(disconnected.wait(), 5)
        assert w.handlers is not None
        await asyncio.sleep(0.05)
        assert not w.handlers.tasks
        # The requester is always answered: after the chunks, a 499 (never silence).
        last = first
        while not isinstance(last, ReplyError):
            last = decode_reply((await asyncio.wait_for(replies.get(), 5)).data)
        assert last.status == 499 and last.error.error.type == "ClientClosedRequest"
    finally:
        await w.stop(5)
        await server.close()


async def test_cancel_that_overtakes_its_request_stops_it_before_vllm(
    worker: DispatcherWorker, client: Client, vllm_calls: list[dict[str, Any]]
) -> None:
    # The client left while its request waited in the classifier's queue: the cancel reaches
    # the dispatcher first. The request must not reach vLLM, and its answer says why.
    inbox = f"_INBOX.{uuid.uuid4().hex}.t6"
    replies = await _collect(client, inbox)
    meta = bus.RequestMeta(request_id="early 1", deadline_ms=bus.deadline_after(30))
    await client.publish(worker.subjects.cancel("early 1"), b"", headers=meta.to_headers())
    await client.flush()
    await asyncio.sleep(0.05)  # the cancel is handled before the request arrives
    await client.publish(
        worker.dispatch_subjects[0], _request(), reply=inbox, headers=meta.to_headers()
    )
    reply = reply_decoder.decode((await asyncio.wait_for(replies.get(), 5)).data)
    assert isinstance(reply, ReplyError) and reply.status == 499
    assert reply.error.error.type == "ClientClosedRequest"
    assert vllm_calls == []
    # Remembered once: a later request that reuses the id runs.
    await client.publish(
        worker.dispatch_subjects[0], _request(), reply=inbox, headers=meta.to_headers()
    )
    reply = reply_decoder.decode((await asyncio.wait_for(replies.get(), 5)).data)
    assert isinstance(reply, ReplyResponse) and len(vllm_calls) == 1


async def test_remembered_cancels_expire_and_are_bounded(
    worker: DispatcherWorker,
    client: Client,
    vllm_calls: list[dict[str, Any]],
) -> None:
    assert worker.handlers is not None
    worker.handlers.cancels.limit = 3
    inbox = f"_INBOX.{uuid.uuid4().hex}.t7"
    replies = await _collect(client, inbox)
    # A cancel whose deadline has passed no longer counts.
    past = bus.RequestMeta(request_id="late", deadline_ms=bus.deadline_after(-1))
    await client.publish(worker.subjects.cancel("late"), b"", headers=past.to_headers())
    # Four more than fit: the oldest ("c0") is forgotten.
    for i in range(4):
        meta = bus.RequestMeta(request_id=f"c{i}", deadline_ms=bus.deadline_after(30))
        await client.publish(worker.subjects.cancel(f"c{i}"), b"", headers=meta.to_headers())
    await client.flush()
    await asyncio.sleep(0.05)
    for rid in ("late", "c0", "c3"):
        meta = bus.RequestMeta(request_id=rid, deadline_ms=bus.deadline_after(30))
        await client.publish(
            worker.dispatch_subjects[0], _request(), reply=inbox, headers=meta.to_headers()
        )
        reply = reply_decoder.decode((await asyncio.wait_for(replies.get(), 5)).data)
        assert reply.status == (499 if rid == "c3" else 200), rid
    assert len(vllm_calls) == 2


async def test_a_slow_vllm_sends_keepalives_then_the_answer(
    config: Config, nats_url: str, client: Client
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(1.0)
        return web.Response(body=COMPLETION, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    data = msgspec.to_builtins(config)
    data["vllm_endpoints"][0]["port"] = server.port
    data["liveness"] = {"heartbeat_s": 0.1, "stall_s": 0.5}
    w = DispatcherWorker(decode_config(data), nats_url, name="keepalive-test")
    await w.start()
    try:
        inbox = f"_INBOX.{uuid.uuid4().hex}.t9"
        replies = await _collect(client, inbox)
        meta = bus.RequestMeta(request_id="slow 1", deadline_ms=bus.deadline_after(30))
        await client.publish(
            w.dispatch_subjects[0], _request(), reply=inbox, headers=meta.to_headers()
        )
        got = [decode_reply((await asyncio.wait_for(replies.get(), 5)).data)]
        while not isinstance(got[-1], ReplyResponse):
            got.append(decode_reply((await asyncio.wait_for(replies.get(), 5)).data))
        alive = got[:-1]
        # vLLM kept it silent for 1 s: keepalives at least every two heartbeats.
        assert len(alive) >= 4 and all(a == ReplyAlive(held_by="dispatcher") for a in alive)
        assert w.keepalives is not None and len(w.keepalives) == 0
    finally:
        await w.stop(5)
        await server.close()
