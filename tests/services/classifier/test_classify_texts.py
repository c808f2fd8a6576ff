"""`services.classifier.classify_texts`: one API call, several texts, one answer or one error."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from schemas.config import Config
from schemas.wire import ClassifyTexts, ClassifyTextsResult, TextClassification
from services.classifier.classify_texts import answer, fail_once, record, take_texts
from services.classifier.metrics import WorkerMetrics
from services.classifier.route import Router
from services.classifier.work import ChatWork, Item, TextsWork
from tests.services.classifier.fakes import keyword_tokenizer
from tests.services.classifier.plain import body, classification, meta

API_TEXTS = "loraroute_classifier_api_texts_total"


@pytest.fixture
def router(shipped_config: Config) -> Router:
    return Router(shipped_config)


@pytest.fixture
def metrics() -> WorkerMetrics:
    return WorkerMetrics(CollectorRegistry())


def _take(
    texts: list[str], router: Router, metrics: WorkerMetrics, *, probabilities: bool = False
) -> ClassifyTextsResult | list[Item]:
    message = ClassifyTexts(texts=texts, return_probabilities=probabilities)
    return take_texts(
        message,
        meta(),
        "inbox.1",
        0.0,
        router=router,
        tokenizer=keyword_tokenizer(),
        metrics=metrics,
    )


def _work(items: ClassifyTextsResult | list[Item]) -> TextsWork:
    assert isinstance(items, list) and items
    work = items[0].work
    assert isinstance(work, TextsWork)
    assert all(item.work is work for item in items)
    return work


@pytest.mark.parametrize("probabilities", [False, True])
def test_empty_texts_are_answered_at_once(
    router: Router, metrics: WorkerMetrics, probabilities: bool
) -> None:
    result = _take(["", ""], router, metrics, probabilities=probabilities)
    assert isinstance(result, ClassifyTextsResult)
    empty = TextClassification(
        category=None, confidence=0.0, label="", probabilities={} if probabilities else None
    )
    assert result.results == [empty, empty]
    assert result.processing_time_ms >= 0.0
    assert metrics.registry.get_sample_value(API_TEXTS) == 2.0


def test_only_the_non_empty_texts_are_queued_one_item_each(
    router: Router, metrics: WorkerMetrics
) -> None:
    items = _take(["code", "", "blood law"], router, metrics)
    work = _work(items)
    assert isinstance(items, list)
    assert [item.index for item in items] == [0, 2]
    assert [item.encoded.lengths.tolist() for item in items] == [[1], [2]]
    assert (work.remaining, work.reply) == (2, "inbox.1")
    assert work.results[1] is not None and work.results[1].label == ""


def test_the_answer_comes_with_the_last_result_in_text_order(
    router: Router, metrics: WorkerMetrics
) -> None:
    work = _work(_take(["code", "blood", "maybe"], router, metrics))
    threshold = router.threshold
    assert (
        record(work, 2, classification("technical", 0.4), threshold=threshold, metrics=metrics)
        is None
    )
    assert (
        record(work, 0, classification("technical", 0.9), threshold=threshold, metrics=metrics)
        is None
    )
    result = record(work, 1, classification("medical", 0.8), threshold=threshold, metrics=metrics)
    assert isinstance(result, ClassifyTextsResult)
    # Below the threshold no category, as routing does; the model's own label stays.
    assert [(r.category, r.label) for r in result.results] == [
        ("technical", "technical"),
        ("medical", "medical"),
        (None, "technical"),
    ]
    assert all(r.probabilities is None for r in result.results)
    assert metrics.registry.get_sample_value(API_TEXTS) == 3.0


def test_probabilities_and_truncation_are_reported_per_text(
    router: Router, metrics: WorkerMetrics
) -> None:
    long = "code " * 10_000
    work = _work(_take([long, "blood"], router, metrics, probabilities=True))
    assert work.truncated_chars == [True, False]
    assert (
        metrics.registry.get_sample_value(
            "loraroute_classifier_truncations_total", {"kind": "chars"}
        )
        == 1.0
    )
    threshold = router.threshold
    record(work, 0, classification("technical", 0.9), threshold=threshold, metrics=metrics)
    result = record(
        work,
        1,
        classification("medical", 0.9, truncated=True),
        threshold=threshold,
        metrics=metrics,
    )
    assert isinstance(result, ClassifyTextsResult)
    assert [r.truncated for r in result.results] == [True, True]  # chars, then tokens
    assert result.results[1].probabilities == {
        "technical": 0.0,
        "medical": 0.9,
        "legal": 0.0,
        "general": 0.0,
    }


def test_a_call_fails_once_and_drops_its_other_results(
    router: Router, metrics: WorkerMetrics
) -> None:
    work = _work(_take(["code", "blood"], router, metrics))
    assert fail_once(work) is True
    assert fail_once(work) is False
    threshold = router.threshold
    assert (
        record(work, 0, classification("technical", 0.9), threshold=threshold, metrics=metrics)
        is None
    )
    assert (
        record(work, 1, classification("medical", 0.9), threshold=threshold, metrics=metrics)
        is None
    )
    assert metrics.registry.get_sample_value(API_TEXTS) == 0.0


def test_a_chat_request_is_failed_whenever_asked() -> None:
    work = ChatWork(meta(), "inbox.1", body("code"), False, 0.0)
    assert fail_once(work) and fail_once(work)


def test_answer_counts_only_filled_results(metrics: WorkerMetrics) -> None:
    done = TextClassification(category="legal", confidence=0.9, label="legal")
    work = TextsWork(
        meta=meta(),
        reply="inbox.1",
        return_probabilities=False,
        received=0.0,
        results=[done, done],
        truncated_chars=[False, False],
    )
    assert answer(work, metrics).results == [done, done]
    assert metrics.registry.get_sample_value(API_TEXTS) == 2.0
