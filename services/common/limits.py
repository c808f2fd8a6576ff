"""The caps of `limits` on what one chat request may ask: the one check every entry point runs.

The ingress runs it on `/v1/chat/completions` (and the depth check on every JSON body), the
jobs worker on each Batch API line before the line enters the pipeline, so a request is held
to the same caps however it arrives. Each refusal is a 400 `BadRequestError` naming the field
in `param`, worded like vLLM's own checks (`n must be at most 16384, got 20000.`).

Depth comes first and without a parser: msgspec (like every recursive JSON decoder) raises
`RecursionError` near 1000 levels, so a body must be measured before anything decodes it.
`too_deep` reads only the brackets, quotes and backslashes, in C (`bytes.translate`, numpy);
`loadtest/bench_limits.py` measures it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from msgspec import UnsetType
from numpy.typing import NDArray

from schemas.config import Limits
from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.openai import ChatRequestView

__all__ = ["check_chat", "depth_error", "too_deep"]

#: `translate` table: 1 for the bytes the scan reads (brackets, quotes, backslashes), else 0.
_MARK = bytes(1 if byte in b'[]{}"\\' else 0 for byte in range(256))
#: `translate` deletion: every byte but brackets, quotes and backslashes.
_UNMARKED = bytes(byte for byte in range(256) if byte not in b'[]{}"\\')
#: +1 for an opening bracket, -1 for a closing one, 0 for the rest.
_STEP = np.zeros(256, dtype=np.int8)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


def _real_quotes(positions: NDArray[np.intp], marks: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Which of the marked bytes are quotes that open or close a string (not `\\"`): in a run
    of backslashes the 1st, 3rd, ... escapes the byte after it."""
    backslash = marks == ord("\\")
    adjacent = np.zeros(len(positions), dtype=np.bool_)
    adjacent[1:] = positions[1:] == positions[:-1] + 1
    continues = np.zeros(len(positions), dtype=np.bool_)
    continues[1:] = backslash[:-1]
    starts = backslash & ~(continues & adjacent)
    index = np.arange(len(positions))
    first = np.maximum.accumulate(np.where(starts, index, 0))
    escapes = backslash & ((index - first) % 2 == 0)
    escaped = np.zeros(len(positions), dtype=np.bool_)
    escaped[1:] = escapes[:-1] & adjacent[1:]
    result: NDArray[np.bool_] = (marks == ord('"')) & ~escaped
    return result


def too_deep(body: bytes, max_depth: int) -> bool:
    """True when arrays and objects in `body` nest deeper than `max_depth` (the top-level
    object is level 1). Brackets inside strings do not count. For text that is not JSON the
    answer is a guess; the decoder that runs next reports such a body.

    One pass in C (`bytes.translate`) keeps the brackets, quotes and backslashes; a body with no
    more opening brackets than `max_depth` ends there. Without escaped quotes (`\\"`) every quote
    opens or closes a string, and numpy sums the brackets outside them; with them, which quotes
    are real depends on the backslashes before them, read from their positions in `body`."""
    kept = body.translate(None, _UNMARKED)
    if kept.count(b"[") + kept.count(b"{") <= max_depth:  # no deeper than its openers
        return False
    if b'\\"' in kept:  # maybe escaped quotes (or an escape next to a closing quote)
        positions = np.flatnonzero(np.frombuffer(body.translate(_MARK), dtype=np.bool_))
        marks = np.frombuffer(body, dtype=np.uint8)[positions]
        quotes = _real_quotes(positions, marks)
    else:
        marks = np.frombuffer(kept, dtype=np.uint8)
        quotes = marks == ord('"')
    outside = (np.cumsum(quotes, dtype=np.int32) & 1) == 0
    depth = np.cumsum(_STEP[marks] * outside, dtype=np.int32)
    return int(depth.max(initial=0)) > max_depth


def depth_error(max_depth: int) -> ErrorResponse:
    """The 400 for a body nested deeper than `max_depth`."""
    return error_response(
        ErrorKind.BAD_REQUEST,
        f"The JSON body nests arrays and objects deeper than {max_depth} levels.",
        "body",
    )


def _as_int(value: Any) -> int | None:
    """`value` as the integer vLLM would read (pydantic's lax mode: `2`, `2.0`, `"2"`, `true`);
    None for anything vLLM refuses itself (its 400 then reaches the client unchanged)."""
    if isinstance(value, bool | int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _over(name: str, value: Any, cap: int) -> ErrorResponse | None:
    number = _as_int(value)
    if number is None or number <= cap:
        return None
    return error_response(
        ErrorKind.BAD_REQUEST,
        f"{name} must be at most {cap}, got {number}. (parameter={name}, value={number})",
        name,
    )


def check_chat(view: ChatRequestView, limits: Limits) -> ErrorResponse | None:
    """None when `view` is within `limits`, else the 400 naming the first field beyond its cap
    (`messages`, `n`, `max_tokens`, `max_completion_tokens`, `min_tokens`, in that order)."""
    if not isinstance(view.messages, UnsetType) and len(view.messages) > limits.max_messages:
        count = len(view.messages)
        return error_response(
            ErrorKind.BAD_REQUEST,
            f"messages may hold at most {limits.max_messages} messages, got {count}. "
            f"(parameter=messages, value={count})",
            "messages",
        )
    return (
        _over("n", view.n, limits.max_n)
        or _over("max_tokens", view.max_tokens, limits.max_tokens)
        or _over("max_completion_tokens", view.max_completion_tokens, limits.max_tokens)
        or _over("min_tokens", view.min_tokens, limits.max_min_tokens)
    )
