"""`services.classifier.classify_texts`: one API call, several texts, one answer or one error."""

from __future__ import annotations

import pytest

from schemas.wire import ClassifyTexts, ClassifyTextsResult, TextClassification
from services.classifier.classify_texts import answer, fail_once, record, take_texts
from services.classifier.metrics import WorkerMetrics
from services.classifier.route import ClassifyText, Router
from services.classifier.work import ChatWork, TextsWork
from tests.services.classifier.plain import body, classification, meta

API_TEXTS = "loraroute_classifier_api_texts_total"


def _take(
    texts: list[str], router: Router, *, probabilities: bool = False
) -> tuple[TextsWork, dict[int, ClassifyText]]:
    message = ClassifyTexts(texts=texts, return_probabilities=probabilities)
    return take_texts(message, meta(), "inbox.1", 0.0, router)


@pytest.mark.parametrize("probabilities", [False, True])
def test_empty_texts_are_filled_in_and_need_no_model(router: Router, probabilities: bool) -> None:
    work, texts = _take(["", "code", ""], router, probabilities=probabilities)
    assert texts == {1: ClassifyText("code")}
    empty = TextClassification(
        category=None,
        confidence=0.0,
        label="",
        probabilities={} if probabilities else None,
        label_probabilities={} if probabilities else None,
    )
    assert work.results == [empty, None, empty]
    assert (work.remaining, work.reply, work.return_probabilities) == (1, "inbox.1", probabilities)


def test_texts_are_cut_to_the_routing_window(router: Router) -> None:
    work, texts = _take(["code " * 10_000, "blood"], router)
    assert work.truncated_chars == [True, False]
    assert texts[0].truncated and len(texts[0].text) < 50_000
    assert texts[1] == ClassifyText("blood")


def test_the_answer_comes_with_the_last_result_in_text_order(
    router: Router, worker_metrics: WorkerMetrics
) -> None:
    work, _ = _take(["code", "blood", "maybe"], router)

    def put(index: int, category: str, confidence: float) -> ClassifyTextsResult | None:
        found = classification(category, confidence)
        return record(work, index, found, threshold=router.threshold, metrics=worker_metrics)

    assert put(2, "technical", 0.4) is None
    assert put(0, "technical", 0.9) is None
    result = put(1, "medical", 0.8)
    assert isinstance(result, ClassifyTextsResult)
    # Below the threshold no category, as routing does; the model's own label stays.
    assert [(r.category, r.label) for r in result.results] == [
        ("technical", "technical"),
        ("medical", "medical"),
        (None, "technical"),
    ]
    assert all(r.probabilities is None for r in result.results)
    assert worker_metrics.registry.get_sample_value(API_TEXTS) == 3.0


def test_probabilities_and_truncation_are_reported_per_text(
    router: Router, worker_metrics: WorkerMetrics
) -> None:
    work, _ = _take(["code " * 10_000, "blood"], router, probabilities=True)
    threshold = router.threshold
    record(work, 0, classification("technical", 0.9), threshold=threshold, metrics=worker_metrics)
    tokens_cut = classification("medical", 0.9, truncated=True)
    result = record(work, 1, tokens_cut, threshold=threshold, metrics=worker_metrics)
    assert isinstance(result, ClassifyTextsResult)
    assert [r.truncated for r in result.results] == [True, True]  # chars, then tokens
    assert result.results[1].probabilities == {
        "technical": 0.0,
        "medical": 0.9,
        "legal": 0.0,
        "general": 0.0,
    }


def test_a_call_fails_once_and_drops_its_other_results(
    router: Router, worker_metrics: WorkerMetrics
) -> None:
    work, _ = _take(["code", "blood"], router)
    assert fail_once(work) is True
    assert fail_once(work) is False
    for index in (0, 1):
        found = classification("technical", 0.9)
        assert record(work, index, found, threshold=0.5, metrics=worker_metrics) is None
    assert worker_metrics.registry.get_sample_value(API_TEXTS) == 0.0


def test_a_chat_request_is_failed_once_for_all_its_turns() -> None:
    work = ChatWork(meta(), "inbox.1", body("code"), False, 0.0, weights=[1.0, 0.5])
    assert fail_once(work) and not fail_once(work)


def test_answer_counts_only_filled_results(worker_metrics: WorkerMetrics) -> None:
    done = TextClassification(category="legal", confidence=0.9, label="legal")
    work = TextsWork(
        meta=meta(),
        reply="inbox.1",
        return_probabilities=False,
        received=0.0,
        results=[done, done],
        truncated_chars=[False, False],
    )
    result = answer(work, worker_metrics)
    assert result.results == [done, done] and result.processing_time_ms >= 0.0
    assert worker_metrics.registry.get_sample_value(API_TEXTS) == 2.0
