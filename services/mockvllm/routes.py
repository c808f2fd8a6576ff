"""HTTP entry points of the mock vLLM: each reads the request, makes one call, renders the result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from schemas.errors import ErrorResponse, LegacyErrorResponse
from schemas.openai import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from services.mockvllm.faults import parse_fault
from services.mockvllm.metrics import CONTENT_TYPE_LATEST
from services.mockvllm.serving import ConnectionDropped, Result, Serving, Stream, Truncated
from services.mockvllm.validation import check_content_type, decode_request

__all__ = ["ROUTES"]

_encode = msgspec.json.Encoder().encode


def _serving(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


def _json(body: Any, status: int = 200) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json")


def _error(request: Request, error: ErrorResponse) -> Response:
    if _serving(request).settings.legacy_errors:
        return _json(LegacyErrorResponse.from_current(error), error.status)
    return _json(error, error.status)


class _TruncatedResponse(Response):
    """Announces the whole body, sends half of it, then makes the server drop the connection."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        half = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": half, "more_body": True})
        raise ConnectionDropped


async def _with_cancellation(request: Request, work: Awaitable[Result]) -> Result | None:
    """Run ``work`` until it finishes or the client disconnects (then cancel it, as vLLM does, so
    an abandoned request frees its slot); ``None`` means the client is gone."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


def _render(request: Request, result: Result | None) -> Response:
    if result is None:
        return Response(status_code=499)  # nobody reads it; the client has gone
    if isinstance(result, ErrorResponse):
        return _error(request, result)
    if isinstance(result, Stream):
        return StreamingResponse(result.frames, media_type="text/event-stream")
    if isinstance(result, Truncated):
        return _TruncatedResponse(result.body)
    return _json(result)


async def health(request: Request) -> Response:
    return Response(status_code=200)


async def version(request: Request) -> Response:
    return _json({"version": _serving(request).settings.version})


async def models(request: Request) -> Response:
    return _json(_serving(request).registry.model_list())


async def metrics(request: Request) -> Response:
    return Response(_serving(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def chat_completions(request: Request) -> Response:
    if (bad := check_content_type(request.headers.get("content-type"))) is not None:
        return _error(request, bad)
    body = await request.body()
    result = await _with_cancellation(request, _serving(request).chat(body, request.headers))
    return _render(request, result)


async def completions(request: Request) -> Response:
    if (bad := check_content_type(request.headers.get("content-type"))) is not None:
        return _error(request, bad)
    body = await request.body()
    result = await _with_cancellation(request, _serving(request).completion(body, request.headers))
    return _render(request, result)


async def load_lora_adapter(request: Request) -> Response:
    if (bad := check_content_type(request.headers.get("content-type"))) is not None:
        return _error(request, bad)
    req = decode_request(await request.body(), LoadLoRAAdapterRequest)
    if isinstance(req, ErrorResponse):
        return _error(request, req)
    result = await _serving(request).load_adapter(req.lora_name, req.lora_path, req.load_inplace)
    if isinstance(result, ErrorResponse):
        return _error(request, result)
    return Response(result, status_code=200)  # plain text, no content-type: as vLLM


async def unload_lora_adapter(request: Request) -> Response:
    if (bad := check_content_type(request.headers.get("content-type"))) is not None:
        return _error(request, bad)
    req = decode_request(await request.body(), UnloadLoRAAdapterRequest)
    if isinstance(req, ErrorResponse):
        return _error(request, req)
    result = _serving(request).unload_adapter(req.lora_name)
    if isinstance(result, ErrorResponse):
        return _error(request, result)
    return Response(result, status_code=200)


async def mock_faults(request: Request) -> Response:
    """Mock-only: ``GET`` shows the fault plan; ``POST {"faults": [spec, ...]}`` replaces it and
    restarts the request count (``[]`` clears it)."""
    plan = _serving(request).faults
    if request.method == "POST":
        try:
            specs = msgspec.json.decode(await request.body(), type=dict[str, list[str]])["faults"]
            faults = [parse_fault(spec) for spec in specs]
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError, ValueError) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        plan.replace(faults)
    return _json({"count": plan.count, "faults": [str(f) for f in plan.faults]})


async def mock_lora(request: Request) -> Response:
    """Mock-only: the adapters in GPU slots and in the CPU cache (least recently used first), and
    the swaps and disk loads counted since start."""
    return _json(_serving(request).lora_state())


#: (path, handler, methods, needs runtime LoRA updating)
ROUTES: list[tuple[str, Any, list[str], bool]] = [
    ("/health", health, ["GET"], False),
    ("/ping", health, ["GET", "POST"], False),
    ("/version", version, ["GET"], False),
    ("/metrics", metrics, ["GET"], False),
    ("/v1/models", models, ["GET"], False),
    ("/v1/chat/completions", chat_completions, ["POST"], False),
    ("/v1/completions", completions, ["POST"], False),
    ("/v1/load_lora_adapter", load_lora_adapter, ["POST"], True),
    ("/v1/unload_lora_adapter", unload_lora_adapter, ["POST"], True),
    ("/mock/faults", mock_faults, ["GET", "POST"], False),
    ("/mock/lora", mock_lora, ["GET"], False),
]
