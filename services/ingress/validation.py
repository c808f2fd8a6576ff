"""Checks on what a client sent, before anything is published: size, content type, JSON depth,
JSON, schema, and the caps of `limits` (`services.common.limits`).

Each check returns a value (`ErrorResponse` on failure) instead of raising, and failures are
worded like vLLM's own (reference: vLLM's `RequestValidationError` bodies), so a client sees the
same 400 whether loraroute or vLLM refused the request: `type` "Bad Request", `param`
`body.<field path>`, and a message listing the problem as vLLM does.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from msgspec import UnsetType

from schemas.classify import ClassifyBatchRequest, ClassifyIntentRequest
from schemas.config import Config, Limits
from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.openai import ChatRequestView
from services.common.limits import check_chat, depth_error, too_deep

__all__ = [
    "body_limit",
    "check_content_type",
    "envelope_headroom",
    "parse_chat",
    "parse_classify_batch",
    "parse_classify_intent",
    "too_large",
]


_chat_decoder = msgspec.json.Decoder(ChatRequestView)
_intent_decoder = msgspec.json.Decoder(ClassifyIntentRequest)
_batch_decoder = msgspec.json.Decoder(ClassifyBatchRequest)

#: The caps when a caller names none (tests; every service passes `config.limits`).
_DEFAULT_LIMITS = Limits()

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_INDEX = re.compile(r"\[(\d+)\]")
_BYTE = re.compile(r"\(byte (\d+)\)")
_MISSING = re.compile(r"Object missing required field `([^`]+)`")


def _validation_error(
    kind: str, loc: str, msg: str, input_repr: str, param: str | None = None
) -> ErrorResponse:
    item = {"type": kind, "loc": loc, "msg": msg, "input": input_repr}
    return error_response(ErrorKind.VALIDATION, f"1 validation error:\n  {item!r}", param)


def _loc(path: str) -> str:
    """msgspec's `$.messages[0].role` -> vLLM's `body.messages.0.role`."""
    return "body" + _INDEX.sub(r".\1", path)


def _from_decode_error(error: msgspec.DecodeError) -> ErrorResponse:
    match = _BYTE.search(str(error))
    loc = f"body.{match.group(1)}" if match else "body"
    return _validation_error("json_invalid", loc, "JSON decode error", "{}", loc)


def _from_validation_error(error: msgspec.ValidationError) -> ErrorResponse:
    text = str(error)
    match = _AT.search(text)
    path = match.group("path") if match else ""
    message = text[: match.start()] if match else text
    missing = _MISSING.match(message)
    if missing:
        loc = _loc(f"{path}.{missing.group(1)}")
        return _validation_error("missing", loc, "Field required", "<dict>", loc)
    loc = _loc(path)
    if loc == "body":
        return _validation_error("model_attributes_type", loc, message, "<body>", None)
    return _validation_error("type_error", loc, message, "<value>", loc)


def check_content_type(value: str | None) -> ErrorResponse | None:
    """None when `value` is `application/json` (parameters such as charset allowed), as vLLM
    requires for its JSON routes; else the 400 vLLM sends for other media types."""
    media = (value or "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        return None
    return error_response(
        ErrorKind.VALIDATION,
        "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed",
    )


def too_large(size: int | None, limit: int) -> ErrorResponse:
    """The 413 body for a request of `size` bytes (None: unknown, cut while reading)."""
    what = f"{size} bytes" if size is not None else "more bytes"
    return error_response(
        ErrorKind.TOO_LARGE,
        f"Request body is too large: {what}, the limit is {limit} bytes.",
        "body",
    )


def envelope_headroom(config: Config) -> int:
    """Bytes a NATS message needs beyond the client body: the wire envelope and the route.

    A route may carry the longest system prompt, JSON-escaped (up to 6 bytes per byte for
    control characters, 2 for the usual quotes and backslashes; 2x covers real prompts, and the
    fixed 8 KiB covers the rest of the envelope and the headers).
    """
    longest = max(
        (len((c.system_prompt or "").encode()) for c in config.categories),
        default=0,
    )
    return 8 * 1024 + 2 * longest


def body_limit(max_body_bytes: int, max_payload: int, headroom: int) -> int:
    """The largest body the ingress accepts: the configured limit, or what still fits in one
    NATS message (`max_payload` of the connection minus `headroom`), whichever is smaller.

    A body the bus could not carry must be refused with 413 at the door, not fail later as an
    opaque publish error. Never below 1 KiB, so a tiny `max_payload` still leaves a usable limit
    that is then reported by the first 413 rather than silently breaking every request.
    """
    return max(1024, min(max_body_bytes, max_payload - headroom))


def _decode(body: bytes, decoder: msgspec.json.Decoder[Any], max_depth: int) -> Any:
    """`body` decoded, or the 400 for a body nested too deeply, not JSON, or of the wrong shape.
    Depth is measured before decoding: msgspec's decoder recurses (`RecursionError`)."""
    if too_deep(body, max_depth):
        return depth_error(max_depth)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as error:
        return _from_validation_error(error)
    except msgspec.DecodeError as error:
        return _from_decode_error(error)
    except RecursionError:  # below the cap only when the caller's own stack is already deep
        return depth_error(max_depth)


