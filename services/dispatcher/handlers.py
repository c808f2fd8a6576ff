"""The dispatcher's NATS entry point: decode a `DispatchRequest`, run it, publish the replies.

Replies go to the ingress inbox named by the `Lr-Reply-To` header, which the classifier sets on
every request it forwards, passthrough ones included (the ingress sends every chat request to
the classifier; the NATS reply subject is then the classifier's bounce subject). A message
without that header is answered on its NATS reply subject, for a requester that publishes to the
dispatch subject itself and listens there. Each request runs in its own task, because calls to vLLM last seconds and nats-py delivers a
subscription's messages one at a time.

A cancellation can overtake its request: the client may leave while the request still waits in
the classifier's queue. A cancel for a request not running here is remembered until the
request's deadline (at most `REMEMBERED_CANCELS` of them), and such a request is answered with
an error when it arrives instead of being sent to vLLM.
"""

from __future__ import annotations

import asyncio

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.errors import ErrorKind
from schemas.wire import DispatchRequest, ReplyMessage, dispatch_decoder, encode_reply
from services.common import bus
from services.common.subjects import model_token
from services.dispatcher.dispatch import Dispatch
from services.dispatcher.metrics import DispatcherMetrics

__all__ = ["REMEMBERED_CANCELS", "DispatcherHandlers"]

#: At most this many cancellations of requests not (yet) running here are remembered.
REMEMBERED_CANCELS = 10_000
#: How long a cancellation without a deadline header is remembered.
_CANCEL_MEMORY_S = 300.0

_log = structlog.get_logger("loraroute.dispatcher")


class DispatcherHandlers:
    """Entry points bound to one connection and one `Dispatch`."""

    def __init__(self, *, nc: Client, dispatch: Dispatch, metrics: DispatcherMetrics) -> None:
        self.nc = nc
        self.dispatch = dispatch
        self.metrics = metrics
        self.tasks: set[asyncio.Task[None]] = set()
        # Subject token of the request id -> its running task, for `on_cancel`.
        self._running: dict[str, asyncio.Task[None]] = {}
        # Subject token -> Unix ms until which a cancel that overtook its request counts.
        self._cancelled: dict[str, int] = {}

    async def on_dispatch(self, msg: Msg) -> None:
        """One message on a dispatch subject (never raises: failures are answered)."""
        if bus.is_ping(msg):
            await bus.answer_ping(self.nc, msg)
            return
        meta = bus.RequestMeta.from_headers(msg.headers)
        reply = bus.reply_subject(msg, meta)
        if reply is None:
            _log.warning("no_reply_subject", request_id=meta.request_id)
            return
        try:
            request = dispatch_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            await bus.reply_error(
                self.nc,
                reply,
                ErrorKind.VALIDATION,
                f"invalid dispatch message: {error}",
                meta=meta,
            )
            return
        token = model_token(meta.request_id)
        if self._cancelled.pop(token, 0) > bus.now_ms():
            self.metrics.requests.labels("cancelled", "unknown").inc()
            _log.info("dispatch_cancelled_before_start", request_id=meta.request_id)
            await bus.reply_error(
                self.nc,
                reply,
                ErrorKind.CLIENT_GONE,
                "The client closed its connection before the request reached vLLM.",
                meta=meta,
            )
            return
        task = asyncio.create_task(self._run(request, meta, reply))
        self.tasks.add(task)
        self._running[token] = task

        def done(finished: asyncio.Task[None]) -> None:
            self.tasks.discard(finished)
            if self._running.get(token) is finished:
                del self._running[token]

        task.add_done_callback(done)

    async def on_cancel(self, msg: Msg) -> None:
        """A cancellation on `<prefix>.cancel.<request id>`: stop that request if it runs here,
        else remember it until the request's deadline in case the request is still on its way."""
        token = msg.subject.rpartition(".")[2]
        task = self._running.get(token)
        if task is not None:
            if not task.done():
                task.cancel()
            return
        deadline_ms = bus.RequestMeta.from_headers(msg.headers).deadline_ms
        now = bus.now_ms()
        self._cancelled[token] = deadline_ms or bus.deadline_after(_CANCEL_MEMORY_S)
        if len(self._cancelled) > REMEMBERED_CANCELS:
            for key in [k for k, until in self._cancelled.items() if until <= now]:
                del self._cancelled[key]
            while len(self._cancelled) > REMEMBERED_CANCELS:  # the oldest go first
                del self._cancelled[next(iter(self._cancelled))]

    async def _run(self, request: DispatchRequest, meta: bus.RequestMeta, reply: str) -> None:
        async def send(message: ReplyMessage) -> None:
            await self.nc.publish(reply, encode_reply(message))

        try:
            outcome = await self.dispatch.run(request, meta, send)
        except asyncio.CancelledError:
            self.metrics.requests.labels("cancelled", "unknown").inc()
            _log.info("dispatch_cancelled", request_id=meta.request_id, model=request.route.model)
            raise
        except Exception as error:  # the outermost guard: a failed publish or a bug
            _log.exception("dispatch_failed", request_id=meta.request_id)
            await bus.reply_error(
                self.nc, reply, ErrorKind.INTERNAL, f"dispatcher error: {error!r}", meta=meta
            )
            return
        stream = "true" if outcome.stream else "false"
        self.metrics.requests.labels(str(outcome.status), stream).inc()
        self.metrics.seconds.labels(stream).observe(outcome.elapsed_s)
        if outcome.endpoint is not None:
            self.metrics.attempts.labels(outcome.endpoint).inc(outcome.attempts)
        if outcome.stream and outcome.chunks and outcome.error:
            self.metrics.stream_errors.inc()
        # Successes at debug: the classifier already logs each request once (`routed`); a
        # request that needed a fallback model is worth an operator's eye.
        log = _log.info if outcome.error or outcome.fallbacks_used else _log.debug
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
        )
