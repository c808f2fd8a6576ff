"""Helpers for the conformance tests: SSE framing and greedy sampling fields."""

from __future__ import annotations

import httpx

__all__ = ["greedy", "sse_payloads"]


def sse_payloads(response: httpx.Response) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking vLLM's framing: every event is exactly one
    ``data: ...`` line followed by a blank line."""
    body = response.text
    assert body.endswith("\n\n"), body[-200:]
    events = body[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: ") :] for e in events]


def greedy(max_tokens: int = 8, **extra: object) -> dict[str, object]:
    """Sampling fields that make a real model's output exact and repeatable."""
    return {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, **extra}
