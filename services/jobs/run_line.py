"""One job line through the pipeline: the checks before the call, the call, and its outcome.

A line is sent to the classifier's job lane as a `RouteChat`, exactly as the ingress sends an
interactive request, and the reply becomes the line's `BatchOutputLine`. Nothing here touches
NATS: the caller passes a `Request` function and stores what `run` returns. An outcome is
either `Done` (store it, then ack the line) or `Retry` (a transient failure: redeliver later,
or dead-letter it after the last delivery, storing `Retry.line`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import msgspec

from schemas.config import Limits
from schemas.errors import ErrorResponse
from schemas.jobs import (
    BATCH_ENDPOINT,
    BatchLineError,
    BatchOutputLine,
    BatchResponse,
    BatchStatus,
    JobLine,
)
from schemas.openai import ChatRequestView
from schemas.wire import (
    ReplyError,
    ReplyHead,
    ReplyResponse,
    Route,
    RouteChat,
    decode_reply,
    encoder,
)
from services.common import tracing
from services.common.bus import RequestMeta
from services.common.limits import check_chat, depth_error, too_deep
from services.common.log import get_logger
from services.jobs.store import line_request_id

__all__ = ["Done", "LineUnreachable", "Outcome", "Request", "Retry", "outcome", "precheck", "run"]

_view_decoder = msgspec.json.Decoder(ChatRequestView)
_error_encoder = msgspec.json.Encoder()
_log = get_logger()
_TOO_LARGE = (
    "the answer is larger than one result can hold (the message bus's payload limit); "
    "ask for fewer choices (n) or tokens"
)
#: The caps when a caller names none (tests; the worker passes `config.limits`).
_DEFAULT_LIMITS = Limits()


class LineUnreachable(Exception):
    """The pipeline gave no answer: nobody listens on the job lane, the line's time ran out, or
    the connection failed. Raised by a `Request` function; always transient. `pipeline_down`
    says the cause is not the line (no classifier, no connection), as opposed to a line that
    ran out of time."""

    def __init__(self, message: str, *, pipeline_down: bool = False) -> None:
        super().__init__(message)
        self.pipeline_down = pipeline_down


#: `request(payload, headers, timeout_s) -> reply payload`; raises `LineUnreachable`.
Request = Callable[[bytes, Mapping[str, str], float], Awaitable[bytes]]


@dataclass(frozen=True)
class Done:
    """The line's final result: store it, then ack the line."""

    line: BatchOutputLine
    route: Route | None = None


@dataclass(frozen=True)
class Retry:
    """A transient failure (`reason`): redeliver the line later. `line` is what to store if this
    was its last delivery. `pipeline_down`: the pipeline could not take the line at all (no
    classifier listening, overloaded, no dispatcher), which says nothing about the line: the
    worker waits for the pipeline rather than spend the line's deliveries."""

    reason: str
    line: BatchOutputLine
    pipeline_down: bool = False


Outcome = Done | Retry


def _failed(line: JobLine, code: str, message: str) -> BatchOutputLine:
    return BatchOutputLine(
        id=line_request_id(line.job_id, line.custom_id),
        custom_id=line.custom_id,
        error=BatchLineError(code=code, message=message),
    )


def _answered(line: JobLine, status: int, body: bytes) -> BatchOutputLine:
    request_id = line_request_id(line.job_id, line.custom_id)
    return BatchOutputLine(
        id=request_id,
        custom_id=line.custom_id,
        response=BatchResponse(status_code=status, request_id=request_id, body=msgspec.Raw(body)),
    )


