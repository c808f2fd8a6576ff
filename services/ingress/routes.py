"""The ingress's HTTP entry points: read the request, call one plain function, send its answer.

Before any route, the door (`door.Door`) checks the API key (401) and refuses pipeline work when
too much is in flight (429). Order of checks on a POST: declared size (413 before reading),
content type (400), body read with the limit enforced while reading (413), JSON depth, JSON,
schema and the caps of `limits` (400), model name (404), the key's allowed models (403); then
the request is handed to the `Exchange` and its outcome becomes the response.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route as HttpRoute
from starlette.types import Receive, Scope, Send

from schemas.apikeys import ApiKeyEntry
from schemas.classify import ClassifyBatchRequest
from schemas.config import Config
from schemas.errors import ErrorKind, ErrorResponse
from schemas.openapi import document_bytes
from schemas.wire import ClassifyTextsResult
from services.common import tracing
from services.common.bus import RequestMeta, deadline_after
from services.common.log import get_logger
from services.ingress import classify_api, headers, sse
from services.ingress.auth import Keyring, api_key, forbidden_model
from services.ingress.exchange import Exchange
from services.ingress.metrics import IngressMetrics
from services.ingress.models import model_list, unknown_model
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

__all__ = ["ADMIN_ROUTES", "PUBLIC_ROUTES", "ROUTES", "IngressState"]

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
    #: The live config revision `config` is (0: the local file); a request reads both once.
    config_revision: int = 0
    #: Set on SIGTERM for `--shutdown-delay` seconds before intake stops: `/ready` says 503 so
    #: a balancer stops sending here while every request still gets served.
    draining: bool = False
    #: `created` of the `/v1/models` cards, and that list as each model-limited key sees it.
    models_created: int = 0
    models_by_key: dict[str, bytes] = field(default_factory=dict)


def _forbidden(
    key: ApiKeyEntry | None, model: str, ids: headers.RequestIds, state: IngressState
) -> _Whole:
    state.metrics.refused("model")
    _log.info("model_refused", key=key.name if key else None, model=model, request_id=ids.pipeline)
    return _error(forbidden_model(model), ids)


def _state(request: Request) -> IngressState:
    state: IngressState = request.app.state.ingress
    return state


class _Whole:
    """A whole JSON answer: the ASGI messages a Starlette `Response` sends (same headers, same
    order), without its header machinery; every chat answer but a stream is one."""

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, body: bytes, status: int, hdrs: dict[str, str]) -> None:
        self.body = body
        self.status_code = status
        self.headers = hdrs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        raw.append((b"content-length", b"%d" % len(self.body)))
        raw.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": self.status_code, "headers": raw})
        await send({"type": "http.response.body", "body": self.body})


#: What the routes answer: a whole JSON body or an SSE stream (or a Starlette response).
_Answer = Response | _Whole


def _error(error: ErrorResponse, ids: headers.RequestIds) -> _Whole:
    return _Whole(msgspec.json.encode(error), error.status, ids.response_headers())


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


def _respond(outcome: Outcome, ids: headers.RequestIds) -> _Answer:
    hdrs = {**ids.response_headers(), **headers.route_headers(outcome.route)}
    if isinstance(outcome, JsonAnswer):
        return _Whole(outcome.body, outcome.status, hdrs)
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
    return _Whole(msgspec.json.encode(outcome.error), outcome.status, hdrs)


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


def _meta(
    request: Request,
    ids: headers.RequestIds,
    timeout_s: float,
    config_revision: int | None = None,
) -> RequestMeta:
    timeout = headers.timeout_s(timeout_s, request.headers.get(headers.TIMEOUT))
    return RequestMeta(
        request_id=ids.pipeline,
        deadline_ms=deadline_after(timeout),
        # The ingress's own span when tracing is on, else the client's value as it came.
        traceparent=tracing.traceparent(headers.traceparent(request.headers.get("traceparent"))),
        config_revision=config_revision,
    )


class _ChatCompletions:
    """`POST /v1/chat/completions`: JSON or SSE, through the pipeline.

    A plain ASGI endpoint (a class, so Starlette's route calls it as one): the path nearly all
    traffic takes skips Starlette's per-request wrapping and exception scope, which add nothing
    here (no route raises `HTTPException`; anything else still reaches the server error
    handler)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive)
        response = await _chat(request)
        _state(request).metrics.observe("chat", response.status_code, time.perf_counter() - started)
        await response(scope, receive, send)


