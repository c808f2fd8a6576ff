"""One routed request, from `DispatchRequest` to the messages the ingress receives.

Plain async logic: the NATS side hands in a `send` callable that publishes a reply message,
and the vLLM side is an `upstream.Upstream`. `Dispatch.run` sends exactly one final answer:

- non-streaming: one `ReplyResponse` (vLLM's status and body), or one `ReplyError`; an answer
  too large for one NATS message (`max_message_bytes`) goes as a `ReplyHead` with `whole`, its
  bytes in `StreamChunk`s and a `ReplyEnd`, which the ingress joins again;
- streaming: `ReplyHead`, then `StreamChunk`s (vLLM's SSE bytes exactly as received, `seq` from
  0, a read larger than one NATS message cut in several), then `ReplyEnd` (with an error when
  the stream broke after its first byte); or, when it failed before any byte, one `ReplyError`.

Retries follow the dispatcher retry table (reference vllm-openai-api.md section 14): another
endpoint is tried only while nothing has been sent to the client, for a failed connect, a
broken connection, a timeout before the answer, a 503, a 500 (once), a 404 for the model on
one endpoint when another remains, and a response that names another model than the one asked
for (when `check_response_model` is on). Everything else is the client's answer: vLLM's error,
re-shaped into the current envelope when vLLM sent the legacy flat one.

What the client reads names no endpoint, URL or exception: a failure is said in the client's
terms ("the model server could not be reached"), and the details (endpoint, URL, error) go to
`Outcome.detail`, which the dispatcher logs with the request id.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from schemas.config import Dispatcher as DispatcherConfig
from schemas.config import VllmEndpoint
from schemas.errors import (
    STATUS,
    ErrorInfo,
    ErrorKind,
    ErrorResponse,
    error_response,
    parse_error_body,
)
from schemas.wire import (
    DispatchRequest,
    ReplyEnd,
    ReplyError,
    ReplyHead,
    ReplyMessage,
    ReplyResponse,
    Route,
    StreamChunk,
    encoder,
)
from services.common import tracing
from services.common.bus import RequestMeta
from services.dispatcher.apply import BodyError, apply_route
from services.dispatcher.endpoints import EndpointPool
from services.dispatcher.lora_state import LoraState
from services.dispatcher.upstream import Upstream, UpstreamError, UpstreamResponse

__all__ = ["CHAT_PATH", "Dispatch", "Outcome", "Send"]

CHAT_PATH = "/v1/chat/completions"

#: Publishes one reply message to the requester.
Send = Callable[[ReplyMessage], Awaitable[None]]

_DONE = b"data: [DONE]"
#: Bytes a reply message needs beyond its body: its JSON fields or a chunk's header line.
_ENVELOPE = 1024


class _ModelView(msgspec.Struct):
    model: str | None = None


_model_decoder = msgspec.json.Decoder(_ModelView)


@dataclass(slots=True)
class Outcome:
    """What happened, for logs and metrics: the final status, endpoint, attempts, streamed bytes,
    and how many of the route's fallbacks were needed."""

    status: int
    endpoint: str | None = None
    attempts: int = 0
    chunks: int = 0
    error: str | None = None
    stream: bool = False
    elapsed_s: float = 0.0
    fallbacks_used: int = 0
    model: str | None = None
    detail: str | None = None
    """What went wrong, for the log only (endpoint, URL, exception); never sent to the client."""


class _Retry(Exception):
    """This attempt failed in a way another endpoint may fix; `reply` answers if none does.
    `detail` (the exception's text) says what happened for the log."""

    def __init__(
        self,
        reply: ReplyError,
        *,
        mark_down: bool = False,
        same_endpoint_ok: bool = True,
        detail: str | None = None,
    ) -> None:
        super().__init__(detail or reply.error.error.message)
        self.reply = reply
        self.mark_down = mark_down
        self.same_endpoint_ok = same_endpoint_ok


def _error(
    kind: ErrorKind, message: str, route: Route | None, param: str | None = None
) -> ReplyError:
    body = error_response(kind, message, param)
    return ReplyError(status=STATUS[kind], error=body, route=route)


def _kind(error: UpstreamError) -> ErrorKind:
    """A failed call to vLLM as the client sees it: 504 for a timeout, else 502."""
    return ErrorKind.TIMEOUT if error.stage == "timeout" else ErrorKind.BAD_GATEWAY