def parse_chat(body: bytes, limits: Limits = _DEFAULT_LIMITS) -> ChatRequestView | ErrorResponse:
    """Decode and check a chat completion body.

    Returns the view, or the 400 envelope for: nesting deeper than `limits.max_json_depth`,
    not JSON, not an object, wrong field types, `messages` missing (`param: "body.messages"`,
    as vLLM) or empty, or a field beyond its cap in `limits` (`param` names it).
    """
    view = _decode(body, _chat_decoder, limits.max_json_depth)
    if not isinstance(view, ChatRequestView):
        error: ErrorResponse = view
        return error
    if isinstance(view.messages, UnsetType):
        return _validation_error(
            "missing", "body.messages", "Field required", "<dict>", "body.messages"
        )
    if not view.messages:
        return _validation_error(
            "too_short",
            "body.messages",
            "List should have at least 1 item after validation, not 0",
            "[]",
            "body.messages",
        )
    return check_chat(view, limits) or view


def _parse_classify(
    body: bytes, decoder: msgspec.json.Decoder[Any], max_depth: int
) -> Any | ErrorResponse:
    return _decode(body, decoder, max_depth)


def parse_classify_intent(
    body: bytes, max_depth: int = _DEFAULT_LIMITS.max_json_depth
) -> ClassifyIntentRequest | ErrorResponse:
    """Decode `/api/v1/classify/intent`; an empty or blank `text` is a 400 (`param: body.text`),
    as is nesting deeper than `max_depth`."""
    request = _parse_classify(body, _intent_decoder, max_depth)
    if isinstance(request, ClassifyIntentRequest) and not request.text.strip():
        return _validation_error(
            "string_too_short", "body.text", "text must not be empty", "''", "body.text"
        )
    result: ClassifyIntentRequest | ErrorResponse = request
    return result


def parse_classify_batch(
    body: bytes, max_texts: int, max_depth: int = _DEFAULT_LIMITS.max_json_depth
) -> ClassifyBatchRequest | ErrorResponse:
    """Decode `/api/v1/classify/batch`.

    400 when `texts` is empty, longer than `max_texts` (the limit is enforced, and named in the
    message), holds a blank text, or `task_type` is not `intent`, or the body nests deeper
    than `max_depth`.
    """
    request = _parse_classify(body, _batch_decoder, max_depth)
    if not isinstance(request, ClassifyBatchRequest):
        result: ErrorResponse = request
        return result
    if not request.texts:
        return _validation_error(
            "too_short", "body.texts", "texts must hold at least 1 text", "[]", "body.texts"
        )
    if len(request.texts) > max_texts:
        return error_response(
            ErrorKind.BAD_REQUEST,
            f"Too many texts: {len(request.texts)}; one call may classify at most {max_texts} "
            "(ingress.max_classify_texts).",
            "body.texts",
        )
    for index, text in enumerate(request.texts):
        if not text.strip():
            loc = f"body.texts.{index}"
            return _validation_error("string_too_short", loc, "text must not be empty", "''", loc)
    if request.task_type != "intent":
        return error_response(
            ErrorKind.BAD_REQUEST,
            f"task_type {request.task_type!r} is not supported; only 'intent' is.",
            "body.task_type",
        )
    return request
