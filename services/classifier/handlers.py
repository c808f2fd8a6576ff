"""The classifier worker's NATS entry points: decode, queue, and answer or forward.

`on_classify` takes a `ClassifyMessage` from the classify subject. A chat request naming a
configured model is forwarded at once (passthrough); one naming an auto model is tokenized
and queued for the batcher; `complete` later turns its classification into a `Route`
(`route.Router`) and forwards a `DispatchRequest` to `<prefix>.dispatch.<base model>`.

Forwarding keeps the ingress inbox in the `Lr-Reply-To` header and uses this worker's bounce
subject as the NATS reply: when no dispatcher listens, the server's "no responders" status comes
back to this connection (`on_bounce`), and the ingress gets a 503 at once instead of waiting
for its deadline. Every failure is answered with a `ReplyError`; nothing accepted is dropped,
except a chat request whose client left: `on_cancel` takes it out of the queue.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.errors import ErrorKind
from schemas.openai import ChatRequestView
from schemas.wire import (
    ClassifyTexts,
    ClassifyTextsResult,
    DispatchRequest,
    Route,
    RouteChat,
    classify_decoder,
    encoder,
)
from services.classifier.batch_queue import Batch, Entry
from services.classifier.metrics import WorkerMetrics
from services.classifier.route import Router, UnknownModelError
from services.classifier.work import ChatWork, Item, TextsWork, empty_result, text_result
from services.common import bus
from services.common.subjects import Subjects, model_token

if TYPE_CHECKING:
    from services.classifier.batcher import Batcher
    from services.classifier.engine import Classification
    from services.classifier.tokens import Encoded, Tokenizer

__all__ = ["BatchResult", "ClassifierHandlers"]

_log = structlog.get_logger("loraroute.classifier")
_view_decoder = msgspec.json.Decoder(ChatRequestView)

#: What the inference thread returns for a batch: results in entry order, and its run time (s).
BatchResult = tuple[list["Classification"], float]


class ClassifierHandlers:
    """Entry points bound to one connection, router, tokenizer and batcher."""

    def __init__(
        self,
        *,
        nc: Client,
        subjects: Subjects,
        bounce: str,
        router: Router,
        tokenizer: Tokenizer,
        batcher: Batcher[Item, Encoded, BatchResult],
        metrics: WorkerMetrics,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.bounce = bounce
        self.router = router
        self.tokenizer = tokenizer
        self.batcher = batcher
        self.metrics = metrics

    # ------------------------------------------------------------------ entry points

    async def on_classify(self, msg: Msg) -> None:
        """One message on the classify subject (never raises: failures are answered)."""
        received = time.perf_counter()
        if bus.is_ping(msg):
            await bus.answer_ping(self.nc, msg)
            return
        meta = bus.RequestMeta.from_headers(msg.headers)
        reply = msg.reply
        if not reply:
            _log.warning("no_reply_subject", request_id=meta.request_id)
            return
        try:
            message = classify_decoder.decode(msg.data)
        except msgspec.ValidationError as error:
            await self._fail(
                reply, meta, ErrorKind.VALIDATION, f"invalid message: {error}", "invalid"
            )
            return
        except msgspec.DecodeError as error:
            await self._fail(reply, meta, ErrorKind.VALIDATION, f"invalid JSON: {error}", "invalid")
            return
        if meta.expired():
            await self._fail(
                reply, meta, ErrorKind.TIMEOUT, "deadline passed before classification", "expired"
            )
            return
        try:
            if isinstance(message, RouteChat):
                await self._chat(message, meta, reply, received)
            else:
                await self._texts(message, meta, reply, received)
        except Exception as error:  # the outermost guard: answer, log, keep serving
            _log.exception("classify_failed", request_id=meta.request_id)
            await self._fail(
                reply, meta, ErrorKind.INTERNAL, f"classifier error: {error!r}", "engine"
            )

    async def on_bounce(self, msg: Msg) -> None:
        """A message on this worker's bounce subject: "no responders" for a forwarded request."""
        if not bus.is_no_responders(msg):
            _log.warning("unexpected_bounce", subject=msg.subject)
            return
        original = msg.subject[len(self.bounce) + 1 :]
        target = msg.headers.get("Nats-Subject", "the dispatch subject") if msg.headers else ""
        self.metrics.rejected.labels("no_dispatcher").inc()
        await bus.reply_error(
            self.nc,
            original,
            ErrorKind.UNAVAILABLE,
            f"no dispatcher is available for {target}",
        )

    async def on_cancel(self, msg: Msg) -> None:
        """A cancellation on `<prefix>.cancel.<request id>`: the client of that chat request left
        (the ingress has answered it 499). Drop it if it still waits in this worker's queue, so
        no classification is spent on it; once forwarded, the dispatcher stops it instead."""
        token = msg.subject.rpartition(".")[2]
        dropped = self.batcher.withdraw(
            lambda item: (
                isinstance(item.work, ChatWork) and model_token(item.work.meta.request_id) == token
            )
        )
        if dropped:
            self.metrics.rejected.labels("cancelled").inc()
            self.metrics.queue_depth.set(len(self.batcher.queue))
            _log.info("cancelled", request_id=dropped[0].payload.work.meta.request_id)

    # ------------------------------------------------------------------ chat

    async def _chat(
        self, message: RouteChat, meta: bus.RequestMeta, reply: str, received: float
    ) -> None:
        try:
            view = _view_decoder.decode(message.body)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            await self._fail(
                reply, meta, ErrorKind.VALIDATION, f"invalid chat request: {error}", "invalid"
            )
            return
        try:
            route = self.router.passthrough(view.model)
        except UnknownModelError as error:
            await self._fail(
                reply, meta, ErrorKind.NOT_FOUND, str(error), "unknown_model", param="model"
            )
            return
        if route is not None:
            await self._forward(route, message.body, meta, reply)
            return
        text = self.router.text_of(view)
        if text.truncated:
            self.metrics.truncations.labels("chars").inc()
        if not text.text:
            await self._forward(
                self.router.decide(None, 0.0, empty=True), message.body, meta, reply
            )
            return
        encoded = self.tokenizer.encode([text.text])
        self.metrics.stage_seconds.labels("tokenize").observe(time.perf_counter() - received)
        work = ChatWork(meta, reply, message.body, text.truncated, received)
        if not self._submit([Item(work, 0, encoded)], meta):
            await self._overloaded(reply, meta)

    async def _forward(
        self, route: Route, body: msgspec.Raw, meta: bus.RequestMeta, reply: str
    ) -> None:
        subject = self.subjects.dispatch(route.base_model)
        payload = encoder.encode(DispatchRequest(route=route, body=body))
        headers = msgspec.structs.replace(meta, reply_to=reply).to_headers()
        await self.nc.publish(subject, payload, reply=f"{self.bounce}.{reply}", headers=headers)
        self.metrics.routed.labels(route.category or "none", route.model, route.reason).inc()
        _log.info(
            "routed",
            request_id=meta.request_id,
            category=route.category,
            confidence=None if route.confidence is None else round(route.confidence, 4),
            model=route.model,
            reason=route.reason,
            truncated=route.truncated,
        )

    # ------------------------------------------------------------------ classification API

    async def _texts(
        self, message: ClassifyTexts, meta: bus.RequestMeta, reply: str, received: float
    ) -> None:
        bounded = [self.router.bound(t) for t in message.texts]
        self.metrics.truncations.labels("chars").inc(sum(b.truncated for b in bounded))
        work = TextsWork(
            meta=meta,
            reply=reply,
            return_probabilities=message.return_probabilities,
            received=received,
            results=[
                None if b.text else empty_result(message.return_probabilities) for b in bounded
            ],
            truncated_chars=[b.truncated for b in bounded],
        )
        if work.remaining == 0:
            await self._answer_texts(work)
            return
        rows = [i for i, b in enumerate(bounded) if b.text]
        encoded = self.tokenizer.encode([bounded[i].text for i in rows])
        self.metrics.stage_seconds.labels("tokenize").observe(time.perf_counter() - received)
        items = [Item(work, i, encoded.take([k])) for k, i in enumerate(rows)]
        if not self._submit(items, meta):
            await self._overloaded(reply, meta)

    async def _answer_texts(self, work: TextsWork) -> None:
        results = [r for r in work.results if r is not None]
        elapsed = time.perf_counter() - work.received
        reply = ClassifyTextsResult(results=results, processing_time_ms=bus.to_ms(elapsed))
        self.metrics.classified_texts.inc(len(results))
        await self.nc.publish(work.reply, encoder.encode(reply))

    # ------------------------------------------------------------------ batches

    def _submit(self, items: Sequence[Item], meta: bus.RequestMeta) -> bool:
        """Queue all of `items` or none of them (a request is refused whole)."""
        queue = self.batcher.queue
        if len(queue) + len(items) > queue.max_queue:
            return False
        now = time.monotonic()
        left = meta.remaining_s()
        deadline = None if left is None else now + left
        for item in items:
            entry = Entry(
                tokens=int(item.encoded.lengths[0]), arrival=now, payload=item, deadline=deadline
            )
            if not self.batcher.submit(entry):
                # Only while draining; the capacity was checked above.
                return False
        self.metrics.queue_depth.set(len(queue))
        return True

    async def complete(
        self, batch: Batch[Item], result: BatchResult | None, error: BaseException | None
    ) -> None:
        """Answer or forward every entry of a finished batch (the batcher's `complete`)."""
        self.metrics.queue_depth.set(len(self.batcher.queue))
        if result is None:
            _log.error("batch_failed", size=len(batch.entries), error=repr(error))
            for entry in batch.entries:
                await self._fail_work(
                    entry.payload.work,
                    ErrorKind.INTERNAL,
                    f"classification failed: {error!r}",
                    "engine",
                )
            return
        classifications, inference_s = result
        self.metrics.batch_size.observe(len(batch.entries))
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
                if isinstance(work, ChatWork):
                    route = self.router.decide(
                        classification.category,
                        classification.confidence,
                        truncated=work.truncated_chars or classification.truncated,
                    )
                    await self._forward(route, work.body, work.meta, work.reply)
                elif not work.failed:
                    index = entry.payload.index
                    done = work.fill(
                        index,
                        text_result(
                            classification,
                            threshold=self.router.threshold,
                            truncated_chars=work.truncated_chars[index],
                            return_probabilities=work.return_probabilities,
                        ),
                    )
                    if done:
                        await self._answer_texts(work)
            except Exception as error:
                _log.exception("answer_failed", request_id=work.meta.request_id)
                await self._fail_work(
                    work, ErrorKind.INTERNAL, f"classifier error: {error!r}", "engine"
                )

    async def expire(self, entries: list[Entry[Item]]) -> None:
        """Answer entries dropped for their deadline with 504 (the batcher's `expire`)."""
        for entry in entries:
            await self._fail_work(
                entry.payload.work,
                ErrorKind.TIMEOUT,
                "deadline passed while queued for classification",
                "expired",
            )

    # ------------------------------------------------------------------ errors

    async def _fail_work(
        self, work: ChatWork | TextsWork, kind: ErrorKind, message: str, reason: str
    ) -> None:
        if isinstance(work, TextsWork):
            if work.failed:
                return  # one error per request, however many of its texts failed
            work.failed = True
        await self._fail(work.reply, work.meta, kind, message, reason)

    async def _overloaded(self, reply: str, meta: bus.RequestMeta) -> None:
        await self._fail(
            reply,
            meta,
            ErrorKind.OVERLOADED,
            "The classifier is overloaded; please retry later.",
            "overloaded",
        )

    async def _fail(
        self,
        reply: str,
        meta: bus.RequestMeta,
        kind: ErrorKind,
        message: str,
        reason: str,
        *,
        param: str | None = None,
    ) -> None:
        self.metrics.rejected.labels(reason).inc()
        _log.info("rejected", request_id=meta.request_id, kind=kind.name, reason=reason)
        await bus.reply_error(self.nc, reply, kind, message, param=param, meta=meta)
