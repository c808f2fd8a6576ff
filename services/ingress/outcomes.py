"""What a request ends as, before it becomes an HTTP response: three plain values.

`routes.py` turns each into a response; nothing here knows the HTTP framework.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.wire import Route

__all__ = ["ErrorAnswer", "JsonAnswer", "Outcome", "StreamAnswer", "error_answer"]


@dataclass(slots=True)
class JsonAnswer:
    """A whole JSON body (vLLM's, verbatim) and its status."""

    status: int
    body: bytes
    route: Route | None = None


@dataclass(slots=True)
class ErrorAnswer:
    """An error in vLLM's envelope. `retry_after` (seconds) is sent as `Retry-After`."""

    status: int
    error: ErrorResponse
    route: Route | None = None
    retry_after: int | None = None


@dataclass(slots=True)
class StreamAnswer:
    """An SSE stream whose head has arrived. The caller must await `release()` when the response
    is over, however it ends (the stream may never be iterated if the client left first); a
    release before the stream's end cancels the request upstream."""

    chunks: AsyncIterator[bytes]
    release: Callable[[], Awaitable[None]]
    route: Route | None = None
    status: int = 200
    extra_headers: dict[str, str] = field(default_factory=dict)


Outcome = JsonAnswer | ErrorAnswer | StreamAnswer


def error_answer(
    kind: ErrorKind, message: str, param: str | None = None, *, retry_after: int | None = None
) -> ErrorAnswer:
    """An `ErrorAnswer` for one of our own error kinds (status from `schemas.errors.STATUS`)."""
    error = error_response(kind, message, param)
    return ErrorAnswer(error.status, error, retry_after=retry_after)
