"""The classifier worker's NATS entry points: read the message, ask `Intake`, send its answer.

`on_classify` takes a `ClassifyMessage` from the classify subject, `on_classify_job` the same
from the job lane (`classify_jobs`, lines of batch jobs: queued behind interactive requests); `intake.Intake` decides what
to send (`route_chat` for a chat request, `classify_texts` for the classification API,
`admission` for refusals and the queue), and `complete` later sends what a finished batch
yields. A chat request is forwarded as a `DispatchRequest` to `<prefix>.dispatch.<base model>`.

While a request waits here, `keepalive.Keepalives` tells its requester so once per heartbeat
(`liveness.heartbeat_s`) if nothing else was sent, and a request that had such keepalives is
forwarded right after one saying it now goes to a dispatcher (`ReplyAlive(held_by=
"dispatcher")`): a requester that then hears nothing more knows whether vLLM may have been
called.

Forwarding keeps the ingress inbox in the `Lr-Reply-To` header and uses this worker's bounce
subject as the NATS reply: when no dispatcher listens, the server's "no responders" status comes
back to this connection (`on_bounce`), and the ingress gets a 503 at once instead of waiting
for its deadline. Every failure is answered with a `ReplyError`; nothing accepted is dropped,
and a chat request whose client left (`on_cancel` takes it out of the queue) is answered 499.
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
from schemas.wire import ClassifyTextsResult, DispatchRequest, ReplyAlive, encoder
from services.classifier.admission import INTERNAL_ERROR, Refusal
from services.classifier.classify_texts import fail_once
from services.classifier.intake import Answer, BatchResult, Intake, Outcome
from services.classifier.metrics import WorkerMetrics
from services.classifier.route_chat import Forward
from services.common import bus, tracing
from services.common.keepalive import Keepalives
from services.common.live_config import LiveConfig
from services.common.subjects import Subjects

if TYPE_CHECKING:
    from services.classifier.batch_queue import Batch, Entry, Lane
    from services.classifier.work import Item

__all__ = ["ClassifierHandlers"]

_log = structlog.get_logger("loraroute.classifier")
#: Sent before forwarding a request whose requester had keepalives from here.
_HANDED_ON = encoder.encode(ReplyAlive(held_by="dispatcher"))


class ClassifierHandlers:
    """Entry points bound to one connection and one `Intake`."""

    def __init__(
        self,
        *,
        nc: Client,
        subjects: Subjects,
        bounce: str,
        intake: Intake,
        metrics: WorkerMetrics,
        keepalives: Keepalives,
        live: LiveConfig | None = None,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.bounce = bounce
        self.intake = intake
        self.metrics = metrics
        self.keepalives = keepalives
        self.live = live

    # ------------------------------------------------------------------ entry points

    async def on_classify(self, msg: Msg) -> None:
        """One message on the classify subject (never raises: failures are answered)."""
        await self._classify(msg, "interactive")

    async def on_classify_job(self, msg: Msg) -> None:
        """One message on the job lane: the same messages and answers, queued as `job`."""
        await self._classify(msg, "job")

    async def _classify(self, msg: Msg, lane: Lane) -> None:
        received = time.perf_counter()
        live = self.live
        if bus.is_ping(msg):
            await bus.answer_ping(self.nc, msg, None if live is None else live.revision)
            return
        meta = bus.RequestMeta.from_headers(msg.headers)
        reply = msg.reply
        if not reply:
            _log.warning("no_reply_subject", request_id=meta.request_id)
            return
        if live is not None and meta.config_revision is not None:
            # Routed at the ingress under a revision this worker has not seen yet: take it first.
            await live.wait_for(meta.config_revision)
        try:
            outcome = self.intake.take(msg.data, meta, reply, received, lane)
            if outcome is None:  # queued: held until answered
                self.keepalives.hold(reply)
            else:
                await self._send(outcome, meta, reply, received)
        except Exception:  # the outermost guard: answer, log (in full), keep serving
            _log.exception("classify_failed", request_id=meta.request_id)
            await self._fail(reply, meta, INTERNAL_ERROR)

    async def on_bounce(self, msg: Msg) -> None:
        """A message on this worker's bounce subject: "no responders" for a forwarded request."""
        if not bus.is_no_responders(msg):
            _log.warning("unexpected_bounce", subject=msg.subject)
            return
        original = msg.subject[len(self.bounce) + 1 :]
        target = msg.headers.get("Nats-Subject") if msg.headers else None
        self.metrics.rejected.labels("no_dispatcher").inc()
        _log.warning("no_dispatcher", subject=target, reply=original)
        await bus.reply_error(
            self.nc,
            original,
            ErrorKind.UNAVAILABLE,
            "No dispatcher is available for the chosen model; retry shortly.",
        )

    async def on_cancel(self, msg: Msg) -> None:
        """A cancellation on `<prefix>.cancel.<request id>`: the client of that chat request left
        (the ingress has answered it 499). Its requester is answered 499 all the same, so no
        requester ever waits for a dropped request. Once forwarded, the dispatcher stops it."""
        gone = Refusal(
            ErrorKind.CLIENT_GONE,
            "The request was cancelled before it was classified.",
            "cancelled",
        )
        for work in self.intake.cancel(msg.subject.rpartition(".")[2]):
            self.keepalives.release(work.reply)
            await bus.reply_error(self.nc, work.reply, gone.kind, gone.message, meta=work.meta)

    async def complete(
        self, batch: Batch[Item], result: BatchResult | None, error: BaseException | None
    ) -> None:
        """Answer or forward every entry of a finished batch (the batcher's `complete`)."""
        await self._answer(self.intake.complete(batch, result, error))

    async def expire(self, entries: list[Entry[Item]]) -> None:
        """Answer entries dropped for their deadline with 504 (the batcher's `expire`)."""
        await self._answer(self.intake.expire(entries))

    # ------------------------------------------------------------------ sending

    async def _answer(self, answers: Sequence[Answer]) -> None:
        for work, outcome in answers:
            held = self.keepalives.release(work.reply)
            try:
                if held is not None and held.alerted and isinstance(outcome, Forward):
                    await bus.answer(self.nc, work.reply, _HANDED_ON)
                await self._send(outcome, work.meta, work.reply, work.received)
            except Exception:
                _log.exception("answer_failed", request_id=work.meta.request_id)
                if fail_once(work):
                    await self._fail(work.reply, work.meta, INTERNAL_ERROR)

    async def _send(
        self, outcome: Outcome, meta: bus.RequestMeta, reply: str, received: float
    ) -> None:
        if outcome is None or not tracing.enabled():  # None: queued, answered later
            await self._send_now(outcome, meta, reply)
            return
        # One span from the message's arrival (the batch wait included) to its answer.
        arrived_ns = time.time_ns() - int((time.perf_counter() - received) * 1e9)
        with tracing.span(
            "classify",
            parent=meta.traceparent,
            kind="consumer",
            attributes={"loraroute.request_id": meta.request_id},
            start_ns=arrived_ns,
        ) as span:
            if isinstance(outcome, Forward):
                tracing.set_attributes(
                    span,
                    {
                        "loraroute.category": outcome.route.category or "",
                        "loraroute.model": outcome.route.model,
                        "loraroute.route": outcome.route.reason,
                    },
                )
            elif isinstance(outcome, Refusal):
                tracing.mark_error(span, outcome.reason)
            await self._send_now(outcome, meta, reply)

    async def _send_now(self, outcome: Outcome, meta: bus.RequestMeta, reply: str) -> None:
        if isinstance(outcome, Forward):
            await self._forward(outcome, meta, reply)
        elif isinstance(outcome, Refusal):
            await self._fail(reply, meta, outcome)
        elif isinstance(outcome, ClassifyTextsResult):
            await bus.answer(self.nc, reply, encoder.encode(outcome))

    async def _forward(self, forward: Forward, meta: bus.RequestMeta, reply: str) -> None:
        route = forward.route
        subject = self.subjects.dispatch(route.base_model)
        payload = encoder.encode(DispatchRequest(route=route, body=forward.body))
        headers = msgspec.structs.replace(
            meta,
            reply_to=reply,
            config_revision=forward.revision,
            traceparent=tracing.traceparent(meta.traceparent),
        ).to_headers()
        await self.nc.publish(subject, payload, reply=f"{self.bounce}.{reply}", headers=headers)
        self.metrics.count_routed(route.category, route.model, route.reason)
        _log.info(
            "routed",
            request_id=meta.request_id,
            category=route.category,
            confidence=None if route.confidence is None else round(route.confidence, 4),
            model=route.model,
            reason=route.reason,
            truncated=route.truncated,
            config_revision=forward.revision,
        )

    async def _fail(self, reply: str, meta: bus.RequestMeta, refusal: Refusal) -> None:
        self.metrics.rejected.labels(refusal.reason).inc()
        _log.info(
            "rejected", request_id=meta.request_id, kind=refusal.kind.name, reason=refusal.reason
        )
        await bus.reply_error(
            self.nc, reply, refusal.kind, refusal.message, param=refusal.param, meta=meta
        )
