"""The ingress's door: API keys and the overload refusal, before any route runs.

A pure ASGI middleware in front of the routes. For every path but `/health`, `/ready` and
`/metrics` it asks for a known API key when keys are configured (401 otherwise, with
`WWW-Authenticate: Bearer`) and puts the key's entry in the request's state (`auth.api_key` reads it), where
the routes check the models it may name. Then, for the POSTs that enter the pipeline (chat and
the classification API), it answers 429 at once when `ingress.max_in_flight` requests are
already waiting: no routing, no body read, no JSON, no task; under a burst this is what keeps
the refusals fast (measured in docs/benchmarks.md).
"""

from __future__ import annotations

import time

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from schemas.errors import ErrorResponse
from services.ingress import headers
from services.ingress.auth import NO_KEY, Keyring
from services.ingress.routes import IngressState

__all__ = ["OPEN_PATHS", "Door"]

#: Paths every client may call without a key (probes and scrapes).
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})
#: POST paths that put work in the pipeline -> their route label in the metrics.
_PIPELINE_ROUTES = {
    "/v1/chat/completions": "chat",
    "/api/v1/classify/intent": "classify",
    "/api/v1/classify/batch": "classify_batch",
}
_CHALLENGE = (b"www-authenticate", b'Bearer realm="loraroute"')


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _answer(
    send: Send,
    error: ErrorResponse,
    ids: headers.RequestIds,
    extra: list[tuple[bytes, bytes]],
) -> None:
    body = msgspec.json.encode(error)
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *((k.encode(), v.encode()) for k, v in ids.response_headers().items()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Door:
    """ASGI middleware: keys first, then the overload refusal, then the app."""

    def __init__(self, app: ASGIApp, keyring: Keyring) -> None:
        self.app = app
        self.keyring = keyring

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state: IngressState = scope["app"].state.ingress
        if self.keyring.enabled:
            found = self.keyring.identify(_header(scope, b"authorization"))
            if isinstance(found, ErrorResponse):
                state.metrics.refused("missing_key" if found is NO_KEY else "wrong_key")
                ids = headers.request_ids(_header(scope, headers.REQUEST_ID.encode()))
                await _answer(send, found, ids, [_CHALLENGE])
                return
            scope.setdefault("state", {})["api_key"] = found
            state.metrics.let_in(found.name)
        route = _PIPELINE_ROUTES.get(scope["path"]) if scope["method"] == "POST" else None
        if route is not None:
            refused = state.exchange.overloaded()
            if refused is not None:
                ids = headers.request_ids(_header(scope, headers.REQUEST_ID.encode()))
                extra = []
                if refused.retry_after is not None:
                    extra.append((b"retry-after", str(refused.retry_after).encode()))
                await _answer(send, refused.error, ids, extra)
                state.metrics.observe(route, refused.status, time.perf_counter() - started)
                return
        await self.app(scope, receive, send)
