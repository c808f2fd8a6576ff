"""The classifier worker over a real nats-server: routing, forwarding, and every failure answered.

`TestWithFakeBackend` drives the worker with a small keyword backend behind the real `Backend`
seam (deterministic, and able to block or fail on demand); `TestWithBuiltModel` runs the built
default model (`models/loraroute-domain`) on the guide's example queries.
"""

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
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.config import Config, decode_config
from schemas.wire import (
    ClassifyTexts,
    ClassifyTextsResult,
    DispatchRequest,
    ReplyAlive,
    ReplyError,
    RouteChat,
    dispatch_decoder,
    encoder,
    reply_decoder,
)
from services.classifier.app import ClassifierWorker, load_engine
from services.classifier.engine import Engine
from services.classifier.labels import LabelMap
from services.common import bus
from services.common.subjects import HEADER_REPLY_TO, HEADER_REQUEST_ID, Subjects
from tests.services.classifier.fakes import (
    LABELS,
    Caller,
    KeywordBackend,
    chat,
    keyword_tokenizer,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def config(repo_root: Path) -> Config:
    data: dict[str, Any] = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    data = copy.deepcopy(data)
    data["nats"] = {"subject_prefix": f"t{uuid.uuid4().hex[:10]}"}
    data["batching"] = {"max_batch_size": 8, "max_wait_ms": 2, "max_queue": 4, "max_job_queue": 16}
    return decode_config(data)


@pytest.fixture
def backend() -> KeywordBackend:
    return KeywordBackend()


@pytest.fixture
async def worker(
    config: Config, backend: KeywordBackend, nats_url: str
) -> AsyncIterator[ClassifierWorker]:
    engine = Engine(
        keyword_tokenizer(),
        backend,
        LabelMap.build(LABELS, {c.name: c.mmlu_categories for c in config.categories}),
    )
    w = ClassifierWorker(config, engine, nats_url, name="worker-test")
    await w.start()
    backend.batches.clear()  # the reading of topic-free texts at start
    try:
        yield w
    finally:
        backend.gate.set()
        await w.stop(5)


class Dispatcher:
    """Captures what reaches a dispatch subject."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[DispatchRequest, Msg]] = asyncio.Queue()

    async def on_msg(self, msg: Msg) -> None:
        self.got.put_nowait((dispatch_decoder.decode(msg.data), msg))

    async def next(self) -> tuple[DispatchRequest, Msg]:
        return await asyncio.wait_for(self.got.get(), 5)


async def _setup(
    worker: ClassifierWorker, client: Client, with_dispatcher: bool = True
) -> tuple[Caller, Dispatcher]:
    caller = Caller(client, worker.subjects)
    await caller.start()
    dispatcher = Dispatcher()
    if with_dispatcher:
        await client.subscribe(worker.subjects.dispatch("llama2-7b"), cb=dispatcher.on_msg)
        await client.flush()
    return caller, dispatcher


def _error(msg: Msg) -> ReplyError:
    reply = reply_decoder.decode(msg.data)
    assert isinstance(reply, ReplyError), reply
    return reply


class TestWithFakeBackend:
    async def test_routes_to_the_adapter_keeping_body_headers_and_reply(
        self, worker: ClassifierWorker, client: Client
    ) -> None:
        caller, dispatcher = await _setup(worker, client)
        payload = chat("how do I write code", temperature=0.3, custom_field={"kept": True})
        reply = await caller.send(payload, request_id="req-1")
        request, msg = await dispatcher.next()
        route = request.route
        assert route.model == "technical-lora" and route.category == "technical"
        assert route.reason == "classified" and route.confidence == pytest.approx(0.9)
        assert route.system_prompt == "You are an expert software engineer."
        body = msgspec.json.decode(request.body)
        assert body["temperature"] == 0.3 and body["custom_field"] == {"kept": True}
        assert body["model"] == "MoM"  # the dispatcher rewrites it, not the classifier
        assert msg.headers is not None
        assert msg.headers[HEADER_REQUEST_ID] == "req-1"
        assert msg.headers[HEADER_REPLY_TO] == reply
        meta = bus.RequestMeta.from_headers(msg.headers)
        assert bus.reply_subject(msg, meta) == reply
        assert msg.reply.startswith(worker.subjects.bounce(worker.name))

    async def test_below_threshold_and_empty_go_to_the_default(
        self, worker: ClassifierWorker, client: Client
    ) -> None:
        caller, dispatcher = await _setup(worker, client)
        await caller.send(chat("maybe code"))
        request, _ = await dispatcher.next()
        assert request.route.reason == "below_threshold" and request.route.model == "llama2-7b"
        await caller.send(chat(None))
        request, _ = await dispatcher.next()
        assert request.route.reason == "empty" and request.route.model == "llama2-7b"
        await caller.send(chat("code"))
        await dispatcher.next()

        def decisions(outcome: str) -> float | None:
            return worker.metrics.registry.get_sample_value(
                "loraroute_classifier_decisions_total", {"path": "chat", "outcome": outcome}
            )

        # The empty request was never classified: one of two classified texts fell below.
        assert (decisions("below_threshold"), decisions("classified")) == (1, 1)

    async def test_passthrough_skips_the_model(
        self, worker: ClassifierWorker, client: Client, backend: KeywordBackend
    ) -> None:
        caller, dispatcher = await _setup(worker, client)
        await caller.send(chat("law", model="medical-lora"))
        request, _ = await dispatcher.next()
        assert request.route.reason == "passthrough" and request.route.model == "medical-lora"
        assert backend.batches == []

    async def test_unknown_model_is_404(self, worker: ClassifierWorker, client: Client) -> None:
        caller, _ = await _setup(worker, client)
        error = _error(await caller.reply(await caller.send(chat("hi", model="gpt-4"))))
        assert error.status == 404 and error.error.error.param == "model"

    @pytest.mark.parametrize(
        "payload",
        [
            b"not json",
            b'{"kind": "nope"}',
            encoder.encode(RouteChat(body=msgspec.Raw(b'{"messages": 5}'))),
        ],
    )
    async def test_bad_messages_are_400(
        self, worker: ClassifierWorker, client: Client, payload: bytes
    ) -> None:
        caller, _ = await _setup(worker, client)
        error = _error(await caller.reply(await caller.send(payload)))
        assert error.status == 400

    async def test_expired_deadline_is_504(self, worker: ClassifierWorker, client: Client) -> None:
        caller, dispatcher = await _setup(worker, client)
        error = _error(await caller.reply(await caller.send(chat("code"), deadline_s=-1)))
        assert error.status == 504
        assert dispatcher.got.empty()

    async def test_no_dispatcher_is_503_at_once(
        self, worker: ClassifierWorker, client: Client
    ) -> None:
        caller, _ = await _setup(worker, client, with_dispatcher=False)
        error = _error(await caller.reply(await caller.send(chat("code")), timeout=2))
        assert error.status == 503
        assert error.error.error.type == "ServiceUnavailableError"

    async def test_engine_failure_is_500(self, worker: ClassifierWorker, client: Client) -> None:
        caller, _ = await _setup(worker, client)
        error = _error(await caller.reply(await caller.send(chat("fail"))))
        assert error.status == 500

    async def test_overload_is_429_and_accepted_work_still_completes(
        self, worker: ClassifierWorker, client: Client, backend: KeywordBackend
    ) -> None:
        caller, dispatcher = await _setup(worker, client)
        backend.gate.clear()
        blocked = await caller.send(chat("block"))
        await asyncio.sleep(0.05)  # on the thread now
        waiting = [await caller.send(chat("code")) for _ in range(8)]
        await asyncio.sleep(0.1)
        refused = [r for r in waiting if not caller.replies[r].empty()]
        assert refused, "some requests should be refused at once"
        for r in refused:
            error = _error(await caller.reply(r))
            assert error.status == 429 and error.error.error.type == "RateLimitError"
        backend.gate.set()
        forwarded = 1 + len(waiting) - len(refused)
        for _ in range(forwarded):
            await dispatcher.next()
        assert caller.replies[blocked].empty()

    async def test_a_held_request_gets_keepalives_and_a_notice_before_it_is_forwarded(
        self, config: Config, backend: KeywordBackend, nats_url: str, client: Client
    ) -> None:
        data = msgspec.to_builtins(config)
        data["liveness"] = {"heartbeat_s": 0.05, "stall_s": 0.2}
        engine = Engine(
            keyword_tokenizer(),
            backend,
            LabelMap.build(LABELS, {c.name: c.mmlu_categories for c in config.categories}),
        )
        worker = ClassifierWorker(decode_config(data), engine, nats_url, name="keepalive-test")
        await worker.start()
        try:
            caller, dispatcher = await _setup(worker, client)
            backend.gate.clear()
            reply = await caller.send(chat("block blood"), request_id="held 1")
            await asyncio.sleep(0.4)  # held: the inference thread is blocked
            backend.gate.set()
            forwarded, _ = await dispatcher.next()
            assert forwarded.route.model == "medical-lora"
            got = [reply_decoder.decode((await caller.reply(reply)).data)]
            while not caller.replies[reply].empty():
                got.append(reply_decoder.decode((await caller.reply(reply)).data))
            assert len(got) >= 3
            assert all(m == ReplyAlive(held_by="classifier") for m in got[:-1])
            # The last word before the forward: vLLM may be called from now on.
            assert got[-1] == ReplyAlive(held_by="dispatcher")
            assert worker.keepalives is not None and len(worker.keepalives) == 0
        finally:
            backend.gate.set()
            await worker.stop(5)

    async def test_a_cancel_drops_a_queued_chat_request(
        self, worker: ClassifierWorker, client: Client, backend: KeywordBackend
    ) -> None:
        caller, dispatcher = await _setup(worker, client)
        backend.gate.clear()
        sent = [await caller.send(chat("block law"))]
        await asyncio.sleep(0.05)  # on the thread
        sent.append(await caller.send(chat("code")))
        await asyncio.sleep(0.05)  # cut into the next batch, waiting for the thread
        left = await caller.send(chat("blood"), request_id="client/left")
        await asyncio.sleep(0.05)
        assert worker.batcher is not None and len(worker.batcher.queue) == 1
        await client.publish(worker.subjects.cancel("client/left"), b"")
        await client.publish(worker.subjects.cancel("someone-else"), b"")
        await client.flush()
        await asyncio.sleep(0.05)
        assert len(worker.batcher.queue) == 0
        backend.gate.set()
        models = sorted([(await dispatcher.next())[0].route.model for _ in sent])
        assert models == ["legal-lora", "technical-lora"]
        await asyncio.sleep(0.1)
        assert dispatcher.got.empty()
        # Its requester is answered all the same: 499, never silence.
        error = _error(await caller.reply(left))
        assert error.status == 499 and error.error.error.type == "ClientClosedRequest"
        assert caller.replies[left].empty()
        assert (
            worker.metrics.registry.get_sample_value(
                "loraroute_classifier_rejected_total", {"kind": "cancelled"}
            )
            == 1
        )

    async def test_classification_api(self, worker: ClassifierWorker, client: Client) -> None:
        caller, _ = await _setup(worker, client)
        payload = encoder.encode(
            ClassifyTexts(texts=["code", "maybe", "", "blood"], return_probabilities=True)
        )
        result = reply_decoder.decode((await caller.reply(await caller.send(payload))).data)
        assert isinstance(result, ClassifyTextsResult)
        assert [r.category for r in result.results] == ["technical", None, None, "medical"]
        assert result.results[0].probabilities is not None
        assert set(result.results[0].probabilities) == set(LABELS)
        labels = result.results[0].label_probabilities
        assert labels is not None and set(labels) == set(LABELS)
        assert sum(labels.values()) == pytest.approx(1.0, abs=1e-5)
        assert labels["technical"] == pytest.approx(0.9)
        assert result.results[2].label_probabilities == {}  # the empty text
        below = worker.metrics.registry.get_sample_value(
            "loraroute_classifier_decisions_total", {"path": "api", "outcome": "below_threshold"}
        )
        assert below == 1  # "maybe"; the empty text is not classified
        empty = encoder.encode(ClassifyTexts(texts=[]))
        result = reply_decoder.decode((await caller.reply(await caller.send(empty))).data)
        assert isinstance(result, ClassifyTextsResult) and result.results == []

    async def test_too_many_texts_is_429(self, worker: ClassifierWorker, client: Client) -> None:
        caller, _ = await _setup(worker, client)
        payload = encoder.encode(ClassifyTexts(texts=["code"] * 5))  # max_queue is 4
        assert _error(await caller.reply(await caller.send(payload))).status == 429

    async def test_job_lane_is_routed_like_the_classify_subject(
        self, worker: ClassifierWorker, client: Client
    ) -> None:
        caller, dispatcher = await _setup(worker, client)
        jobs = worker.subjects.classify_jobs
        reply = await caller.send(chat("law", temperature=0.1), request_id="job-1", subject=jobs)
        request, msg = await dispatcher.next()
        assert request.route.model == "legal-lora" and request.route.reason == "classified"
        assert msgspec.json.decode(request.body)["temperature"] == 0.1
        assert msg.headers is not None and msg.headers[HEADER_REQUEST_ID] == "job-1"
        assert msg.headers[HEADER_REPLY_TO] == reply
        expired = await caller.send(chat("code"), deadline_s=-1, subject=jobs)
        assert _error(await caller.reply(expired)).status == 504
        unknown = await caller.send(chat("hi", model="gpt-4"), subject=jobs)
        assert _error(await caller.reply(unknown)).status == 404

    async def test_interactive_request_overtakes_a_job_backlog(
        self, worker: ClassifierWorker, client: Client, backend: KeywordBackend
    ) -> None:
        caller, dispatcher = await _setup(worker, client)
        jobs = worker.subjects.classify_jobs
        backend.gate.clear()
        await caller.send(chat("block law"), request_id="job-running", subject=jobs)
        await asyncio.sleep(0.05)  # on the thread
        backlog = [
            await caller.send(chat("blood"), request_id=f"job-{i}", subject=jobs) for i in range(17)
        ]
        await asyncio.sleep(0.1)
        # The job lane holds 16 (max_job_queue): the 17th is refused at once, 429.
        assert _error(await caller.reply(backlog[-1], timeout=1)).status == 429
        assert all(caller.replies[r].empty() for r in backlog[:-1])
        # The interactive lane is untouched by the full job lane.
        await caller.send(chat("code"), request_id="interactive")
        await asyncio.sleep(0.05)
        backend.gate.set()
        order = []
        for _ in range(18):
            _request, msg = await dispatcher.next()
            assert msg.headers is not None
            order.append(msg.headers[HEADER_REQUEST_ID])
        # Only the job batch already running when it arrived goes before it.
        assert order[:2] == ["job-running", "interactive"]
        assert sorted(order[2:]) == sorted(f"job-{i}" for i in range(16))
        lanes = {"interactive": 1.0, "job": 5.0}  # then job batches of max_job_batch_size (4)
        for lane, count in lanes.items():
            got = worker.metrics.registry.get_sample_value(
                "loraroute_classifier_batch_size_count", {"lane": lane}
            )
            assert got == count

    async def test_ping(self, worker: ClassifierWorker, client: Client) -> None:
        assert await bus.ping(client, worker.subjects.classify)
        assert not await bus.ping(client, Subjects("nobody-here").classify, timeout_s=0.5)

    async def test_stop_drains_accepted_work(
        self, config: Config, backend: KeywordBackend, nats_url: str, client: Client
    ) -> None:
        engine = Engine(
            keyword_tokenizer(),
            backend,
            LabelMap.build(LABELS, {c.name: None for c in config.categories}),
        )
        w = ClassifierWorker(config, engine, nats_url, name="drain-test")
        await w.start()
        caller, dispatcher = await _setup(w, client)
        backend.gate.clear()
        await caller.send(chat("block code"))
        await caller.send(chat("blood"))
        await asyncio.sleep(0.05)
        stopping = asyncio.create_task(w.stop(5))
        await asyncio.sleep(0.05)
        backend.gate.set()
        await stopping
        models = sorted([(await dispatcher.next())[0].route.model for _ in range(2)])
        assert models == ["medical-lora", "technical-lora"]

    def test_refuses_a_config_the_labels_do_not_reach(
        self, config: Config, backend: KeywordBackend
    ) -> None:
        from schemas.config import ConfigError

        data = msgspec.to_builtins(config)
        data["categories"][0]["mmlu_categories"] = ["computer science"]
        bad = decode_config(data)
        engine = Engine(keyword_tokenizer(), backend)
        with pytest.raises(ConfigError, match="computer science"):
            ClassifierWorker(bad, engine, "nats://127.0.0.1:1")


@pytest.mark.slow
class TestWithBuiltModel:
    @pytest.fixture
    async def real_worker(
        self, config: Config, repo_root: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> AsyncIterator[ClassifierWorker]:
        model_dir = repo_root / "models" / "loraroute-domain"
        if not (model_dir / "model.onnx").is_file():
            pytest.skip("the default model is not built (run `make model`)")
        monkeypatch.chdir(repo_root)  # the config's model path is relative to the repository
        w = ClassifierWorker(config, load_engine(config), nats_url, name="real-model")
        await w.start()
        try:
            yield w
        finally:
            await w.stop(5)

    @pytest.mark.parametrize(
        ("text", "model"),
        [
            ("Explain async/await in JavaScript", "technical-lora"),
            ("What causes high blood pressure?", "medical-lora"),
            # misspelt: mended by the default `inference.correct_spelling` before classifying
            ("Explian the diffrence between a procses and a thraed", "technical-lora"),
        ],
    )
    async def test_guide_examples_route_to_their_adapters(
        self, real_worker: ClassifierWorker, client: Client, text: str, model: str
    ) -> None:
        caller, dispatcher = await _setup(real_worker, client)
        await caller.send(chat(text))
        request, _ = await dispatcher.next()
        assert request.route.model == model
        body = msgspec.json.decode(request.body)
        assert body["messages"][-1]["content"] == text  # vLLM gets the text as sent, typos too

    @pytest.mark.parametrize(
        ("turns", "model"),
        [
            # A follow-up without topic words inherits the conversation's topic (most do, not
            # all: docs/benchmarks.md, "Multi-turn conversations") ...
            (
                ["Is a verbal contract enforceable in court?", "and if they refuse?"],
                "legal-lora",
            ),
            (["What causes high blood pressure?", "and if it gets worse?"], "medical-lora"),
            # ... and a last turn with a topic of its own wins over the earlier ones.
            (
                ["What causes high blood pressure?", "Explain async/await in JavaScript"],
                "technical-lora",
            ),
        ],
    )
    async def test_a_conversation_routes_by_its_turns(
        self, real_worker: ClassifierWorker, client: Client, turns: list[str], model: str
    ) -> None:
        caller, dispatcher = await _setup(real_worker, client)
        messages: list[dict[str, str]] = []
        for turn in turns:
            messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": "..."}]
        await caller.send(chat(None, messages=messages[:-1]))
        request, _ = await dispatcher.next()
        assert request.route.model == model, request.route
        batches = real_worker.metrics.registry.get_sample_value(
            "loraroute_classifier_decisions_total", {"path": "chat", "outcome": "classified"}
        )
        assert batches == 1  # one decision for the whole conversation

    async def test_a_job_line_is_routed_by_the_model(
        self, real_worker: ClassifierWorker, client: Client
    ) -> None:
        caller, dispatcher = await _setup(real_worker, client)
        jobs = real_worker.subjects.classify_jobs
        await caller.send(chat("What causes high blood pressure?"), subject=jobs)
        request, _ = await dispatcher.next()
        assert request.route.model == "medical-lora" and request.route.reason == "classified"

    async def test_mended_words_are_counted(
        self, real_worker: ClassifierWorker, client: Client
    ) -> None:
        caller, dispatcher = await _setup(real_worker, client)
        await caller.send(chat("Explian the diffrence between a procses and a thraed"))
        await dispatcher.next()

        def words(outcome: str) -> float | None:
            return real_worker.metrics.registry.get_sample_value(
                "loraroute_classifier_spelling_words_total", {"outcome": outcome}
            )

        assert (words("corrected"), words("unchecked")) == (4, 0)

    def test_spelling_correction_follows_the_config(
        self, config: Config, repo_root: Path, monkeypatch: pytest.MonkeyPatch, nats_url: str
    ) -> None:
        monkeypatch.chdir(repo_root)
        assert load_engine(config).tokenizer.corrector is not None  # the default
        off = msgspec.structs.replace(
            config, inference=msgspec.structs.replace(config.inference, correct_spelling=False)
        )
        engine = load_engine(off)
        assert engine.tokenizer.corrector is None
        worker = ClassifierWorker(off, engine, nats_url)  # exports no spelling counts
        sample = "loraroute_classifier_spelling_words_total"
        assert worker.metrics.registry.get_sample_value(sample, {"outcome": "corrected"}) is None
