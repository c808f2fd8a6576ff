"""`services.classifier.intake`: from a message to what the handler sends, without a broker."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from schemas.errors import ErrorKind
from schemas.wire import ClassifyTexts, ClassifyTextsResult, Route, RouteChat, encoder
from services.classifier.admission import OVERLOADED, Refusal
from services.classifier.batch_queue import Batch, Entry
from services.classifier.batcher import Batcher
from services.classifier.intake import BatchResult, Intake
from services.classifier.metrics import WorkerMetrics
from services.classifier.route import Router
from services.classifier.route_chat import Forward
from services.classifier.work import ChatWork, Item, TextsWork
from services.common.subjects import model_token
from tests.services.classifier.fakes import keyword_tokenizer
from tests.services.classifier.plain import body, classification, meta, unstarted_batcher

REJECTED = "loraroute_classifier_rejected_total"
DECISIONS = "loraroute_classifier_decisions_total"


@pytest.fixture
async def batcher() -> AsyncIterator[Batcher[Item, Any, Any]]:
    b = unstarted_batcher(max_queue=4)
    yield b
    await b.close()


@pytest.fixture
def intake(
    router: Router, worker_metrics: WorkerMetrics, batcher: Batcher[Item, Any, Any]
) -> Intake:
    return Intake(
        router=router, tokenizer=keyword_tokenizer(), batcher=batcher, metrics=worker_metrics
    )


def _chat(text: str | None, **extra: Any) -> bytes:
    return encoder.encode(RouteChat(body=body(text, **extra)))


def _queued(intake: Intake) -> list[Entry[Item]]:
    """Everything in the queue, taken out in order (as a batch would take it)."""
    return intake.batcher.queue.withdraw(lambda _item: True)


def _sample(intake: Intake, name: str, labels: dict[str, str] | None = None) -> float | None:
    return intake.metrics.registry.get_sample_value(name, labels or {})


def test_take_answers_refusals_and_passthroughs_at_once(intake: Intake) -> None:
    refusal = intake.take(b"{", meta(), "inbox.1", 0.0)
    assert isinstance(refusal, Refusal) and refusal.reason == "invalid"
    forward = intake.take(_chat("code", model="legal-lora"), meta(), "inbox.1", 0.0)
    assert isinstance(forward, Forward) and forward.route.reason == "passthrough"
    answer = intake.take(encoder.encode(ClassifyTexts(texts=[""])), meta(), "inbox.1", 0.0)
    assert isinstance(answer, ClassifyTextsResult) and len(answer.results) == 1
    assert len(intake.batcher.queue) == 0


def test_take_queues_what_needs_the_model(intake: Intake) -> None:
    assert intake.take(_chat("code"), meta("c"), "inbox.c", 0.0) is None
    texts = encoder.encode(ClassifyTexts(texts=["blood code", "", "law"]))
    assert intake.take(texts, meta("t"), "inbox.t", 0.0) is None
    entries = _queued(intake)
    assert [type(e.payload.work) for e in entries] == [ChatWork, TextsWork, TextsWork]
    assert [e.payload.work.reply for e in entries] == ["inbox.c", "inbox.t", "inbox.t"]
    # One row of tokens per text, each padded to its own length; the empty text needs none.
    assert [e.payload.index for e in entries] == [0, 0, 2]
    assert [e.payload.encoded.input_ids.shape for e in entries] == [(1, 1), (1, 2), (1, 1)]
    assert [e.tokens for e in entries] == [1, 2, 1]
    assert _sample(intake, "loraroute_classifier_queue_depth", {"lane": "interactive"}) == 3.0
    assert _sample(intake, "loraroute_classifier_queue_depth", {"lane": "job"}) == 0.0
    tokenized = {"stage": "tokenize"}
    assert _sample(intake, "loraroute_classifier_stage_seconds_count", tokenized) == 2.0


def test_take_counts_texts_cut_to_the_window(intake: Intake) -> None:
    long = "law " * 10_000
    assert intake.take(_chat(long), meta("c"), "inbox.c", 0.0) is None
    texts = encoder.encode(ClassifyTexts(texts=[long, "code", long]))
    assert intake.take(texts, meta("t"), "inbox.t", 0.0) is None
    chars = {"kind": "chars"}
    assert _sample(intake, "loraroute_classifier_truncations_total", chars) == 3.0
    chat = _queued(intake)[0]
    assert isinstance(chat.payload.work, ChatWork) and chat.payload.work.truncated_chars


def test_take_refuses_a_request_the_queue_cannot_hold_whole(intake: Intake) -> None:
    texts = encoder.encode(ClassifyTexts(texts=["code", "blood", "law"]))
    assert intake.take(texts, meta(), "inbox.1", 0.0) is None
    assert intake.take(texts, meta(), "inbox.2", 0.0) is OVERLOADED
    assert len(intake.batcher.queue) == 3


def _batch(intake: Intake, *payloads: bytes) -> Batch[Item]:
    for i, payload in enumerate(payloads):
        assert intake.take(payload, meta(f"r{i}"), f"inbox.{i}", 0.0) is None
    return Batch(entries=_queued(intake))


def test_complete_forwards_chats_and_answers_finished_calls(intake: Intake) -> None:
    batch = _batch(intake, _chat("blood"), encoder.encode(ClassifyTexts(texts=["code", "maybe"])))
    result: BatchResult = (
        [
            classification("medical", 0.9),
            classification("technical", 0.9),
            classification("technical", 0.4, truncated=True),
        ],
        0.01,
    )
    answers = intake.complete(batch, result, None)
    assert len(answers) == 2
    (chat_work, forward), (texts_work, answer) = answers
    assert isinstance(chat_work, ChatWork) and isinstance(forward, Forward)
    assert (forward.route.model, forward.route.reason) == ("medical-lora", "classified")
    assert isinstance(texts_work, TextsWork) and isinstance(answer, ClassifyTextsResult)
    assert [r.category for r in answer.results] == ["technical", None]
    assert _sample(intake, "loraroute_classifier_batch_size_count", {"lane": "interactive"}) == 1.0
    assert _sample(intake, "loraroute_classifier_truncations_total", {"kind": "tokens"}) == 1.0


def test_a_failed_batch_answers_each_request_once(intake: Intake) -> None:
    batch = _batch(intake, _chat("blood"), encoder.encode(ClassifyTexts(texts=["code", "law"])))
    answers = intake.complete(batch, None, RuntimeError("boom"))
    assert [type(work) for work, _ in answers] == [ChatWork, TextsWork]
    for _work, refusal in answers:
        assert isinstance(refusal, Refusal)
        assert (refusal.kind, refusal.reason) == (ErrorKind.INTERNAL, "engine")
        assert refusal.message == "Classification failed."  # `boom` stays in the log


def test_a_request_whose_answer_cannot_be_built_is_failed_alone(
    intake: Intake, monkeypatch: pytest.MonkeyPatch
) -> None:
    decide = intake.router.decide

    def fragile(category: str | None, confidence: float, **options: Any) -> Route:
        if category == "medical":
            raise RuntimeError("no route")
        return decide(category, confidence, **options)

    monkeypatch.setattr(intake.router, "decide", fragile)
    batch = _batch(intake, _chat("blood"), _chat("code"))
    result = ([classification("medical", 0.9), classification("technical", 0.9)], 0.01)
    (first, failed), (_second, forward) = intake.complete(batch, result, None)
    assert first.meta.request_id == "r0"
    assert isinstance(failed, Refusal) and failed.kind is ErrorKind.INTERNAL
    assert failed.message == "Internal error in the classifier."  # the error is in the log
    assert isinstance(forward, Forward) and forward.route.model == "technical-lora"


def test_expired_requests_get_one_504_each(intake: Intake) -> None:
    batch = _batch(intake, _chat("blood"), encoder.encode(ClassifyTexts(texts=["code", "law"])))
    answers = intake.expire(batch.entries)
    assert [type(work) for work, _ in answers] == [ChatWork, TextsWork]
    assert {refusal for _, refusal in answers} == {
        Refusal(ErrorKind.TIMEOUT, "deadline passed while queued for classification", "expired")
    }


def test_cancel_drops_only_that_chat_request(intake: Intake) -> None:
    for rid in ("keep 1", "gone 1"):
        assert intake.take(_chat("code"), meta(rid), f"inbox.{rid}", 0.0) is None
    texts = encoder.encode(ClassifyTexts(texts=["law"]))
    assert intake.take(texts, meta("gone 1"), "inbox.t", 0.0) is None  # an API call: kept
    intake.cancel(model_token("gone 1"))
    kept = [(type(e.payload.work), e.payload.work.meta.request_id) for e in _queued(intake)]
    assert kept == [(ChatWork, "keep 1"), (TextsWork, "gone 1")]
    assert _sample(intake, REJECTED, {"kind": "cancelled"}) == 1.0
    intake.cancel(model_token("nobody"))
    assert _sample(intake, REJECTED, {"kind": "cancelled"}) == 1.0


def test_job_lane_requests_queue_apart_and_report_their_lane(intake: Intake) -> None:
    # The fixture's job lane holds two entries; a third job request is refused at once.
    assert intake.take(_chat("code"), meta("j0"), "inbox.j0", 0.0, "job") is None
    assert intake.take(_chat("law"), meta("j1"), "inbox.j1", 0.0, "job") is None
    assert intake.take(_chat("blood"), meta("j2"), "inbox.j2", 0.0, "job") is OVERLOADED
    assert intake.take(_chat("blood"), meta("a"), "inbox.a", 0.0) is None
    assert _sample(intake, "loraroute_classifier_queue_depth", {"lane": "job"}) == 2.0
    assert _sample(intake, "loraroute_classifier_queue_depth", {"lane": "interactive"}) == 1.0
    batch = intake.batcher.queue.next_batch(time.monotonic(), force=True)
    assert batch.lane == "interactive" and len(batch.entries) == 1
    batch = intake.batcher.queue.next_batch(time.monotonic(), force=True)
    assert batch.lane == "job" and len(batch.entries) == 2
    result: BatchResult = ([classification("technical", 0.9)] * 2, 0.01)
    answers = intake.complete(batch, result, None)
    assert [type(outcome) for _work, outcome in answers] == [Forward, Forward]
    assert _sample(intake, "loraroute_classifier_batch_size_sum", {"lane": "job"}) == 2.0
    assert _sample(intake, "loraroute_classifier_queue_depth", {"lane": "job"}) == 0.0


def _conversation(*turns: str) -> bytes:
    messages = []
    for turn in turns:
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": "ok"}]
    return _chat(None, messages=messages[:-1])


def test_a_conversation_queues_its_turns_whole_and_is_answered_once(intake: Intake) -> None:
    # Four user turns: the last and two earlier ones are classified.
    intake.router = Router(
        msgspec.structs.replace(
            intake.router.config,
            routing=msgspec.structs.replace(intake.router.config.routing, history_user_turns=2),
        )
    )
    assert (
        intake.take(_conversation("hello", "law", "blood", "code"), meta(), "inbox.1", 0.0) is None
    )
    entries = _queued(intake)
    assert [e.payload.index for e in entries] == [0, 1, 2]
    work = entries[0].payload.work
    assert isinstance(work, ChatWork) and work.weights == [1.0, 0.5, 0.25]
    parts = [classification("technical", 0.9), classification("medical", 0.9)]
    # Nothing is sent until the last turn is in.
    first = intake.complete(Batch(entries=entries[:2]), (parts, 0.01), None)
    assert first == []
    ((answered, forward),) = intake.complete(
        Batch(entries=entries[2:]), ([classification("legal", 0.9)], 0.01), None
    )
    assert answered is work and isinstance(forward, Forward)
    # One decision for the conversation (the turns themselves are not counted).
    assert _sample(intake, DECISIONS, {"path": "chat", "outcome": "classified"}) == 1.0
    assert _sample(intake, DECISIONS, {"path": "chat", "outcome": "below_threshold"}) is None


def test_a_conversation_is_failed_expired_and_cancelled_whole(intake: Intake) -> None:
    assert intake.take(_conversation("law", "code"), meta("a"), "inbox.a", 0.0) is None
    entries = _queued(intake)
    failed = intake.complete(Batch(entries=entries), None, RuntimeError("boom"))
    assert len(failed) == 1 and isinstance(failed[0][1], Refusal)
    assert intake.take(_conversation("law", "code"), meta("b"), "inbox.b", 0.0) is None
    assert len(intake.expire(_queued(intake))) == 1
    assert intake.take(_conversation("law", "code"), meta("c"), "inbox.c", 0.0) is None
    intake.cancel(model_token("c"))
    assert _queued(intake) == []
    assert _sample(intake, REJECTED, {"kind": "cancelled"}) == 1.0
