"""Building blocks for the unit tests of the classifier's plain modules: requests, work and
classifications as the worker would make them, without NATS or a model."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np

from services.classifier.batch_queue import Batch, BatchQueue, Entry
from services.classifier.batcher import Batcher
from services.classifier.engine import Classification
from services.classifier.work import ChatWork, Item
from services.common.bus import RequestMeta, deadline_after
from tests.services.classifier.fakes import LABELS, keyword_tokenizer

__all__ = ["body", "chat_item", "classification", "meta", "unstarted_batcher"]


def meta(request_id: str = "r1", deadline_s: float | None = 30.0) -> RequestMeta:
    deadline = None if deadline_s is None else deadline_after(deadline_s)
    return RequestMeta(request_id=request_id, deadline_ms=deadline)


def body(text: str | None, model: str = "MoM", **extra: Any) -> msgspec.Raw:
    """A client's chat body with one user turn (none when `text` is None)."""
    data: dict[str, Any] = {
        "model": model,
        "messages": [] if text is None else [{"role": "user", "content": text}],
        **extra,
    }
    return msgspec.Raw(msgspec.json.encode(data))


def chat_item(text: str = "code", request_id: str = "r1") -> Item:
    work = ChatWork(meta(request_id), f"inbox.{request_id}", body(text), False, 0.0)
    return Item(work, 0, keyword_tokenizer().encode([text]))


def classification(
    category: str | None, confidence: float, *, truncated: bool = False
) -> Classification:
    probabilities = {c: (confidence if c == category else 0.0) for c in LABELS}
    return Classification(
        category=category,
        confidence=confidence,
        label=category or "general",
        label_confidence=confidence,
        probabilities=probabilities,
        label_probabilities=np.zeros(len(LABELS), dtype=np.float32),
        truncated=truncated,
        tokens=3,
    )


def unstarted_batcher(max_queue: int = 4, max_job_queue: int = 2) -> Batcher[Item, Any, Any]:
    """A batcher that is never started: what is submitted stays in its queue."""

    async def complete(batch: Batch[Item], result: Any, error: BaseException | None) -> None:
        raise AssertionError("nothing runs")

    async def expire(entries: list[Entry[Item]]) -> None:
        raise AssertionError("nothing expires")

    queue: BatchQueue[Item] = BatchQueue(
        max_batch_size=8,
        max_batch_tokens=1024,
        max_wait_s=0.002,
        max_queue=max_queue,
        max_job_queue=max_job_queue,
    )
    return Batcher(
        queue, prepare=lambda batch: batch, run=lambda p: p, complete=complete, expire=expire
    )