def precheck(
    line: JobLine, status: BatchStatus | None, now: int, limits: Limits = _DEFAULT_LIMITS
) -> BatchOutputLine | None:
    """The failed output of a line that must not run (None: run it): a line the submitter found
    malformed, one whose batch is cancelled or over (`batch_cancelled`, `batch_expired`), one
    past `expires_at`, a body that is no chat request, a streamed one, or one beyond a cap of
    `limits` (the same check as the ingress's, `services.common.limits`)."""
    if line.error is not None:
        return _failed(line, line.error.code, line.error.message)
    if status in ("cancelling", "cancelled"):
        return _failed(line, "batch_cancelled", "the batch was cancelled before this line ran")
    if status in ("completed", "expired", "failed") or (
        line.expires_at is not None and now >= line.expires_at
    ):
        return _failed(line, "batch_expired", "the batch's completion window ended first")
    if line.url != BATCH_ENDPOINT:
        return _failed(line, "invalid_request", f"lines may only name {BATCH_ENDPOINT}")
    body = bytes(line.body)
    if too_deep(body, limits.max_json_depth):
        return _failed(line, "invalid_request", _message(depth_error(limits.max_json_depth)))
    try:
        view = _view_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        return _failed(line, "invalid_request", f"invalid chat request: {error}")
    if view.stream:
        return _failed(line, "invalid_request", "batch lines cannot stream (`stream: true`)")
    refused = check_chat(view, limits)
    if refused is not None:
        return _failed(line, "invalid_request", _message(refused))
    return None


def _transient(status: int) -> bool:
    return status == 429 or status >= 500


def _pipeline_down(status: int) -> bool:
    """429 (a full job lane) and 503 (no dispatcher, vLLM unavailable) are the pipeline's
    state, not the line's doing; 500, 502 and 504 may be the line's own."""
    return status in (429, 503)


def outcome(line: JobLine, payload: bytes) -> Outcome:
    """What a reply from the pipeline means for `line`: 200 and other answers vLLM or the
    router gave are final; 429 and 5xx (overloaded, no dispatcher, vLLM down) are transient."""
    try:
        reply = decode_reply(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        _log.warning("unreadable_reply", request_id=_request_id(line), error=str(error))
        return Done(_failed(line, "bad_gateway", "the router received an unreadable answer"))
    if isinstance(reply, ReplyResponse):
        answered = _answered(line, reply.status, bytes(reply.body))
        if _transient(reply.status):
            down = _pipeline_down(reply.status)
            return Retry(f"vLLM answered {reply.status}", answered, pipeline_down=down)
        return Done(answered, reply.route)
    if isinstance(reply, ReplyError):
        answered = _answered(line, reply.status, _error_encoder.encode(reply.error))
        if _transient(reply.status):
            reason = f"{reply.status}: {_message(reply.error)}"
            return Retry(reason, answered, pipeline_down=_pipeline_down(reply.status))
        return Done(answered, reply.route)
    if isinstance(reply, ReplyHead) and reply.whole:
        # An answer too large for one NATS message comes in pieces; one result must be one.
        return Done(_failed(line, "response_too_large", _TOO_LARGE))
    _log.warning("unexpected_reply", request_id=_request_id(line), kind=type(reply).__name__)
    return Done(_failed(line, "bad_gateway", "the router answered the line out of order"))


def _request_id(line: JobLine) -> str:
    return line_request_id(line.job_id, line.custom_id)


def _message(error: ErrorResponse) -> str:
    return error.error.message


async def run(line: JobLine, request: Request, *, timeout_s: float) -> Outcome:
    """Send `line` (already past `precheck`) through the job lane and read the answer.

    The line's deadline is `timeout_s` from now, or its `expires_at` when sooner; running out
    of time before `expires_at` is transient, reaching `expires_at` is final (`batch_expired`).
    """
    now = time.time()
    budget = timeout_s
    if line.expires_at is not None:
        budget = min(budget, line.expires_at - now)
    request_id = line_request_id(line.job_id, line.custom_id)
    with tracing.span(
        "job line",
        kind="producer",
        attributes={"loraroute.request_id": request_id, "loraroute.batch_id": line.job_id},
    ) as span:
        meta = RequestMeta(
            request_id=request_id,
            deadline_ms=int((now + budget) * 1000),
            traceparent=tracing.traceparent(None),
        )
        payload = encoder.encode(RouteChat(body=line.body))
        try:
            reply = await request(payload, meta.to_headers(), budget)
        except LineUnreachable as error:
            tracing.mark_error(span, str(error))
            if line.expires_at is not None and time.time() >= line.expires_at:
                return Done(_failed(line, "batch_expired", "the batch's completion window ended"))
            return Retry(
                str(error),
                _failed(line, "unavailable", str(error)),
                pipeline_down=error.pipeline_down,
            )
    return outcome(line, reply)
