"""Wires the mock vLLM's ASGI app: routes, the API-key middleware, FastAPI-style 404/405 bodies,
and a lifespan that keeps the server log free of the tracebacks the "drop" fault causes on purpose."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from services.mockvllm.auth import ApiKeyMiddleware
from services.mockvllm.routes import ROUTES
from services.mockvllm.serving import ConnectionDropped, Serving
from services.mockvllm.settings import MockSettings

__all__ = ["build_app"]


async def _http_error(request: Request, exc: Exception) -> Response:
    # vLLM runs on FastAPI: unknown routes and wrong methods get {"detail": ...}, not the envelope.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _not_a_dropped_connection(record: logging.LogRecord) -> bool:
    return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    # The server cuts a connection when a response raises; that is the fault, not an error to log.
    # Added here, after uvicorn has configured its loggers.
    log = logging.getLogger("uvicorn.error")
    log.addFilter(_not_a_dropped_connection)
    try:
        yield
    finally:
        log.removeFilter(_not_a_dropped_connection)


def build_app(settings: MockSettings) -> Starlette:
    """The mock server for ``settings``. Runtime LoRA routes exist only when enabled, as in vLLM."""
    routes = [
        Route(path, handler, methods=methods)
        for path, handler, methods, runtime_lora in ROUTES
        if settings.runtime_lora_updating or not runtime_lora
    ]
    middleware = []
    if settings.api_key:
        middleware.append(Middleware(ApiKeyMiddleware, api_key=settings.api_key))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error},
        lifespan=_lifespan,
    )
    app.state.serving = Serving(settings)
    return app
