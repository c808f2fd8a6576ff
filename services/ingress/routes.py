"""The ingress's HTTP entry points: read the request, call one plain function, send its answer.

Order of checks on a POST: declared size (413 before reading), content type (400), body read with
the limit enforced while reading (413), JSON and schema (400), model name (404); then the
request is handed to the `Exchange` and its outcome becomes the response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route as HttpRoute
from starlette.types import Receive, Scope, Send

from schemas.classify import ClassifyBatchRequest
from schemas.config import Config
from schemas.errors import ErrorKind, ErrorResponse
from schemas.wire import ClassifyTextsResult
from services.common.bus import RequestMeta, deadline_after
from services.common.log import get_logger
from services.ingress import classify_api, headers, sse
from services.ingress.exchange import Exchange
from services.ingress.metrics import IngressMetrics
from services.ingress.models import unknown_model
from services.ingress.outcomes import (
    ErrorAnswer,
    JsonAnswer,
    Outcome,
    StreamAnswer,
    error_answer,
)
from services.ingress.validation import (
    check_content_type,
    parse_chat,
    parse_classify_batch,
    parse_classify_intent,
    too_large,
)

__all__ = ["ROUTES", "IngressState"]

_JSON = "application/json"
_log = get_logger()


@dataclass(slots=True)
class IngressState:
    """What the routes need, built once by the app's lifespan."""

    config: Config
    exchange: Exchange
    models_body: bytes
    body_limit: int
    connected: Callable[[], bool]
    metrics: IngressMetrics
    #: Set on SIGTERM for `--shutdown-delay` seconds before intake stops: `/ready` says 503 so
    #: a balancer stops sending here while every request still gets served.
    draining: bool = False


def _state(request: Request) -> IngressState:
    state: IngressState = request.app.state.ingress
    return state


def _error(error: ErrorResponse, ids: headers.RequestIds) -> Response:
    return Response(msgspec.json.encode(error), error.status, ids.response_headers(), _JSON)


class _Relay(StreamingResponse):
    """An SSE response that releases its mailbox however the response ends."""

    def __init__(self, answer: StreamAnswer, hdrs: dict[str, str]) -> None:
        super().__init__(answer.chunks, answer.status, hdrs, sse.MEDIA_TYPE)
        self._release = answer.release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._release()


def _respond(outcome: Outcome, ids: headers.RequestIds) -> Response:
    hdrs = {**ids.response_headers(), **headers.route_headers(outcome.route)}
    if isinstance(outcome, JsonAnswer):
        return Response(outcome.body, outcome.status, hdrs, _JSON)
    if isinstance(outcome, StreamAnswer):
        return _Relay(outcome, hdrs)
    if outcome.retry_after is not None:
        hdrs["retry-after"] = str(outcome.retry_after)
    if outcome.status >= 500:
        _log.warning(
            "request_failed",
            request_id=ids.pipeline,
            client_request_id=ids.client,
            status=outcome.status,
            error_type=outcome.error.error.type,
        )
    return Response(msgspec.json.encode(outcome.error), outcome.status, hdrs, _JSON)