async def _chat(request: Request) -> _Answer:
    state = _state(request)
    ids = headers.request_ids(request.headers.get(headers.REQUEST_ID))
    body = await _read_json_body(request, state.body_limit)
    if isinstance(body, ErrorResponse):
        return _error(body, ids)
    view = parse_chat(body, state.config.limits)
    if isinstance(view, ErrorResponse):
        return _error(view, ids)
    # One config revision for the whole request, also named to the later stages.
    config, revision = state.config, state.config_revision
    if config.target_of(view.model) is None:
        return _error(unknown_model(view.model or ""), ids)
    key = api_key(request.scope)
    named = view.model or config.default_model
    if not Keyring.allows(key, named):
        return _forbidden(key, named, ids, state)
    meta = _meta(request, ids, config.ingress.request_timeout_s, revision)
    # The A/B key: the configured header's value, else the client's own request id (the
    # pipeline's id is new on every request, so a retried request could change variant).
    key_header = config.routing.ab_key_header
    route_key = (request.headers.get(key_header) if key_header else None) or ids.client
    outcome = await _unless_client_leaves(
        request, state.exchange.chat(body, bool(view.stream), meta, route_key)
    )
    if outcome is None:
        await state.exchange.cancel(meta)
        _log.info(
            "client_gone",
            request_id=ids.pipeline,
            client_request_id=ids.client,
            key=key.name if key else None,
        )
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
    cancelled (its mailbox closes). A stream's later departure is its release's business.

    `work` runs in the request's own task; one watcher task waits for the disconnect and
    cancels that task (a second task for `work` and `asyncio.wait` would cost two more trips
    through the event loop per request). Any other cancellation of the request's task is
    passed on unchanged."""
    task = asyncio.current_task()
    assert task is not None
    left = watching = False

    def client_left(watcher: asyncio.Future[None]) -> None:
        nonlocal left
        if watching and not watcher.cancelled():
            left = True
            task.cancel()

    watcher = asyncio.ensure_future(_client_left(request))
    watcher.add_done_callback(client_left)
    watching = True
    try:
        return await work
    except asyncio.CancelledError:
        if left and task.uncancel() == 0:
            return None
        raise
    finally:
        watching = False
        watcher.cancel()


async def list_models(request: Request) -> Response:
    """`GET /v1/models`: auto names, base models and adapters (OpenAI list shape); a key limited
    to some models sees only those."""
    state = _state(request)
    key = api_key(request.scope)
    if key is None or key.models is None:
        return Response(state.models_body, 200, media_type=_JSON)
    body = state.models_by_key.get(key.name)
    if body is None:
        body = model_list(state.config, state.models_created, frozenset(key.models))
        state.models_by_key[key.name] = body
    return Response(body, 200, media_type=_JSON)


async def health(request: Request) -> Response:
    """`GET /health`: the process is up (says nothing about NATS or workers; see `/ready`)."""
    return Response(b'{"status":"ok"}', 200, media_type=_JSON)


async def ready(request: Request) -> Response:
    """`GET /ready`: 200 when NATS is connected and a classifier and a dispatcher for every
    base model answer a ping; 503 otherwise, with what is missing in the body, and 503
    `{"ready": false, "draining": true}` once the process is shutting down. The body's
    `config_revision` says which live config revision this ingress and each worker kind that
    answered run."""
    state = _state(request)
    if state.draining:
        return Response(b'{"ready":false,"draining":true}', 503, media_type=_JSON)
    report: dict[str, Any] = {"nats": state.connected()}
    revisions: dict[str, int | None] = {"ingress": state.config_revision}
    if report["nats"]:
        alive, answered = await state.exchange.probe()
        report.update(alive)
        revisions.update(answered)
    ok = all(report.values()) and len(report) > 1
    report = {"ready": ok, **report, "config_revision": revisions}
    return Response(msgspec.json.encode(report), 200 if ok else 503, media_type=_JSON)


async def _classify(request: Request, batch: bool) -> _Answer:
    state = _state(request)
    ids = headers.request_ids(request.headers.get(headers.REQUEST_ID))
    body = await _read_json_body(request, state.body_limit)
    if isinstance(body, ErrorResponse):
        return _error(body, ids)
    depth = state.config.limits.max_json_depth
    parsed = (
        parse_classify_batch(body, state.config.ingress.max_classify_texts, depth)
        if batch
        else parse_classify_intent(body, depth)
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
    return _Whole(build(state.config, reply, with_probabilities), 200, ids.response_headers())


async def classify_intent(request: Request) -> _Answer:
    """`POST /api/v1/classify/intent`: one text through the classifier, no generation."""
    started = time.perf_counter()
    response = await _classify(request, batch=False)
    _state(request).metrics.observe("classify", response.status_code, time.perf_counter() - started)
    return response


async def classify_batch(request: Request) -> _Answer:
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


@functools.cache
def _openapi() -> bytes:
    return document_bytes()


async def openapi(request: Request) -> Response:
    """`GET /openapi.json`: this API as an OpenAPI 3.1 document (`schemas.openapi`)."""
    return Response(_openapi(), 200, media_type=_JSON)


PUBLIC_ROUTES = [
    HttpRoute("/v1/chat/completions", _ChatCompletions(), methods=["POST"]),
    HttpRoute("/v1/models", list_models, methods=["GET"]),
    HttpRoute("/health", health, methods=["GET"]),
    HttpRoute("/api/v1/classify/intent", classify_intent, methods=["POST"]),
    HttpRoute("/api/v1/classify/batch", classify_batch, methods=["POST"]),
    HttpRoute("/openapi.json", openapi, methods=["GET"]),
]
#: Served on the public port, or on `ingress.admin`'s address alone when it has a port.
ADMIN_ROUTES = [
    HttpRoute("/ready", ready, methods=["GET"]),
    HttpRoute("/metrics", metrics, methods=["GET"]),
]
ROUTES = [*PUBLIC_ROUTES, *ADMIN_ROUTES]