#: What the client reads for a failed call to vLLM, by `UpstreamError.stage`.
_SAID = {
    "connect": "The model server could not be reached.",
    "timeout": "The model server did not answer in time.",
    "io": "The connection to the model server failed.",
}


def _retry(error: UpstreamError, endpoint: VllmEndpoint, route: Route) -> _Retry:
    """A failed call to `endpoint` as a retry whose error answers if no other endpoint does.

    A failed connect marks the endpoint down and is not retried there; a broken connection may
    be tried once more on the same endpoint; a timeout (no first byte within
    `first_byte_timeout_s`, a silence past `between_chunks_timeout_s`) only on another one, so a
    hung vLLM costs one timeout, not one per attempt.
    """
    connect = error.stage == "connect"
    reply = _error(_kind(error), _SAID[error.stage], route)
    detail = f"endpoint {endpoint.name}: {error}"
    return _Retry(reply, mark_down=connect, same_endpoint_ok=error.stage == "io", detail=detail)


def _upstream_error(status: int, body: bytes, route: Route) -> ReplyError:
    """vLLM's error as the client's: both envelope shapes become the current one.

    401/403 mean vLLM refused loraroute's own credentials, which the client cannot fix: 502.
    """
    info = parse_error_body(body, status)
    if status in (401, 403):
        return _error(
            ErrorKind.BAD_GATEWAY,
            f"The model server refused the router's credentials ({status}).",
            route,
        )
    if status < 400:
        return _error(
            ErrorKind.BAD_GATEWAY,
            f"The model server answered an unexpected status {status}.",
            route,
        )
    if not info.type:
        # Not vLLM's envelope (a proxy's page, a bare text): it may name hosts and paths.
        message = f"The model server answered {status}."
        return ReplyError(
            status=status,
            error=ErrorResponse(error=ErrorInfo(message=message, type="Error", code=status)),
            route=route,
        )
    info = ErrorInfo(message=info.message, type=info.type, param=info.param, code=status)
    return ReplyError(status=status, error=ErrorResponse(error=info), route=route)


