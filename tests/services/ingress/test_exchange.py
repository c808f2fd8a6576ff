"""`Exchange` over an in-memory bus: each test scripts what the pipeline answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import msgspec
import pytest

from schemas.config import Config
from schemas.errors import ErrorKind, error_response
from schemas.wire import (
    ClassifyTexts,
    ClassifyTextsResult,
    ReplyEnd,
    ReplyError,
    ReplyHead,
    ReplyResponse,
    Route,
    RouteChat,
    StreamChunk,
    TextClassification,
    classify_decoder,
    encoder,
)
from services.common.bus import RequestMeta, deadline_after
from services.ingress.exchange import Exchange, PublishError
from services.ingress.inbox import Inbox
from services.ingress.outcomes import ErrorAnswer, JsonAnswer, StreamAnswer

ROUTE = Route(model="medical-lora", base_model="llama2-7b", category="medical", confidence=0.9)
BODY = b'{"model":"MoM","messages":[{"role":"user","content":"hi"}]}'
META = RequestMeta(
    request_id="rid-1",
    deadline_ms=1_900_000_000_000,
    traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
)

Answer = Callable[[str, bytes, Mapping[str, str]], list[tuple[Mapping[str, str] | None, bytes]]]


class FakeBus:
    """Records publishes and answers each with scripted messages, delivered asynchronously."""

    def __init__(self, inbox: Inbox, answer: Answer | None) -> None:
        self.inbox = inbox
        self.answer = answer
        self.sent: list[tuple[str, bytes, str, dict[str, str]]] = []

    async def publish(
        self, subject: str, payload: bytes, reply: str, headers: Mapping[str, str]
    ) -> None:
        self.sent.append((subject, payload, reply, dict(headers)))
        if self.answer is None:
            return
        replies = self.answer(subject, payload, headers)
        loop = asyncio.get_running_loop()
        for hdrs, data in replies:
            loop.call_soon(self.inbox.deliver, reply, hdrs, data)


def make(config: Config, answer: Answer | None) -> tuple[Exchange, FakeBus]:
    inbox = Inbox("_INBOX.x")
    bus = FakeBus(inbox, answer)
    return Exchange(config, inbox, bus.publish), bus


def reply(*messages: object) -> Answer:
    return lambda subject, payload, headers: [(None, encoder.encode(m)) for m in messages]


NO_RESPONDERS: Answer = lambda subject, payload, headers: [({"Status": "503"}, b"")]  # noqa: E731


async def test_json_answer_carries_body_and_route(config: Config) -> None:
    upstream = b'{"id":"chatcmpl-1","model":"medical-lora"}'
    exchange, bus = make(
        config, reply(ReplyResponse(status=200, body=msgspec.Raw(upstream), route=ROUTE))
    )
    outcome = await exchange.chat(BODY, False, META)
    assert isinstance(outcome, JsonAnswer)
    assert (outcome.status, outcome.body, outcome.route) == (200, upstream, ROUTE)
    subject, payload, reply_to, headers = bus.sent[0]
    assert subject == "loraroute.classify"
    message = classify_decoder.decode(payload)
    assert isinstance(message, RouteChat) and bytes(message.body) == BODY
    assert headers == {
        "Lr-Request-Id": "rid-1",
        "Lr-Deadline-Ms": "1900000000000",
        "traceparent": META.traceparent,
    }
    assert reply_to.startswith("_INBOX.x.")
    assert len(exchange.inbox) == 0


async def test_no_responders_is_503_at_once(config: Config) -> None:
    exchange, _ = make(config, NO_RESPONDERS)
    # A 30 s deadline: a 503 (not a 504) can only come from the "no responders" status.
    outcome = await exchange.chat(
        BODY, False, RequestMeta(request_id="r", deadline_ms=deadline_after(30.0))
    )
    assert isinstance(outcome, ErrorAnswer) and outcome.status == 503
    assert outcome.error.error.type == "ServiceUnavailableError"
    assert "classifier" in outcome.error.error.message


async def test_deadline_is_504(config: Config) -> None:
    exchange, _ = make(config, None)
    outcome = await exchange.chat(
        BODY, False, RequestMeta(request_id="r", deadline_ms=deadline_after(0.05))
    )
    assert isinstance(outcome, ErrorAnswer) and outcome.status == 504
    assert outcome.error.error.type == "TimeoutError"
    assert len(exchange.inbox) == 0


async def test_pipeline_error_passes_through_with_retry_after_on_429(config: Config) -> None:
    overloaded = error_response(ErrorKind.OVERLOADED, "classifier queue full")
    exchange, _ = make(config, reply(ReplyError(status=429, error=overloaded)))
    outcome = await exchange.chat(BODY, False, META)
    assert isinstance(outcome, ErrorAnswer)
    assert (outcome.status, outcome.error, outcome.retry_after) == (429, overloaded, 1)
    gone = error_response(ErrorKind.UNAVAILABLE, "no dispatcher")
    exchange, _ = make(config, reply(ReplyError(status=503, error=gone, route=ROUTE)))
    outcome = await exchange.chat(BODY, False, META)
    assert isinstance(outcome, ErrorAnswer)
    assert (outcome.status, outcome.retry_after, outcome.route) == (503, None, ROUTE)


async def test_stream_relays_and_releases(config: Config) -> None:
    frames = [b'data: {"x":1}\n\n', b"data: [DONE]\n\n"]
    exchange, bus = make(
        config,
        reply(
            ReplyHead(route=ROUTE),
            *(StreamChunk(seq=i, data=f) for i, f in enumerate(frames)),
            ReplyEnd(chunks=2),
        ),
    )
    outcome = await exchange.chat(BODY, True, META)
    assert isinstance(outcome, StreamAnswer) and outcome.route == ROUTE
    assert len(exchange.inbox) == 1, "the mailbox stays open while the stream is relayed"
    assert b"".join([c async for c in outcome.chunks]) == b"".join(frames)
    await outcome.release()
    assert len(exchange.inbox) == 0
    assert [s for s, *_ in bus.sent] == [exchange.subjects.classify], (
        "a finished stream is not cancelled"
    )


async def test_stream_left_early_is_cancelled_upstream(config: Config) -> None:
    exchange, bus = make(
        config,
        reply(ReplyHead(route=ROUTE), StreamChunk(seq=0, data=b'data: {"x":1}\n\n')),
    )
    outcome = await exchange.chat(BODY, True, META)
    assert isinstance(outcome, StreamAnswer)
    assert await anext(outcome.chunks) == b'data: {"x":1}\n\n'
    await outcome.release()  # the client went away before the end marker
    assert len(exchange.inbox) == 0
    subject, payload, _, hdrs = bus.sent[-1]
    assert (subject, payload) == (exchange.subjects.cancel(META.request_id), b"")
    # The deadline travels along: a dispatcher the cancel overtakes keeps it that long.
    assert hdrs == META.to_headers()


async def test_head_for_a_non_stream_request_is_502(config: Config) -> None:
    exchange, _ = make(config, reply(ReplyHead(route=ROUTE)))
    outcome = await exchange.chat(BODY, False, META)
    assert isinstance(outcome, ErrorAnswer) and outcome.status == 502
    assert len(exchange.inbox) == 0


async def test_admission_limit_is_429_with_retry_after(config: Config) -> None:
    limited = msgspec.structs.replace(
        config, ingress=msgspec.structs.replace(config.ingress, max_in_flight=1)
    )
    exchange, bus = make(limited, None)
    first = asyncio.create_task(
        exchange.chat(BODY, False, RequestMeta(request_id="a", deadline_ms=deadline_after(1.0)))
    )
    await asyncio.sleep(0.01)
    outcome = await exchange.chat(BODY, False, META)
    assert isinstance(outcome, ErrorAnswer) and outcome.status == 429
    assert outcome.retry_after == limited.ingress.retry_after_s
    assert len(bus.sent) == 1, "the refused request was never published"
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(exchange.inbox) == 0, "a cancelled request releases its mailbox"


async def test_publish_failure_is_answered(config: Config) -> None:
    inbox = Inbox("_INBOX.x")

    async def refuse(subject: str, payload: bytes, reply: str, headers: Mapping[str, str]) -> None:
        raise PublishError(ErrorKind.TOO_LARGE, "too big for the bus")

    outcome = await Exchange(config, inbox, refuse).chat(BODY, False, META)
    assert isinstance(outcome, ErrorAnswer) and outcome.status == 413
    assert len(inbox) == 0


async def test_classify_round_trip(config: Config) -> None:
    result = ClassifyTextsResult(
        results=[TextClassification(category="medical", confidence=0.8, label="health")]
    )
    exchange, bus = make(config, reply(result))
    got = await exchange.classify(["why does my head hurt"], True, META)
    assert got == result
    message = classify_decoder.decode(bus.sent[0][1])
    assert isinstance(message, ClassifyTexts)
    assert message.texts == ["why does my head hurt"] and message.return_probabilities


async def test_classify_result_count_mismatch_is_502(config: Config) -> None:
    exchange, _ = make(config, reply(ClassifyTextsResult(results=[])))
    got = await exchange.classify(["a"], False, META)
    assert isinstance(got, ErrorAnswer) and got.status == 502


async def test_readiness_pings_each_worker_kind(config: Config) -> None:
    def answer(
        subject: str, payload: bytes, headers: Mapping[str, str]
    ) -> list[tuple[Mapping[str, str] | None, bytes]]:
        assert headers["Lr-Ping"] == "1" and payload == b""
        if subject == "loraroute.classify":
            return [(None, b"")]
        return [({"Status": "503"}, b"")]

    exchange, _ = make(config, answer)
    assert await exchange.readiness() == {"classifier": True, "dispatcher:llama2-7b": False}


async def test_a_lost_bus_is_503_at_once_and_says_so(config: Config) -> None:
    exchange, bus = make(config, None)
    meta = RequestMeta(request_id="r-bus", deadline_ms=deadline_after(30.0))
    waiting = asyncio.ensure_future(exchange.chat(BODY, False, meta))
    while not bus.sent:
        await asyncio.sleep(0)
    exchange.inbox.lose_all()
    outcome = await waiting
    assert isinstance(outcome, ErrorAnswer) and outcome.status == 503
    assert "message bus" in outcome.error.error.message
    assert outcome.retry_after == config.ingress.retry_after_s
    # A cancel follows, so a worker that still holds the request drops it once the bus is back.
    assert bus.sent[-1][0] == "loraroute.cancel.r-bus"


async def test_no_responders_right_after_a_bus_loss_blames_the_bus(config: Config) -> None:
    exchange, _ = make(config, NO_RESPONDERS)
    exchange.inbox.lose_all()
    exchange.inbox.restored()
    outcome = await exchange.chat(BODY, False, META)
    assert isinstance(outcome, ErrorAnswer) and outcome.status == 503
    assert "No classifier" not in outcome.error.error.message
    assert "message bus" in outcome.error.error.message
