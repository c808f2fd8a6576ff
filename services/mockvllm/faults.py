"""Fault injection: which inference request fails, and how.

A fault is written ``KIND@WHEN[,after=K]``:

- KIND ``500`` / ``503``: a JSON error before any byte of the answer (vLLM's ``GenerationError`` /
  retryable error); ``stream-500`` / ``stream-503``: HTTP 200, K content chunks, then one in-band
  ``data: {"error": ...}`` frame and ``data: [DONE]`` (a non-streaming request gets the JSON error);
  ``drop``: the connection is cut after K content chunks, no ``[DONE]`` (non-streaming: before the
  response); ``hang``: no answer until the client goes away.
- WHEN ``N``: the N-th inference request (chat or completion, counted from 1 since start or since the
  plan was last replaced); ``%N``: every N-th; ``*``: every request; ``~TEXT``: every request whose
  prompt contains ``TEXT`` (letters, digits, ``_`` and ``-``), e.g. one poison line of a batch.
- ``after=K``: content chunks sent before a stream fault (default 1).

The first matching fault wins. Requests refused before they are counted (validation, unknown model,
admission 503) do not advance the count.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.errors import ErrorKind, ErrorResponse, error_response

__all__ = ["Fault", "FaultKind", "FaultPlan", "fault_error", "parse_fault"]


class FaultKind(enum.Enum):
    ERROR_500 = "500"
    ERROR_503 = "503"
    STREAM_500 = "stream-500"
    STREAM_503 = "stream-503"
    DROP = "drop"
    HANG = "hang"


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    nth: int | None = None  # the N-th request
    every: int | None = None  # every N-th request (1 = all)
    after: int = 1
    marker: str | None = None  # every request whose prompt contains it

    def __str__(self) -> str:
        when = (
            f"~{self.marker}"
            if self.marker is not None
            else f"%{self.every}"
            if self.every not in (None, 1)
            else "*"
            if self.every
            else str(self.nth)
        )
        return f"{self.kind.value}@{when}" + (f",after={self.after}" if self.after != 1 else "")

    def matches(self, request_no: int, prompt: str = "") -> bool:
        if self.marker is not None:
            return self.marker in prompt
        if self.nth is not None:
            return request_no == self.nth
        assert self.every is not None
        return request_no % self.every == 0


_SPEC = re.compile(
    r"^(?P<kind>[a-z0-9-]+)@(?P<when>\*|%?\d+|~[A-Za-z0-9_-]+)(?:,after=(?P<after>\d+))?$"
)


def parse_fault(spec: str) -> Fault:
    """Parse one ``KIND@WHEN[,after=K]``; raises ``ValueError`` with the reason on a bad spec."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise ValueError(
            f"bad fault {spec!r}: expected KIND@N, KIND@%N, KIND@* or KIND@~TEXT [,after=K]"
        )
    try:
        kind = FaultKind(m["kind"])
    except ValueError:
        kinds = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"bad fault {spec!r}: kind must be one of {kinds}") from None
    when, after = m["when"], int(m["after"] or 1)
    if when == "*":
        return Fault(kind, every=1, after=after)
    if when.startswith("~"):
        return Fault(kind, marker=when[1:], after=after)
    number = int(when.lstrip("%"))
    if number < 1:
        raise ValueError(f"bad fault {spec!r}: N counts from 1")
    if when.startswith("%"):
        return Fault(kind, every=number, after=after)
    return Fault(kind, nth=number, after=after)


def fault_error(kind: FaultKind) -> ErrorResponse:
    """The error vLLM sends for a 500- or 503-class failure (JSON body or in-band frame)."""
    if kind in (FaultKind.ERROR_503, FaultKind.STREAM_503):
        return error_response(ErrorKind.UNAVAILABLE, "Request failed; please retry")
    return error_response(ErrorKind.INTERNAL, "Internal server error")


class FaultPlan:
    """Counts inference requests and says which fault, if any, hits each one."""

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self.faults: tuple[Fault, ...] = tuple(faults)
        self.count = 0

    def replace(self, faults: Iterable[Fault]) -> None:
        """Install a new plan and restart the count, so ``@1`` means the next request."""
        self.faults = tuple(faults)
        self.count = 0

    def next_request(self, prompt: str = "") -> Fault | None:
        """Count one more request (whose prompt text is `prompt`) and return the fault that
        hits it."""
        self.count += 1
        return next((f for f in self.faults if f.matches(self.count, prompt)), None)