class Dispatch:
    """Runs routed requests against vLLM. Shared by every request of one dispatcher process."""

    def __init__(
        self,
        *,
        config: DispatcherConfig,
        pool: EndpointPool,
        upstream: Upstream,
        lora: LoraState | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.upstream = upstream
        self.lora = lora
        """Adapter-aware endpoint order (`dispatcher.lora_affinity`); None: by weight alone."""
        #: The bus's largest message (the connection's `max_payload`); None: never split.
        self.max_message_bytes = max_message_bytes

    async def run(self, request: DispatchRequest, meta: RequestMeta, send: Send) -> Outcome:
        """Answer `request` through `send` (exactly one final answer); never raises for
        failures of vLLM or of the request, only for failures of `send` itself."""
        started = time.perf_counter()
        route = request.route
        outcome = Outcome(status=0)
        reply: ReplyError | None
        try:
            if meta.expired():
                reply = _error(
                    ErrorKind.TIMEOUT, "deadline passed before the request reached vLLM", route
                )
            else:
                reply = await self._candidates(request, meta, send, outcome)
            if reply is not None:
                outcome.status = reply.status
                outcome.error = reply.error.error.message
                if outcome.detail is None and outcome.error:
                    outcome.detail = outcome.error
                await send(reply)
        finally:
            outcome.elapsed_s = time.perf_counter() - started
        return outcome

    async def _candidates(
        self, request: DispatchRequest, meta: RequestMeta, send: Send, outcome: Outcome
    ) -> ReplyError | None:
        """The route, then its fallbacks (next-best first) while every endpoint of the one
        before failed before any byte was sent. None when the answer was sent, else the error
        of the last candidate tried."""
        reply: ReplyError | None = None
        for index, route in enumerate([request.route, *request.route.fallbacks]):
            outcome.model, outcome.fallbacks_used = route.model, index
            try:
                body, outcome.stream = apply_route(request.body, route)
            except BodyError as error:
                return _error(ErrorKind.VALIDATION, str(error), route)
            reply, exhausted = await self._attempts(body, route, meta, send, outcome)
            if not exhausted:
                return reply
        return reply

    async def _attempts(
        self, body: bytes, route: Route, meta: RequestMeta, send: Send, outcome: Outcome
    ) -> tuple[ReplyError | None, bool]:
        """Try endpoints until one answers. Returns (None, False) when the answer was sent,
        (error, False) for a final error, and (error, True) when every endpoint failed in a
        way another model's endpoints might not (nothing was sent)."""
        endpoints = self.pool.order(route.endpoints, route.base_model)
        if self.lora is not None:
            endpoints = self.lora.order(endpoints, route.model, self.pool.is_down)
        if not endpoints:
            return _error(
                ErrorKind.UNAVAILABLE, f"No model server is configured for {route.model}.", route
            ), True
        last: ReplyError | None = None
        tried: set[str] = set()
        again: VllmEndpoint | None = None  # the endpoint worth one more try, if any
        for attempt in range(self.config.max_attempts):
            left = meta.remaining_s()
            if left is not None and left <= 0:
                return _error(ErrorKind.TIMEOUT, "deadline passed while calling vLLM", route), False
            untried = [e for e in endpoints if e.name not in tried]
            endpoint = untried[0] if untried else again
            if endpoint is None:
                break
            tried.add(endpoint.name)
            outcome.attempts = attempt + 1
            outcome.endpoint = endpoint.name
            sending = (
                self.lora.sending(endpoint.name, route.model)
                if self.lora is not None
                else contextlib.nullcontext()
            )
            try:
                with (
                    sending,
                    tracing.span(
                        "vllm",
                        kind="client",
                        attributes={
                            "loraroute.endpoint": endpoint.name,
                            "loraroute.model": route.model,
                        },
                    ),
                ):
                    await self._once(endpoint, body, route, meta, send, outcome)
            except _Retry as retry:
                last = retry.reply
                outcome.detail = str(retry)
                if retry.mark_down:
                    self.pool.mark_down(endpoint.name)
                # A broken pooled connection is worth another try on the same endpoint when no
                # other is left; a timeout, a refusal or an error answer is not.
                again = endpoint if retry.same_endpoint_ok else None
                continue
            except _Final as final:
                self.pool.mark_up(endpoint.name)
                return final.reply, False
            self.pool.mark_up(endpoint.name)
            return None, False
        return last or _error(ErrorKind.BAD_GATEWAY, "No model server answered.", route), True

    async def _once(
        self,
        endpoint: VllmEndpoint,
        body: bytes,
        route: Route,
        meta: RequestMeta,
        send: Send,
        outcome: Outcome,
    ) -> None:
        """One attempt. Returns after the answer was sent; raises `_Retry` when nothing was
        sent and another endpoint may do better; sends a `ReplyError` itself otherwise."""
        headers = {"X-Request-Id": meta.request_id}
        traceparent = tracing.traceparent(meta.traceparent)  # the `vllm` span's, when tracing
        if traceparent:
            headers["traceparent"] = traceparent
        url = endpoint.base_url + CHAT_PATH
        try:
            response = await self.upstream.post(url, body, headers, meta.remaining_s())
        except UpstreamError as error:
            raise _retry(error, endpoint, route) from error
        try:
            if response.status != 200:
                await self._refused(response, endpoint, route, meta)
            elif outcome.stream and response.content_type == "text/event-stream":
                await self._stream(response, endpoint, route, meta, send, outcome)
            else:
                await self._whole(response, endpoint, route, meta, send, outcome)
        finally:
            response.release()

    async def _refused(
        self, response: UpstreamResponse, endpoint: VllmEndpoint, route: Route, meta: RequestMeta
    ) -> None:
        """A non-200 answer: retry where the table says so, else raise it as the final answer."""
        try:
            data = await response.read()
        except UpstreamError as error:
            reply = _error(ErrorKind.BAD_GATEWAY, _SAID[error.stage], route)
            raise _Retry(reply, detail=f"endpoint {endpoint.name}: {error}") from error
        reply = _upstream_error(response.status, data, route)
        status = response.status
        if status == 503 or status == 500:
            raise _Retry(reply, same_endpoint_ok=False)
        if status == 404 and reply.error.error.param == "model":
            # This replica lacks the adapter; another may have it.
            raise _Retry(reply, same_endpoint_ok=False)
        raise _Final(reply)

    async def _whole(
        self,
        response: UpstreamResponse,
        endpoint: VllmEndpoint,
        route: Route,
        meta: RequestMeta,
        send: Send,
        outcome: Outcome,
    ) -> None:
        try:
            data = await response.read()
        except UpstreamError as error:
            raise _retry(error, endpoint, route) from error
        self._check_model(data, endpoint, route)
        outcome.status = 200
        limit = self.max_message_bytes
        if limit is None or len(data) + len(encoder.encode(route)) + _ENVELOPE <= limit:
            await send(ReplyResponse(status=200, body=msgspec.Raw(data), route=route))
            return
        # Too large for one message: the stream framing carries it, `whole` says to join it.
        await send(ReplyHead(status=200, route=route, whole=True))
        outcome.chunks = await self._send_pieces(data, 0, send)
        await send(ReplyEnd(chunks=outcome.chunks))

    async def _send_pieces(self, data: bytes, seq: int, send: Send) -> int:
        """Send `data` as `StreamChunk`s from `seq` on, each small enough for one NATS message
        (one chunk when it fits); return the next `seq`. The ingress relays or joins chunks
        byte for byte, so where `data` is cut does not matter."""
        limit = self.max_message_bytes
        piece = len(data) if limit is None else max(1, limit - _ENVELOPE)
        for start in range(0, len(data), piece):
            await send(StreamChunk(seq=seq, data=data[start : start + piece]))
            seq += 1
        return seq

    async def _stream(
        self,
        response: UpstreamResponse,
        endpoint: VllmEndpoint,
        route: Route,
        meta: RequestMeta,
        send: Send,
        outcome: Outcome,
    ) -> None:
        chunks = response.chunks()
        try:
            first = await anext(chunks, b"")
        except UpstreamError as error:
            raise _retry(error, endpoint, route) from error
        if not first:
            raise _Retry(
                _error(ErrorKind.BAD_GATEWAY, "The model server sent an empty stream.", route),
                detail=f"endpoint {endpoint.name} sent an empty stream",
            )
        self._check_model(_first_frame(first), endpoint, route)
        # From here on bytes reach the client: no retry, failures go in-band.
        outcome.status = 200
        await send(ReplyHead(status=200, route=route))
        tail = first[-64:]
        seq = await self._send_pieces(first, 0, send)
        broken: ErrorResponse | None = None
        try:
            async for chunk in chunks:
                seq = await self._send_pieces(chunk, seq, send)
                tail = (tail + chunk)[-64:]
        except UpstreamError as failure:
            broken = error_response(_kind(failure), "The stream from the model server broke.")
            outcome.detail = f"endpoint {endpoint.name}: {failure}"
        if broken is None and _DONE not in tail:
            broken = error_response(
                ErrorKind.BAD_GATEWAY, "The stream from the model server ended without [DONE]."
            )
            outcome.detail = f"endpoint {endpoint.name}: the stream ended without [DONE]"
        outcome.chunks = seq
        if broken is not None:
            outcome.error = broken.error.message
        await send(ReplyEnd(chunks=seq, error=broken))

    def _check_model(self, data: bytes, endpoint: VllmEndpoint, route: Route) -> None:
        """Raise `_Retry` when vLLM answered for another model than the one asked for."""
        if not self.config.check_response_model or not data:
            return
        try:
            model = _model_decoder.decode(data).model
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # not JSON we can read: the client sees it as vLLM sent it
        if model is not None and model != route.model:
            raise _Retry(
                _error(
                    ErrorKind.BAD_GATEWAY,
                    f"The model server answered for another model than {route.model!r}.",
                    route,
                ),
                same_endpoint_ok=False,
                detail=f"endpoint {endpoint.name} answered for model {model!r}",
            )


class _Final(Exception):
    """A definitive error answer (no retry)."""

    def __init__(self, reply: ReplyError) -> None:
        super().__init__(reply.error.error.message)
        self.reply = reply


def _first_frame(chunk: bytes) -> bytes:
    """The JSON of the first `data:` frame in `chunk`, or b"" when it holds none whole."""
    for line in chunk.split(b"\n"):
        if line.startswith(b"data: {") or line.startswith(b"data:{"):
            return line[5:].strip()
    return b""
