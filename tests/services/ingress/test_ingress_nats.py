"""The ingress as a real process over a real nats-server, with scripted responders in the test.

The responder stands in for the classifier and dispatcher: it reads the last user message of
each request and answers as that message asks ("json", "stream", "gap", ...), so every path of
the ingress, the happy ones and the failing ones, runs over the real bus and real HTTP.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from schemas.errors import ErrorKind, error_response
from schemas.wire import (
    ClassifyTexts,
    ClassifyTextsResult,
    ReplyAlive,
    ReplyEnd,
    ReplyError,
    ReplyHead,
    ReplyResponse,
    Route,
    RouteChat,
    StreamChunk,
    TextClassification,
    classify_decoder,
    encode_reply,
    encoder,
)
from services.common.subjects import Subjects
from tests.processes import Service, free_port, write_config

pytestmark = [pytest.mark.integration]

ROUTE = Route(
    model="medical-lora",
    base_model="llama2-7b",
    category="medical",
    confidence=0.93127,
    use_reasoning=True,
)
FRAMES = [
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n',
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n',
    b"data: [DONE]\n\n",
]
UPSTREAM_JSON = (
    b'{"id":"chatcmpl-1","object":"chat.completion","model":"medical-lora","choices":[]}'
)


class Ingress:
    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.subjects = Subjects(prefix)


@pytest.fixture(scope="module")
def ingress(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingress]:
    folder = tmp_path_factory.mktemp("ingress")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    port = free_port()
    config = write_config(
        folder / "config.yaml",
        {
            "nats": {"subject_prefix": prefix},
            "ingress": {
                "port": port,
                "max_body_bytes": 64 * 1024,
                "request_timeout_s": 5.0,
                "ready_timeout_s": 0.3,
            },
            # Lost work is given up after 1 s of silence (well inside the 5 s deadline).
            "liveness": {"heartbeat_s": 0.2, "stall_s": 1.0},
        },
    )
    service = Service(
        ["ingress", "--nats", nats_url, "--config", str(config), "--graceful-timeout", "2"],
        folder / "ingress.log",
        health_url=f"http://127.0.0.1:{port}/health",
    ).start()
    try:
        yield Ingress(f"http://127.0.0.1:{port}", prefix)
    finally:
        service.stop()


def _last_user_text(body: bytes) -> str:
    data = msgspec.json.decode(body)
    return str([m for m in data["messages"] if m["role"] == "user"][-1]["content"])


class Responder:
    """Answers on the classify subject (and pings) the way each request's text asks."""

    def __init__(self) -> None:
        self.seen_headers: list[dict[str, str]] = []
        self.tasks: set[asyncio.Task[None]] = set()

    def replies(self, msg: Msg) -> list[Any]:
        message = classify_decoder.decode(msg.data)
        if isinstance(message, ClassifyTexts):
            return [
                ClassifyTextsResult(
                    results=[
                        TextClassification(
                            category=None if "vague" in t else "medical",
                            confidence=0.3 if "vague" in t else 0.9,
                            label="health",
                            probabilities={"medical": 0.9, "technical": 0.1}
                            if message.return_probabilities
                            else None,
                        )
                        for t in message.texts
                    ],
                    processing_time_ms=1.5,
                )
            ]
        assert isinstance(message, RouteChat)
        text = _last_user_text(bytes(message.body))
        chunks = [StreamChunk(seq=i, data=f) for i, f in enumerate(FRAMES)]
        if text == "json":
            return [ReplyResponse(status=200, body=msgspec.Raw(UPSTREAM_JSON), route=ROUTE)]
        if text == "stream":
            return [ReplyHead(route=ROUTE), *chunks, ReplyEnd(chunks=len(chunks))]
        if text == "gap":
            return [ReplyHead(route=ROUTE), chunks[0], chunks[2]]
        if text.startswith("whole"):  # one JSON answer in pieces, as the dispatcher sends it
            parts = [UPSTREAM_JSON[i : i + 30] for i in range(0, len(UPSTREAM_JSON), 30)]
            pieces = [StreamChunk(seq=i, data=part) for i, part in enumerate(parts)]
            if text == "whole-gap":
                del pieces[1]
            head = ReplyHead(route=ROUTE, whole=True)
            return [head, *pieces, ReplyEnd(chunks=len(parts))]
        if text == "cut":
            error = error_response(ErrorKind.BAD_GATEWAY, "vLLM closed the stream")
            return [ReplyHead(route=ROUTE), chunks[0], ReplyEnd(chunks=1, error=error)]
        if text == "overloaded":
            error = error_response(ErrorKind.OVERLOADED, "classifier queue is full")
            return [ReplyError(status=429, error=error)]
        if text == "upstream-404":
            return [ReplyResponse(status=404, body=msgspec.Raw(b'{"error":{"message":"no"}}'))]
        if text == "lost-at-classifier":  # a classifier that held it, then died
            return [ReplyAlive(held_by="classifier")]
        if text == "lost-at-classifier-once":  # ... and a live one that takes the retry
            first = sum(_text_of(h) == text for h in self.seen_headers) == 1
            if first:
                return [ReplyAlive(held_by="classifier")]
            return [ReplyResponse(status=200, body=msgspec.Raw(UPSTREAM_JSON), route=ROUTE)]
        if text == "lost-at-dispatcher":  # vLLM may have been called when it died
            return [ReplyAlive(held_by="classifier"), ReplyAlive(held_by="dispatcher")]
        if text == "lost-mid-stream":
            return [ReplyHead(route=ROUTE), chunks[0]]
        return []  # "silent": never answers

    async def on_message(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        if "Lr-Ping" in headers:
            await msg.respond(b"")
            return
        message = classify_decoder.decode(msg.data)
        if isinstance(message, RouteChat):
            headers["text"] = _last_user_text(bytes(message.body))
        self.seen_headers.append(headers)
        if isinstance(message, RouteChat) and headers["text"] == "slow-with-keepalives":
            task = asyncio.create_task(self._slow(msg))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            return
        if isinstance(message, RouteChat) and _last_user_text(bytes(message.body)) == "late":
            await asyncio.sleep(0.6)
            await msg._client.publish(
                msg.reply,
                encoder.encode(ReplyResponse(status=200, body=msgspec.Raw(UPSTREAM_JSON))),
            )
            return
        for reply in self.replies(msg):
            await msg._client.publish(msg.reply, encode_reply(reply))

    async def _slow(self, msg: Msg) -> None:
        """A dispatcher whose vLLM takes 2.5 s (over twice the stall bound): keepalives every
        0.3 s, then the answer."""
        for _ in range(8):
            await msg._client.publish(msg.reply, encode_reply(ReplyAlive(held_by="dispatcher")))
            await asyncio.sleep(0.3)
        answer = ReplyResponse(status=200, body=msgspec.Raw(UPSTREAM_JSON), route=ROUTE)
        await msg._client.publish(msg.reply, encode_reply(answer))

    def attempts(self, text: str) -> list[dict[str, str]]:
        return [h for h in self.seen_headers if _text_of(h) == text]


def _text_of(headers: dict[str, str]) -> str | None:
    return headers.get("text")


@pytest.fixture
async def responder(nats_url: str, ingress: Ingress) -> AsyncIterator[Responder]:
    nc = await nats.connect(nats_url)
    responder = Responder()
    await nc.subscribe(ingress.subjects.classify, queue="classifiers", cb=responder.on_message)
    await nc.flush()
    try:
        yield responder
    finally:
        await nc.close()


@pytest.fixture
async def client(ingress: Ingress) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=ingress.url, timeout=10.0) as http:
        yield http


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "MoM", "messages": [{"role": "user", "content": text}], **extra}


