"""Classifier and dispatcher together over a real nats-server, with a loopback vLLM stand-in:
the dispatcher answers the caller's inbox directly, through the classifier's forward."""

from __future__ import annotations

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

from schemas.config import Config, decode_config
from schemas.wire import (
    ReplyEnd,
    ReplyError,
    ReplyHead,
    ReplyResponse,
    StreamChunk,
    decode_reply,
    reply_decoder,
)
from services.classifier.app import ClassifierWorker
from services.classifier.engine import Engine
from services.classifier.labels import LabelMap
from services.dispatcher.app import DispatcherWorker
from tests.services.classifier.fakes import LABELS, Caller, KeywordBackend, chat, keyword_tokenizer

pytestmark = pytest.mark.integration


@pytest.fixture
async def seen() -> AsyncIterator[tuple[list[dict[str, Any]], int]]:
    bodies: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bodies.append(body)
        model = body["model"].encode()
        if body.get("stream"):
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b'data: {"model":"' + model + b'","choices":[]}\n\n')
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            return response
        return web.Response(
            body=b'{"model":"' + model + b'","choices":[]}', content_type="application/json"
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        assert server.port is not None
        yield bodies, server.port
    finally:
        await server.close()


@pytest.fixture
async def chain(
    repo_root: Path, nats_url: str, seen: tuple[list[dict[str, Any]], int]
) -> AsyncIterator[tuple[ClassifierWorker, DispatcherWorker]]:
    data: dict[str, Any] = copy.deepcopy(
        yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    )
    data["nats"] = {"subject_prefix": f"t{uuid.uuid4().hex[:10]}"}
    data["vllm_endpoints"][0]["port"] = seen[1]
    data["model_config"]["llama2-7b"]["reasoning_family"] = "qwen3"
    config: Config = decode_config(data)
    engine = Engine(
        keyword_tokenizer(),
        KeywordBackend(),
        LabelMap.build(LABELS, {c.name: None for c in config.categories}),
    )
    classifier = ClassifierWorker(config, engine, nats_url, name="chain-classifier")
    dispatcher = DispatcherWorker(config, nats_url, name="chain-dispatcher")
    await classifier.start()
    await dispatcher.start()
    try:
        yield classifier, dispatcher
    finally:
        await classifier.stop(5)
        await dispatcher.stop(5)


async def test_routed_request_is_answered_by_the_dispatcher(
    chain: tuple[ClassifierWorker, DispatcherWorker],
    client: Client,
    seen: tuple[list[dict[str, Any]], int],
) -> None:
    caller = Caller(client, chain[0].subjects)
    await caller.start()
    reply = reply_decoder.decode((await caller.reply(await caller.send(chat("blood test")))).data)
    assert isinstance(reply, ReplyResponse) and reply.status == 200
    assert reply.route is not None and reply.route.category == "medical"
    assert msgspec.json.decode(reply.body)["model"] == "medical-lora"
    body = seen[0][0]
    assert body["model"] == "medical-lora"
    assert body["messages"][0] == {"role": "system", "content": "You are a medical expert."}
    assert body["chat_template_kwargs"] == {"enable_thinking": True}


async def test_stream_through_both(
    chain: tuple[ClassifierWorker, DispatcherWorker], client: Client
) -> None:
    caller = Caller(client, chain[0].subjects)
    await caller.start()
    reply_subject = await caller.send(chat("code please", stream=True))
    kinds: list[type] = []
    while not kinds or kinds[-1] is not ReplyEnd:
        msg = await caller.reply(reply_subject)
        kinds.append(type(decode_reply(msg.data)))
    assert kinds[0] is ReplyHead and set(kinds[1:-1]) == {StreamChunk}


async def test_stopped_dispatcher_is_503_at_once(
    chain: tuple[ClassifierWorker, DispatcherWorker], client: Client
) -> None:
    await chain[1].stop(5)
    caller = Caller(client, chain[0].subjects)
    await caller.start()
    # A deadline far beyond the wait: an answer can only come from the "no responders" status,
    # never from a timeout (which would be a 504).
    reply_subject = await caller.send(chat("law"), deadline_s=600)
    reply = reply_decoder.decode((await caller.reply(reply_subject, timeout=60)).data)
    assert isinstance(reply, ReplyError) and reply.status == 503
    assert reply.error.error.message.startswith("No dispatcher is available for ")
    assert "dispatch." not in reply.error.error.message  # no subject names
