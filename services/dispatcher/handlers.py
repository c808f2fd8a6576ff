"""The dispatcher's NATS entry point: decode a `DispatchRequest`, run it, publish the replies.

Replies go to the ingress inbox named by the `Lr-Reply-To` header, which the classifier sets on
every request it forwards, passthrough ones included (the ingress sends every chat request to
the classifier; the NATS reply subject is then the classifier's bounce subject). A message
without that header is answered on its NATS reply subject, for a requester that publishes to the
dispatch subject itself and listens there. Each request runs in its own task, because calls to
vLLM last seconds and nats-py delivers a subscription's messages one at a time. Which requests a
cancellation stops is kept by `cancels.Cancels`; a cancelled request is answered 499 (or 503 when
the dispatcher stops), so its requester never waits for it. Every message to a requester goes
through `bus.answer`, and while a request runs, `keepalive.Keepalives` sends its requester a
keepalive whenever vLLM has kept it silent for a heartbeat.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.errors import ErrorKind
from schemas.wire import DispatchRequest, ReplyMessage, dispatch_decoder, encode_reply
from services.common import bus, tracing
from services.common.keepalive import Held, Keepalives
from services.common.live_config import LiveConfig
from services.common.subjects import model_token
from services.dispatcher.cancels import Cancels
from services.dispatcher.dispatch import Dispatch
from services.dispatcher.metrics import DispatcherMetrics

__all__ = ["DispatcherHandlers"]

_log = structlog.get_logger("loraroute.dispatcher")


def _debug() -> bool:
    """Whether debug lines are written (`--log-level debug`)."""
    return bool(_log.is_enabled_for(logging.DEBUG))


class DispatcherHandlers:
    """Entry points bound to one connection and one `Dispatch`."""

    def __init__(
        self,
        *,
        nc: Client,
        dispatch: Dispatch,
        metrics: DispatcherMetrics,
        keepalives: Keepalives,
        live: LiveConfig | None = None,
    ) -> None:
        self.nc = nc
        self.dispatch = dispatch
        self.metrics = metrics
        self.keepalives = keepalives
        self.live = live
        self.tasks: set[asyncio.Task[None]] = set()
        self.cancels = Cancels()
        #: Set when the dispatcher stops: a request cancelled then is answered 503, not 499.
        self.stopping = False

    async def on_ping(self, msg: Msg) -> None:
        """A liveness probe on `<prefix>.ping.dispatch.<base model>`: answered at once."""
        await bus.answer_ping(self.nc, msg, None if self.live is None else self.live.revision)

    async def on_dispatch(self, msg: Msg) -> None:
        """One message on a dispatch subject (never raises: failures are answered)."""
        if bus.is_ping(msg):
            await bus.answer_ping(self.nc, msg, None if self.live is None else self.live.revision)
            return
        meta = bus.RequestMeta.from_headers(msg.headers)
        reply = bus.reply_subject(msg, meta)
        if reply is None:
            _log.warning("no_reply_subject", request_id=meta.request_id)
            return
        try:
            request = dispatch_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            _log.warning("invalid_dispatch_message", request_id=meta.request_id, error=str(error))
            await bus.reply_error(
                self.nc,
                reply,
                ErrorKind.VALIDATION,
                "The dispatcher could not read the request.",
                meta=meta,
            )
            return
        token = model_token(meta.request_id)
        if self.cancels.overtaken(token):
            self.metrics.answered("cancelled", "unknown")
            _log.info("dispatch_cancelled_before_start", request_id=meta.request_id)
            await bus.reply_error(
                self.nc,
                reply,
                ErrorKind.CLIENT_GONE,
                "The client closed its connection before the request reached vLLM.",
                meta=meta,
            )
            return
        held = self.keepalives.hold(reply)
        task = asyncio.create_task(self._run(request, meta, reply, held))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.cancels.running(token, task)

    async def on_cancel(self, msg: Msg) -> None:
        """A cancellation on `<prefix>.cancel.<request id>`: stop that request if it runs here,
        else remember it until the request's deadline in case the request is still on its way."""
        token = msg.subject.rpartition(".")[2]
        self.cancels.cancel(token, bus.RequestMeta.from_headers(msg.headers).deadline_ms)

    async def _run(
        self, request: DispatchRequest, meta: bus.RequestMeta, reply: str, held: Held
    ) -> None:
        async def send(message: ReplyMessage) -> None:
            held.sent()
            await bus.answer(self.nc, reply, encode_reply(message))

        try:
            if self.live is not None and meta.config_revision is not None:
                # Routed under a revision this dispatcher has not seen yet (a new endpoint, a
                # new model): take it first.
                await self.live.wait_for(meta.config_revision)
            with tracing.span(
                "dispatch",
                parent=meta.traceparent,
                kind="consumer",
                attributes={"loraroute.request_id": meta.request_id},
            ) as span:
                outcome = await self.dispatch.run(request, meta, send)
                if span is not None:  # tracing on
                    tracing.set_attributes(
                        span,
                        {
                            "loraroute.model": outcome.model or request.route.model,
                            "loraroute.endpoint": outcome.endpoint or "",
                            "loraroute.attempts": outcome.attempts,
                            "http.response.status_code": outcome.status,
                        },
                    )
                    if outcome.error:
                        tracing.mark_error(span, outcome.error)
        except asyncio.CancelledError:
            self.metrics.answered("cancelled", "unknown")
            _log.info("dispatch_cancelled", request_id=meta.request_id, model=request.route.model)
            await self._answer_cancelled(reply, meta)
            raise
        except Exception:  # the outermost guard: a failed publish or a bug (logged in full)
            _log.exception("dispatch_failed", request_id=meta.request_id)
            await bus.reply_error(
                self.nc, reply, ErrorKind.INTERNAL, "Internal error in the dispatcher.", meta=meta
            )
            return
        finally:
            self.keepalives.release(reply)
        self.metrics.answered(outcome.status, outcome.stream, outcome.elapsed_s)
        if outcome.endpoint is not None:
            self.metrics.attempted(outcome.endpoint, outcome.attempts)
        if outcome.stream and outcome.chunks and outcome.error:
            self.metrics.stream_errors.inc()
        # Successes at debug: the classifier already logs each request once (`routed`); a
        # request that needed a fallback model is worth an operator's eye.
        notable = bool(outcome.error or outcome.fallbacks_used)
        if not notable and not _debug():
            return  # a line nobody reads: not even its fields are gathered
        log = _log.info if notable else _log.debug
        log(
            "dispatched",
            request_id=meta.request_id,
            model=outcome.model or request.route.model,
            fallbacks_used=outcome.fallbacks_used,
            endpoint=outcome.endpoint,
            status=outcome.status,
            attempts=outcome.attempts,
            stream=outcome.stream,
            chunks=outcome.chunks,
            elapsed_ms=round(bus.to_ms(outcome.elapsed_s), 2),
            error=outcome.error,
            detail=outcome.detail if outcome.detail != outcome.error else None,
        )

    async def _answer_cancelled(self, reply: str, meta: bus.RequestMeta) -> None:
        """Answer a request whose task was cancelled: 499 when its client left, 503 when this
        dispatcher stops (its drain timed out). After a stream's head the ingress sends it
        in-band."""
        if self.stopping:
            kind, message = ErrorKind.UNAVAILABLE, "The dispatcher stopped before the answer ended."
        else:
            kind, message = ErrorKind.CLIENT_GONE, "The request was cancelled: its client left."
        await bus.reply_error(self.nc, reply, kind, message, meta=meta)