# ------------------------------------------------------------------------------ no pipeline


async def test_health_and_models(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert {"MoM", "llama2-7b", "medical-lora"} <= {m["id"] for m in models["data"]}


async def test_no_classifier_is_503_at_once(client: httpx.AsyncClient, ingress: Ingress) -> None:
    # A timeout would be a 504: a 503 comes from the "no responders" status, at once.
    response = await client.post("/v1/chat/completions", json=chat("json"))
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "ServiceUnavailableError"
    assert "classifier" in response.json()["error"]["message"]
    assert ingress.subjects.classify not in response.text, "no subject names for the client"
    ready = await client.get("/ready")
    assert ready.status_code == 503 and ready.json()["classifier"] is False


async def test_bad_requests(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "json_invalid" in response.json()["error"]["message"]
    response = await client.post("/v1/chat/completions", json={"model": "MoM"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "body.messages"
    response = await client.post("/v1/chat/completions", json={"model": "MoM", "messages": []})
    assert response.status_code == 400
    response = await client.post(
        "/v1/chat/completions", content=b"{}", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 400
    response = await client.post("/v1/chat/completions", json=chat("x", model="gpt-4"))
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "The model `gpt-4` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    assert (await client.get("/v1/nothing")).json() == {"detail": "Not Found"}


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    big = chat("x" * (70 * 1024))
    response = await client.post("/v1/chat/completions", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "PayloadTooLargeError"

    async def chunked() -> AsyncIterator[bytes]:  # no content-length: counted while reading
        yield b'{"messages":[{"role":"user","content":"'
        for _ in range(80):
            yield b"y" * 1024
        yield b'"}]}'

    response = await client.post(
        "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


# ------------------------------------------------------------------------------ with responder


async def test_json_answer_with_route_headers(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json=chat("json"),
        headers={
            "x-request-id": "client-id-1",
            "x-vsr-selected-model": "evil",
            "Lr-Deadline-Ms": "1",
        },
    )
    assert response.status_code == 200
    assert response.content == UPSTREAM_JSON
    assert response.headers["x-request-id"] == "client-id-1"
    assert response.headers["x-vsr-selected-model"] == "medical-lora"
    assert response.headers["x-vsr-selected-category"] == "medical"
    assert response.headers["x-vsr-selected-confidence"] == "0.9313"
    assert response.headers["x-vsr-selected-reasoning"] == "on"
    seen = responder.seen_headers[-1]
    # The pipeline runs on the ingress's own id; the client's is only echoed.
    assert seen["Lr-Request-Id"] == response.headers["x-loraroute-request-id"] != "client-id-1"
    assert int(seen["Lr-Deadline-Ms"]) > time.time() * 1000, "client's internal header ignored"


async def test_upstream_status_passes_through(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("upstream-404"))
    assert response.status_code == 404 and response.json()["error"]["message"] == "no"


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_in_pieces_is_joined(
    client: httpx.AsyncClient, responder: Responder, stream: bool
) -> None:
    # A JSON answer too large for one NATS message: joined, and sent as JSON even to a client
    # that asked for a stream (vLLM answered JSON).
    response = await client.post("/v1/chat/completions", json=chat("whole", stream=stream))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == UPSTREAM_JSON
    assert response.headers["x-vsr-selected-model"] == "medical-lora"


async def test_an_answer_with_a_piece_missing_is_502(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("whole-gap"))
    assert response.status_code == 502
    assert response.json()["error"]["message"] == (
        "The answer arrived incomplete from the router's pipeline."
    )


async def test_stream_arrives_verbatim(client: httpx.AsyncClient, responder: Responder) -> None:
    async with client.stream(
        "POST", "/v1/chat/completions", json=chat("stream", stream=True)
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["x-vsr-selected-model"] == "medical-lora"
        body = await response.aread()
    assert body == b"".join(FRAMES)


@pytest.mark.parametrize(
    ("text", "error_type"), [("gap", "BadGatewayError"), ("cut", "BadGatewayError")]
)
async def test_broken_stream_ends_with_error_event_and_done(
    client: httpx.AsyncClient, responder: Responder, text: str, error_type: str
) -> None:
    response = await client.post("/v1/chat/completions", json=chat(text, stream=True))
    assert response.status_code == 200
    events = [e for e in response.content.split(b"\n\n") if e]
    assert events[0] + b"\n\n" == FRAMES[0]
    assert msgspec.json.decode(events[-2][len(b"data: ") :])["error"]["type"] == error_type
    assert events[-1] == b"data: [DONE]"


async def test_deadline_is_504(client: httpx.AsyncClient, responder: Responder) -> None:
    start = time.monotonic()
    response = await client.post(
        "/v1/chat/completions", json=chat("silent"), headers={"x-loraroute-timeout": "0.3"}
    )
    assert response.status_code == 504, response.text
    assert response.json()["error"]["type"] == "TimeoutError"
    assert time.monotonic() - start >= 0.25  # held until the deadline, then answered


async def test_overloaded_is_429_with_retry_after(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("overloaded"))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "RateLimitError"


async def test_client_leaving_a_stream_leaves_the_ingress_healthy(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    for _ in range(3):
        async with client.stream(
            "POST",
            "/v1/chat/completions",
            json=chat("silent", stream=True),
            headers={"x-loraroute-timeout": "2"},
        ) as response:
            await asyncio.sleep(0.05)
            assert response.status_code in {200, 503, 504}
    response = await client.post("/v1/chat/completions", json=chat("json"))
    assert response.status_code == 200


async def test_classify_intent_and_batch(client: httpx.AsyncClient, responder: Responder) -> None:
    response = await client.post(
        "/api/v1/classify/intent",
        json={"text": "my head hurts", "options": {"return_probabilities": True}},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["classification"]["category"] == "medical"
    assert body["recommended_model"] == "medical-lora"
    assert body["probabilities"] == {"medical": 0.9, "technical": 0.1}
    response = await client.post(
        "/api/v1/classify/batch", json={"texts": ["my head hurts", "something vague"]}
    )
    assert response.status_code == 200
    body = response.json()
    assert [r["category"] for r in body["results"]] == ["medical", None]
    assert body["results"][1]["recommended_model"] == "llama2-7b"
    assert body["results"][1]["routing_decision"] == "below_threshold"
    response = await client.post("/api/v1/classify/batch", json={"texts": ["a"] * 101})
    assert response.status_code == 400 and "at most 100" in response.json()["error"]["message"]


async def test_ready_needs_a_classifier_and_a_dispatcher(
    client: httpx.AsyncClient, responder: Responder, nats_url: str, ingress: Ingress
) -> None:
    report = (await client.get("/ready")).json()
    assert report["classifier"] is True and report["dispatcher:llama2-7b"] is False
    nc = await nats.connect(nats_url)
    try:

        async def pong(msg: Msg) -> None:
            await msg.respond(b"")

        await nc.subscribe(ingress.subjects.ping_dispatch("llama2-7b"), cb=pong)
        await nc.flush()
        response = await client.get("/ready")
        assert response.status_code == 200 and response.json()["ready"] is True
    finally:
        await nc.close()


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_metrics_count_answers_and_late_replies(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    assert (await client.post("/v1/chat/completions", json=chat("json"))).status_code == 200
    before = _metric((await client.get("/metrics")).text, "loraroute_ingress_late_replies")
    response = await client.post(
        "/v1/chat/completions", json=chat("late"), headers={"x-loraroute-timeout": "0.2"}
    )
    assert response.status_code == 504
    await asyncio.sleep(0.8)  # the reply arrives after its request ended: dropped, counted
    text = (await client.get("/metrics")).text
    assert 'loraroute_ingress_requests_total{code="200",route="chat"}' in text
    assert 'loraroute_ingress_requests_total{code="504",route="chat"}' in text
    assert _metric(text, "loraroute_ingress_late_replies") == before + 1
    assert _metric(text, "loraroute_ingress_in_flight") == 0


# ------------------------------------------------------------------------------ lost work


async def test_silence_is_lost_work_answered_before_the_deadline(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    # Nothing at all came back: no keepalive, so nobody can say vLLM was not called: no retry.
    before = _metric((await client.get("/metrics")).text, "loraroute_ingress_lost_requests")
    response = await client.post("/v1/chat/completions", json=chat("silent"))
    assert response.status_code == 503  # a deadline would be 504
    error = response.json()["error"]
    assert error["type"] == "ServiceUnavailableError" and "lost" in error["message"]
    assert response.headers["retry-after"] == "1"
    assert len(responder.attempts("silent")) == 1
    after = _metric((await client.get("/metrics")).text, "loraroute_ingress_lost_requests")
    assert after == before + 1


async def test_work_lost_at_a_classifier_is_sent_once_more(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("lost-at-classifier-once"))
    assert response.status_code == 200 and response.content == UPSTREAM_JSON
    first, second = responder.attempts("lost-at-classifier-once")
    assert first["Lr-Request-Id"] == second["Lr-Request-Id"]


async def test_work_lost_at_classifiers_twice_is_an_explicit_503(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("lost-at-classifier"))
    assert response.status_code == 503
    assert "lost" in response.json()["error"]["message"]
    assert len(responder.attempts("lost-at-classifier")) == 2  # one retry, no more


async def test_work_lost_at_a_dispatcher_is_502_never_retried_and_cancelled(
    client: httpx.AsyncClient, responder: Responder, nats_url: str, ingress: Ingress
) -> None:
    nc = await nats.connect(nats_url)
    cancels: list[str] = []

    async def on_cancel(msg: Msg) -> None:
        cancels.append(msg.subject)

    await nc.subscribe(ingress.subjects.cancel_all, cb=on_cancel)
    await nc.flush()
    try:
        response = await client.post("/v1/chat/completions", json=chat("lost-at-dispatcher"))
        await nc.flush()
        await asyncio.sleep(0.2)
    finally:
        await nc.close()
    assert response.status_code == 502
    assert "dispatcher" in response.json()["error"]["message"]
    (attempt,) = responder.attempts("lost-at-dispatcher")
    assert cancels == [ingress.subjects.cancel(attempt["Lr-Request-Id"])]


async def test_keepalives_hold_a_slow_request_past_the_stall_bound(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("slow-with-keepalives"))
    assert response.status_code == 200 and response.content == UPSTREAM_JSON


async def test_a_stream_lost_after_its_head_ends_with_an_in_band_error(
    client: httpx.AsyncClient, responder: Responder
) -> None:
    response = await client.post("/v1/chat/completions", json=chat("lost-mid-stream", stream=True))
    assert response.status_code == 200
    events = [e for e in response.content.split(b"\n\n") if e]
    assert events[0] + b"\n\n" == FRAMES[0]
    error = msgspec.json.decode(events[-2][len(b"data: ") :])["error"]
    assert error["type"] == "BadGatewayError" and "dispatcher" in error["message"]
    assert events[-1] == b"data: [DONE]"