async def _read_json_body(request: Request, limit: int) -> bytes | ErrorResponse:
    """The body, or the 413/400 to answer instead (size is checked before content type, so an
    oversized upload is refused without being read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return too_large(int(declared), limit)
    wrong_type = check_content_type(request.headers.get("content-type"))
    if wrong_type is not None:
        return wrong_type
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return too_large(None, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _meta(request: Request, ids: headers.RequestIds, timeout_s: float) -> RequestMeta:
    timeout = headers.timeout_s(timeout_s, request.headers.get(headers.TIMEOUT))
    return RequestMeta(
        request_id=ids.pipeline,
        deadline_ms=deadline_after(timeout),
        traceparent=headers.traceparent(request.headers.get("traceparent")),
    )


async def chat_completions(request: Request) -> Response:
    """`POST /v1/chat/completions`: JSON or SSE, through the pipeline."""
    started = time.perf_counter()
    response = await _chat(request)
    _state(request).metrics.observe("chat", response.status_code, time.perf_counter() - started)
    return response


async def _chat(request: Request) -> Response:
    state = _state(request)
    ids = headers.request_ids(request.headers.get(headers.REQUEST_ID))
    body = await _read_json_body(request, state.body_limit)
    if isinstance(body, ErrorResponse):
        return _error(body, ids)
    view = parse_chat(body)
    if isinstance(view, ErrorResponse):
        return _error(view, ids)
    if state.config.target_of(view.model) is None:
        return _error(unknown_model(view.model or ""), ids)
    meta = _meta(request, ids, state.config.ingress.request_timeout_s)
    outcome = await _unless_client_leaves(
        request, state.exchange.chat(body, bool(view.stream), meta)
    )
    if outcome is None:
        await state.exchange.cancel(meta)
        _log.info("client_gone", request_id=ids.pipeline, client_request_id=ids.client)
        outcome = error_answer(
            ErrorKind.CLIENT_GONE, "The client closed its connection before the answer."
        )
    return _respond(outcome, ids)


async def _client_left(request: Request) -> None:
    """Return once the client has closed its connection (call after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves(
    request: Request, work: Coroutine[Any, Any, Outcome]
) -> Outcome | None:
    """`work`'s outcome, or None when the client closes its connection first; `work` is then
    cancelled (its mailbox closes). A stream's later departure is its release's business."""
    job = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_client_left(request))
    try:
        await asyncio.wait((job, left), return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        if not job.done():
            job.cancel()
            await asyncio.wait((job,))
    return None if job.cancelled() else job.result()


async def list_models(request: Request) -> Response:
    """`GET /v1/models`: auto names, base models and adapters (OpenAI list shape)."""
    return Response(_state(request).models_body, 200, media_type=_JSON)


async def health(request: Request) -> Response:
    """`GET /health`: the process is up (says nothing about NATS or workers; see `/ready`)."""
    return Response(b'{"status":"ok"}', 200, media_type=_JSON)


async def ready(request: Request) -> Response:
    """`GET /ready`: 200 when NATS is connected and a classifier and a dispatcher for every
    base model answer a ping; 503 otherwise, with what is missing in the body, and 503
    `{"ready": false, "draining": true}` once the process is shutting down."""
    state = _state(request)
    if state.draining:
        return Response(b'{"ready":false,"draining":true}', 503, media_type=_JSON)
    report: dict[str, Any] = {"nats": state.connected()}
    if report["nats"]:
        report.update(await state.exchange.readiness())
    ok = all(report.values()) and len(report) > 1
    report = {"ready": ok, **report}
    return Response(msgspec.json.encode(report), 200 if ok else 503, media_type=_JSON)


async def _classify(request: Request, batch: bool) -> Response:
    state = _state(request)
    ids = headers.request_ids(request.headers.get(headers.REQUEST_ID))
    body = await _read_json_body(request, state.body_limit)
    if isinstance(body, ErrorResponse):
        return _error(body, ids)
    parsed = (
        parse_classify_batch(body, state.config.ingress.max_classify_texts)
        if batch
        else parse_classify_intent(body)
    )
    if isinstance(parsed, ErrorResponse):
        return _error(parsed, ids)
    texts = parsed.texts if isinstance(parsed, ClassifyBatchRequest) else [parsed.text]
    with_probabilities = parsed.options.return_probabilities
    meta = _meta(request, ids, state.config.ingress.classify_timeout_s)
    reply = await state.exchange.classify(texts, with_probabilities, meta)
    if isinstance(reply, ErrorAnswer):
        return _respond(reply, ids)
    assert isinstance(reply, ClassifyTextsResult)
    build = classify_api.batch_body if batch else classify_api.intent_body
    return Response(
        build(state.config, reply, with_probabilities),
        200,
        ids.response_headers(),
        _JSON,
    )


async def classify_intent(request: Request) -> Response:
    """`POST /api/v1/classify/intent`: one text through the classifier, no generation."""
    started = time.perf_counter()
    response = await _classify(request, batch=False)
    _state(request).metrics.observe("classify", response.status_code, time.perf_counter() - started)
    return response


async def classify_batch(request: Request) -> Response:
    """`POST /api/v1/classify/batch`: up to `ingress.max_classify_texts` texts."""
    started = time.perf_counter()
    response = await _classify(request, batch=True)
    _state(request).metrics.observe(
        "classify_batch", response.status_code, time.perf_counter() - started
    )
    return response


async def metrics(request: Request) -> Response:
    """`GET /metrics`: Prometheus text format."""
    registry = _state(request).metrics.registry
    return Response(generate_latest(registry), 200, media_type=CONTENT_TYPE_LATEST)


ROUTES = [
    HttpRoute("/v1/chat/completions", chat_completions, methods=["POST"]),
    HttpRoute("/v1/models", list_models, methods=["GET"]),
    HttpRoute("/health", health, methods=["GET"]),
    HttpRoute("/ready", ready, methods=["GET"]),
    HttpRoute("/api/v1/classify/intent", classify_intent, methods=["POST"]),
    HttpRoute("/api/v1/classify/batch", classify_batch, methods=["POST"]),
    HttpRoute("/metrics", metrics, methods=["GET"]),
]
