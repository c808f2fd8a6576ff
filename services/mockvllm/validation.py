"""Request bodies to typed requests, with vLLM's 400 answers (FastAPI + pydantic wording).

vLLM validates bodies with pydantic behind FastAPI; failures become 400 ``"Bad Request"`` with the
message ``"<N> validation error(s):\\n  {<pydantic error dict>}..."`` and ``param`` = the first error's
location (``body.messages``). msgspec stops at the first error, so this module re-validates after
each top-level error to collect them all, and words each the way pydantic does for the common cases
(missing field, wrong scalar type, list/object expected). Nested errors inside ``messages`` are
reported at their path but not in pydantic's per-union-member detail.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

import msgspec

from schemas.errors import ErrorKind, ErrorResponse, error_response

__all__ = ["check_content_type", "decode_request"]

T = TypeVar("T", bound=msgspec.Struct)

_MISSING = re.compile(
    r"^Object missing required field `(?P<field>[^`]+)`(?: - at `(?P<at>[^`]+)`)?$"
)
_EXPECTED = re.compile(
    r"^Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`(?: - at `(?P<at>[^`]+)`)?$"
)
_PATH_PART = re.compile(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]")

# pydantic's (type, message) per expected JSON type: (when given a string, otherwise)
_TYPE_ERRORS: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "int": (
        ("int_parsing", "Input should be a valid integer, unable to parse string as an integer"),
        ("int_type", "Input should be a valid integer"),
    ),
    "float": (
        ("float_parsing", "Input should be a valid number, unable to parse string as a number"),
        ("float_type", "Input should be a valid number"),
    ),
    "bool": (
        ("bool_parsing", "Input should be a valid boolean, unable to interpret input"),
        ("bool_type", "Input should be a valid boolean"),
    ),
    "str": (("string_type", "Input should be a valid string"),) * 2,
    "array": (("list_type", "Input should be a valid list"),) * 2,
    "object": (("dict_type", "Input should be a valid dictionary"),) * 2,
}

UNSUPPORTED_MEDIA_TYPE = "Unsupported Media Type: Only 'application/json' is allowed"


def check_content_type(content_type: str | None) -> ErrorResponse | None:
    """vLLM accepts JSON POST bodies only with ``Content-Type: application/json``."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        return None
    return _validation_error([UNSUPPORTED_MEDIA_TYPE], param=None)


def _summary(value: Any) -> str:
    if isinstance(value, dict):
        return f"'<dict of {len(value)} items>'"
    if isinstance(value, list):
        return f"'<list of {len(value)} items>'"
    return repr(value)


def _walk(data: Any, at: str | None) -> tuple[list[str | int], Any]:
    parts: list[str | int] = []
    value = data
    for name, index in _PATH_PART.findall((at or "$")[1:]):
        key: str | int = name if name else int(index)
        parts.append(key)
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            value = None
    return parts, value


def _pydantic_line(kind: str, loc: list[str | int], msg: str, value: Any) -> str:
    where = ".".join(["body", *map(str, loc)])
    return f"{{'type': '{kind}', 'loc': '{where}', 'msg': '{msg}', 'input': {_summary(value)}}}"


def _validation_error(lines: list[str], param: str | None) -> ErrorResponse:
    shown = lines[:10]
    if len(lines) > 10:
        shown.append(f"...and {len(lines) - 10} more errors")
    head = "1 validation error:" if len(lines) == 1 else f"{len(lines)} validation errors:"
    return error_response(ErrorKind.VALIDATION, "\n  ".join([head, *shown]), param=param)


def _describe(error: msgspec.ValidationError, data: Any) -> tuple[list[str | int], str]:
    """One msgspec error as (location, pydantic-style line)."""
    text = str(error)
    m = _MISSING.match(text)
    if m:
        parent, value = _walk(data, m["at"])
        loc = [*parent, m["field"]]
        return loc, _pydantic_line("missing", loc, "Field required", value)
    m = _EXPECTED.match(text)
    if m:
        loc, value = _walk(data, m["at"])
        expected = m["expected"].split(" | ")[0]
        kind, msg = _TYPE_ERRORS.get(expected, _TYPE_ERRORS["object"])[
            0 if isinstance(value, str) else 1
        ]
        return loc, _pydantic_line(kind, loc, msg, value)
    loc, value = _walk(data, text.rsplit("- at `", 1)[1].rstrip("`") if "- at `" in text else None)
    return loc, _pydantic_line("value_error", loc, text.split(" - at ")[0], value)


def decode_request(body: bytes, kind: type[T]) -> T | ErrorResponse:
    """Decode ``body`` into ``kind``, or return vLLM's 400 for it. Unknown fields are ignored;
    numeric strings are accepted for numbers (pydantic's lax mode)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        pos = getattr(exc, "pos", getattr(exc, "start", 0))
        detail = getattr(exc, "msg", None) or str(exc)
        line = (
            f"{{'type': 'json_invalid', 'loc': 'body.{pos}', 'msg': 'JSON decode error', "
            f"'input': '<dict of 0 items>', 'ctx': {{'error': {detail!r}}}}}"
        )
        return _validation_error([line], param=f"body.{pos}")
    if not isinstance(data, dict):
        line = (
            "{'type': 'model_attributes_type', 'loc': 'body', 'msg': 'Input should be a valid "
            f"dictionary or object to extract fields from', 'input': {_summary(data)}}}"
        )
        return _validation_error([line], param="body")
    fields = {f.name: f for f in msgspec.structs.fields(kind)}
    order = {name: i for i, name in enumerate(fields)}
    found: list[tuple[list[str | int], str]] = []
    attempt: dict[str, Any] = dict(data)
    for _ in range(len(fields) + 1):
        try:
            result = msgspec.convert(attempt, kind, strict=False)
        except msgspec.ValidationError as exc:
            loc, line = _describe(exc, data)
            found.append((loc, line))
            # pydantic reports every field; msgspec stops at the first. Repair the failing top-level
            # field (drop an optional one, stub a missing required one) and look again.
            top = loc[0] if len(loc) == 1 and isinstance(loc[0], str) else None
            if top is None or top not in fields:
                break
            if not fields[top].required:
                attempt.pop(top, None)
            elif top not in attempt and (stub := _stub(fields[top].type)) is not None:
                attempt[top] = stub
            else:
                break
            continue
        if not found:
            return result
        break
    found.sort(key=lambda item: order.get(str(item[0][0]), len(order)) if item[0] else -1)
    param = "body." + ".".join(map(str, found[0][0])) if found[0][0] else "body"
    return _validation_error([line for _, line in found], param=param)


def _stub(annotation: Any) -> Any:
    """A value of the field's type, to stand in for a missing required field while re-checking."""
    candidates: tuple[Any, ...] = ([], "")
    for candidate in candidates:
        try:
            msgspec.convert(candidate, annotation)
        except msgspec.ValidationError:
            continue
        return candidate
    return None
