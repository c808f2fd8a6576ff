"""Everything the classify subject asks of the worker, as plain values in and out.

`Intake.take` turns one message (of either lane: the classify subject, or the job lane's
`classify_jobs`) into what to send: a `Forward` (to the dispatcher), a
`ClassifyTextsResult` or a `Refusal` (to the requester), or None once it is queued for the
batcher. `complete` and `expire` turn a finished batch or the entries dropped for their
deadline into `Answer`s; `cancel` takes a chat request whose client left out of the queue.
Nothing here publishes: `handlers.py` sends what these return.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from schemas.errors import ErrorKind
from schemas.wire import ClassifyTextsResult, RouteChat
from services.classifier import classify_texts, route_chat
from services.classifier.admission import INTERNAL_ERROR, OVERLOADED, Refusal, admit, read
from services.classifier.batch_queue import LANES
from services.classifier.labels import LabelMap
from services.classifier.route import Router
from services.classifier.route_chat import Forward
from services.classifier.work import ChatWork, Item, TextsWork
from services.common.subjects import model_token

if TYPE_CHECKING:
    from services.classifier.batch_queue import Batch, Entry, Lane
    from services.classifier.batcher import Batcher
    from services.classifier.engine import Classification
    from services.classifier.metrics import WorkerMetrics
    from services.classifier.tokens import Tokenizer
    from services.common.bus import RequestMeta

__all__ = ["Answer", "BatchResult", "Intake", "Outcome"]

_log = structlog.get_logger("loraroute.classifier")

#: What the inference thread returns for a batch: results in entry order, and its run time (s).
BatchResult = tuple[list["Classification"], float]
#: What to send for one message on the classify subject; None: queued, nothing to send yet.
Outcome = Forward | ClassifyTextsResult | Refusal | None
#: What to send for one queued request, and the request (its `meta` and `reply`).
Answer = tuple[ChatWork | TextsWork, Forward | ClassifyTextsResult | Refusal]


@dataclass(kw_only=True, slots=True)
class Intake:
    """The classify subject's logic around one router, tokenizer and batcher."""

    router: Router
    tokenizer: Tokenizer
    batcher: Batcher[Item, Any, BatchResult]
    metrics: WorkerMetrics
    label_map: LabelMap | None = None
    """The current config revision's label map (the engine folds with the same one)."""
    neutral: npt.NDArray[np.float32] | None = None
    """The model's label distribution for a text with no topic (`Engine.neutral_probabilities`),
    against which conversation turns are combined (`route_chat.combine`)."""

    def swap(self, router: Router, label_map: LabelMap | None) -> None:
        """Route new requests by another config revision; queued ones keep theirs."""
        self.router, self.label_map = router, label_map

    def take(
        self,
        data: bytes,
        meta: RequestMeta,
        reply: str,
        received: float,
        lane: Lane = "interactive",
    ) -> Outcome:
        """What to send for the message `data` (answered at `reply`); None when it was queued
        in `lane`. `received` is its `time.perf_counter()`. Raises only for bugs and engine
        failures."""
        message = read(data, meta)
        if isinstance(message, Refusal):
            return message
        work: ChatWork | TextsWork
        if isinstance(message, RouteChat):
            router = self.router
            taken = route_chat.take_chat(message, router)
            if not isinstance(taken, list):
                return taken
            work = ChatWork(
                meta,
                reply,
                message.body,
                any(t.truncated for t in taken),
                received,
                router=router,
                label_map=self.label_map,
                route_key=message.route_key,
                weights=[t.weight for t in taken],
            )
            texts = dict(enumerate(taken))
        else:
            work, texts = classify_texts.take_texts(message, meta, reply, received, self.router)
            if not texts:  # every text was empty: nothing for the model
                return classify_texts.answer(work, self.metrics)
        self.metrics.truncations.labels("chars").inc(sum(t.truncated for t in texts.values()))
        encoded = self.tokenizer.encode([t.text for t in texts.values()])
        self.metrics.stage_seconds.labels("tokenize").observe(time.perf_counter() - received)
        items = [
            Item(work, index, encoded if len(texts) == 1 else encoded.take([row]))
            for row, index in enumerate(texts)
        ]
        if not admit(self.batcher, items, meta, lane):
            return OVERLOADED
        self._depths()
        return None

    def _depths(self) -> None:
        for lane in LANES:
            self.metrics.queue_depth.labels(lane).set(self.batcher.queue.depth(lane))

    def complete(
        self, batch: Batch[Item], result: BatchResult | None, error: BaseException | None
    ) -> list[Answer]:
        """What to send for a finished batch: `result` from the inference thread, or the
        `error` it raised (every request in the batch is then answered with a 500)."""
        self._depths()
        answers: list[Answer] = []
        if result is None:
            _log.error("batch_failed", size=len(batch.entries), error=repr(error))
            failed = Refusal(ErrorKind.INTERNAL, "Classification failed.", "engine")
            for entry in batch.entries:
                if classify_texts.fail_once(entry.payload.work):
                    answers.append((entry.payload.work, failed))
            return answers
        classifications, inference_s = result
        self.metrics.batch_size.labels(batch.lane).observe(len(batch.entries))
        self.metrics.batch_tokens.labels("padded").observe(batch.padded_tokens)
        self.metrics.batch_tokens.labels("real").observe(batch.real_tokens)
        self.metrics.stage_seconds.labels("inference").observe(inference_s)
        now = time.perf_counter()
        for entry, classification in zip(batch.entries, classifications, strict=True):
            work = entry.payload.work
            if classification.truncated:
                self.metrics.truncations.labels("tokens").inc()
            self.metrics.stage_seconds.labels("total").observe(now - work.received)
            try:
                outcome = self._classified(work, entry.payload.index, classification)
            except Exception:
                _log.exception("answer_failed", request_id=work.meta.request_id)
                if classify_texts.fail_once(work):
                    answers.append((work, INTERNAL_ERROR))
                continue
            if outcome is not None:
                answers.append((work, outcome))
        return answers

    def _classified(
        self, work: ChatWork | TextsWork, index: int, classification: Classification
    ) -> Forward | ClassifyTextsResult | None:
        if isinstance(work, ChatWork):
            if work.failed or not work.fill(index, classification):
                return None
            forward = route_chat.classified(work, self.router, self.neutral)
            below = forward.route.reason == "below_threshold"
            self.metrics.decisions.labels(
                "chat", "below_threshold" if below else "classified"
            ).inc()
            return forward
        return classify_texts.record(
            work, index, classification, threshold=self.router.threshold, metrics=self.metrics
        )

    def expire(self, entries: list[Entry[Item]]) -> list[Answer]:
        """What to send for entries dropped for their deadline: a 504 per request."""
        expired = Refusal(
            ErrorKind.TIMEOUT, "deadline passed while queued for classification", "expired"
        )
        return [
            (entry.payload.work, expired)
            for entry in entries
            if classify_texts.fail_once(entry.payload.work)
        ]

    def cancel(self, token: str) -> list[ChatWork]:
        """The client of the chat request whose id has the subject token `token` left: drop
        the request if it still waits in the queue, so no classification is spent on it.
        Returns the requests dropped (for the handler to answer)."""
        dropped = self.batcher.withdraw(
            lambda item: (
                isinstance(item.work, ChatWork) and model_token(item.work.meta.request_id) == token
            )
        )
        works = [entry.payload.work for entry in dropped]
        if dropped:
            self.metrics.rejected.labels("cancelled").inc()
            self._depths()
            _log.info("cancelled", request_id=works[0].meta.request_id)
        return [work for work in works if isinstance(work, ChatWork)]
