"""vLLM's ``--api-key`` check: a bearer token on the inference paths only."""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ApiKeyMiddleware"]

#: vLLM guards only these prefixes; /health, /metrics, /version and /ping stay open.
_GUARDED = ("/v1", "/v2", "/inference", "/cohere")
_UNAUTHORIZED = b'{"error":"Unauthorized"}'


class ApiKeyMiddleware:
    """Answer 401 ``{"error":"Unauthorized"}`` (a string, not vLLM's error envelope) without the key."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") == "OPTIONS"
            or not str(scope["path"]).startswith(_GUARDED)
        ):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", b"24")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": _UNAUTHORIZED})
