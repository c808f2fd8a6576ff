"""The OpenAI/vLLM error shape, and the one table from error kind to HTTP status.

vLLM (0.10.1+) answers every failure it handles with ``{"error": {"message", "type", "param", "code"}}``
(``ErrorResponse`` here); releases up to 0.10.0 used a flat body (``LegacyErrorResponse``). Code that
produces errors picks an ``ErrorKind`` and calls ``error_response``; the kind's value is the wire
``type`` string and ``STATUS`` gives its HTTP status, so no handler spells either. Code that reads
errors from an upstream should use ``parse_error_body``, which accepts every shape vLLM has sent.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

__all__ = [
    "STATUS",
    "ErrorInfo",
    "ErrorKind",
    "ErrorResponse",
    "LegacyErrorResponse",
    "error_response",
    "parse_error_body",
]


class ErrorKind(enum.Enum):
    """What went wrong; the value is the ``type`` string vLLM puts on the wire for it."""

    #: The body failed schema validation: missing field, wrong type, invalid JSON, wrong content type.
    #: vLLM sends the HTTP reason phrase here, not an exception name.
    VALIDATION = "Bad Request"
    #: A semantic check on a well-formed request failed (``max_tokens`` too large, ``stream_options``
    #: without ``stream``, prompt longer than the context).
    BAD_REQUEST = "BadRequestError"
    #: The runtime LoRA endpoints' argument errors (empty name, name taken, already loaded).
    INVALID_USER_INPUT = "InvalidUserInput"
    #: Unknown model or adapter (same error for both), unknown adapter path, unload of an unknown name.
    NOT_FOUND = "NotFoundError"
    #: Input that parsed but cannot be processed (e.g. an image URL that cannot be fetched).
    UNPROCESSABLE = "UnprocessableEntityError"
    #: Generation failed, or the engine died.
    INTERNAL = "InternalServerError"
    #: The endpoint is not supported by this model (chat on a model without a chat template).
    NOT_IMPLEMENTED = "NotImplementedError"
    #: A retryable engine failure, or the engine is paused; for loraroute also "no classifier or
    #: dispatcher is subscribed" (NATS no responders), answered at once.
    UNAVAILABLE = "ServiceUnavailableError"
    #: Admission control refused the request (vLLM's ``--max-num-queued-reqs``); no ``Retry-After``.
    QUEUE_FULL = "Service Unavailable"

    # loraroute's own kinds (the router's failures, not vLLM's).
    #: The body is larger than the ingress accepts.
    TOO_LARGE = "PayloadTooLargeError"
    #: The classifier's queue is full; the client should retry later (ingress adds `Retry-After`).
    OVERLOADED = "RateLimitError"
    #: Every endpoint failed, or vLLM's answer was unusable (wrong model, cut stream).
    BAD_GATEWAY = "BadGatewayError"
    #: The request's deadline passed before an answer.
    TIMEOUT = "TimeoutError"
    #: The request conflicts with the object's state (OpenAI's 409: cancelling a batch that has
    #: already ended).
    CONFLICT = "ConflictError"
    #: The client closed its connection before the answer (nginx's 499); logged and counted,
    #: never seen by that client.
    CLIENT_GONE = "ClientClosedRequest"
    #: No API key, or one the ingress does not know (OpenAI's 401; the official client raises
    #: `AuthenticationError`).
    AUTHENTICATION = "AuthenticationError"
    #: The API key may not use the model it named (OpenAI's 403; `PermissionDeniedError`).
    PERMISSION_DENIED = "PermissionDeniedError"
    #: The connection did not deliver its request's header in time (`ingress.http`); sent
    #: just before the ingress closes the connection.
    HEADER_TIMEOUT = "RequestTimeoutError"
    #: The request's header is larger than the ingress accepts (`ingress.http`); the
    #: connection is closed after it.
    HEADER_TOO_LARGE = "RequestHeaderFieldsTooLargeError"


#: The one mapping from kind to HTTP status.
STATUS: dict[ErrorKind, int] = {
    ErrorKind.VALIDATION: 400,
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.INVALID_USER_INPUT: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.UNPROCESSABLE: 422,
    ErrorKind.INTERNAL: 500,
    ErrorKind.NOT_IMPLEMENTED: 501,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.QUEUE_FULL: 503,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.BAD_GATEWAY: 502,
    ErrorKind.TIMEOUT: 504,
    ErrorKind.CONFLICT: 409,
    ErrorKind.CLIENT_GONE: 499,
    ErrorKind.AUTHENTICATION: 401,
    ErrorKind.PERMISSION_DENIED: 403,
    ErrorKind.HEADER_TIMEOUT: 408,
    ErrorKind.HEADER_TOO_LARGE: 431,
}


class ErrorInfo(msgspec.Struct, kw_only=True):
    """The inner error object. ``param`` names the offending field (``"model"``, ``"body.messages"``)
    or is null; ``code`` repeats the HTTP status."""

    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(msgspec.Struct, kw_only=True):
    """The current (vLLM >= 0.10.1) error body: ``{"error": ErrorInfo}``."""

    error: ErrorInfo

    @property
    def status(self) -> int:
        """The HTTP status to send this body with."""
        return self.error.code


class LegacyErrorResponse(msgspec.Struct, kw_only=True):
    """The flat error body of vLLM <= 0.10.0: ``{"object": "error", "message", "type", "param", "code"}``."""

    object: str = "error"
    message: str
    type: str
    param: str | None = None
    code: int

    @classmethod
    def from_current(cls, response: ErrorResponse) -> LegacyErrorResponse:
        e = response.error
        return cls(message=e.message, type=e.type, param=e.param, code=e.code)


def error_response(kind: ErrorKind, message: str, param: str | None = None) -> ErrorResponse:
    """Build the error body for ``kind``; ``code`` comes from ``STATUS``."""
    return ErrorResponse(
        error=ErrorInfo(message=message, type=kind.value, param=param, code=STATUS[kind])
    )


def parse_error_body(body: bytes, status: int) -> ErrorInfo:
    """Read an error body from any vLLM-like server, leniently.

    Accepts the nested shape, the legacy flat shape, FastAPI's ``{"detail": ...}`` (unknown route,
    wrong method) and vLLM's ``{"error": "Unauthorized"}``; anything else (including bodies that are
    not JSON) becomes an ``ErrorInfo`` carrying the raw text. Never raises.
    """
    try:
        data: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return ErrorInfo(message=body.decode("utf-8", "replace"), type="", code=status)
    if isinstance(data, dict):
        inner = data.get("error")
        if isinstance(inner, dict):
            data = inner
        elif isinstance(inner, str):
            return ErrorInfo(message=inner, type=inner, code=status)
        elif "detail" in data and "message" not in data:
            return ErrorInfo(message=str(data["detail"]), type="", code=status)
        param = data.get("param")
        code = data.get("code")
        return ErrorInfo(
            message=str(data.get("message", "")),
            type=str(data.get("type") or ""),
            param=param if isinstance(param, str) else None,
            code=code if isinstance(code, int) else status,
        )
    return ErrorInfo(message=str(data), type="", code=status)
