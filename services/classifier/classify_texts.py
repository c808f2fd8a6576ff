"""The classification API's bookkeeping: one call, several texts, one answer or one error.

`take_texts` sets up a call's bookkeeping and says which of its texts need the model (a call
with none is answered at once); `record` stores each text's result as its batch finishes and
returns the answer once the last one is in. A call is answered at most once: after its first error
(`fail_once`), the results of its other texts are dropped.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from schemas.wire import ClassifyTexts, ClassifyTextsResult
from services.classifier.work import ChatWork, TextsWork, empty_result, text_result
from services.common import bus

if TYPE_CHECKING:
    from services.classifier.engine import Classification
    from services.classifier.metrics import WorkerMetrics
    from services.classifier.route import ClassifyText, Router
    from services.common.bus import RequestMeta

__all__ = ["answer", "fail_once", "record", "take_texts"]


def take_texts(
    message: ClassifyTexts, meta: RequestMeta, reply: str, received: float, router: Router
) -> tuple[TextsWork, dict[int, ClassifyText]]:
    """The call's bookkeeping (answered at `reply`; `received` is its `time.perf_counter()`),
    and its texts to classify by index: each cut to the routing window, the empty ones left
    out (their results are filled in already)."""
    bounded = [router.bound(t) for t in message.texts]
    work = TextsWork(
        meta=meta,
        reply=reply,
        return_probabilities=message.return_probabilities,
        received=received,
        results=[None if b.text else empty_result(message.return_probabilities) for b in bounded],
        truncated_chars=[b.truncated for b in bounded],
    )
    return work, {i: b for i, b in enumerate(bounded) if b.text}


def record(
    work: TextsWork,
    index: int,
    classification: Classification,
    *,
    threshold: float,
    metrics: WorkerMetrics,
) -> ClassifyTextsResult | None:
    """Store the result of text `index`; the call's answer when it was the last one missing,
    else None (also for a call already answered with an error)."""
    if work.failed:
        return None
    result = text_result(
        classification,
        threshold=threshold,
        truncated_chars=work.truncated_chars[index],
        return_probabilities=work.return_probabilities,
    )
    outcome = "classified" if result.category is not None else "below_threshold"
    metrics.decisions.labels("api", outcome).inc()
    done = work.fill(index, result)
    return answer(work, metrics) if done else None


def answer(work: TextsWork, metrics: WorkerMetrics) -> ClassifyTextsResult:
    """The answer to a call whose results are all in, timed from its arrival."""
    results = [r for r in work.results if r is not None]
    elapsed = time.perf_counter() - work.received
    metrics.classified_texts.inc(len(results))
    return ClassifyTextsResult(results=results, processing_time_ms=bus.to_ms(elapsed))


def fail_once(work: ChatWork | TextsWork) -> bool:
    """True when `work` is to be answered with an error now: only the first time (one error
    per request, however many of its texts (API texts, conversation turns) failed)."""
    if work.failed:
        return False
    work.failed = True
    return True
