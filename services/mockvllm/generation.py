"""What the mock "generates": deterministic text per (model, prompt), or an echo of the request.

Text mode: the same weights (model or adapter path) and prompt always give the same tokens, and
different weights give different ones, so a test can tell by the text which adapter answered, as it can with a
real vLLM serving distinct adapters. Echo mode: the reply is the received request body as JSON, so a
test can assert exactly what vLLM would have seen (model, messages with any injected system prompt,
``chat_template_kwargs``, ``reasoning_effort``, ...).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from schemas.openai import ChatMessage

__all__ = [
    "Generation",
    "count_tokens",
    "echo_tokens",
    "generate",
    "message_text",
    "render_chat",
]

_WORDS = [
    "the",
    "server",
    "data",
    "request",
    "model",
    "adapter",
    "route",
    "queue",
    "token",
    "stream",
    "patient",
    "dose",
    "clinic",
    "symptom",
    "contract",
    "clause",
    "court",
    "liability",
    "kernel",
    "cache",
    "thread",
    "socket",
    "latency",
    "batch",
    "signal",
    "vector",
    "index",
    "policy",
    "review",
    "answer",
    "value",
    "field",
    "record",
    "system",
    "network",
    "memory",
    "process",
    "state",
    "event",
    "market",
    "report",
    "design",
    "module",
    "config",
    "error",
    "result",
    "version",
    "update",
    "option",
    "source",
    "target",
    "layer",
    "weight",
]
#: The words as tokens, made once: every choice's tokens share these strings.
_SPACED = tuple(" " + word for word in _WORDS)
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True, slots=True)
class Generation:
    """The tokens of one choice, and why generation stopped (``"stop"`` or ``"length"``)."""

    tokens: list[str]
    finish_reason: str
    stop_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def message_text(message: ChatMessage) -> str:
    """The text of a message: its string content, or its text parts joined."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))


def render_chat(messages: Sequence[ChatMessage], add_generation_prompt: bool = True) -> str:
    """The prompt as a simple chat template would render it (the tiny test model's template)."""
    parts = ["<s>"] + [f"<|{m.role}|>\n{message_text(m)}<|end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|assistant|>\n")
    return "".join(parts)


def count_tokens(text: str) -> int:
    """A stand-in tokenizer: words and punctuation marks each count as one token."""
    return len(_TOKEN_RE.findall(text))


def _stream(seed: bytes) -> bytes:
    return hashlib.sha256(seed).digest() + hashlib.sha256(seed + b"\x01").digest()


def generate(
    weights: str,
    prompt: str,
    *,
    max_tokens: int | None,
    ignore_eos: bool = False,
    min_tokens: int = 0,
    choice: int = 0,
    length_range: tuple[int, int] = (8, 24),
    stop: Sequence[str] = (),
) -> Generation:
    """Deterministic tokens for the model whose weights are at ``weights`` (a path) and ``prompt``.

    Without ``ignore_eos`` the "natural" length is drawn from ``length_range`` by the same hash, and
    ``max_tokens`` below it ends the choice with ``"length"``; with ``ignore_eos`` exactly
    ``max_tokens`` tokens come out (``"length"``). A ``stop`` string ends the text before it (``"stop"``,
    ``stop_reason`` = that string), as vLLM does when ``include_stop_str_in_output`` is false.
    """
    digest = hashlib.sha256(f"{weights}\0{choice}\0{prompt}".encode()).digest()
    lo, hi = length_range
    natural = lo + int.from_bytes(digest[:4], "big") % max(1, hi - lo + 1)
    natural = max(natural, min_tokens)
    if (ignore_eos and max_tokens is not None) or (max_tokens is not None and max_tokens < natural):
        count, finish = max_tokens, "length"
    else:
        count, finish = natural, "stop"
    tokens: list[str] = []
    block = b""
    for i in range(count):
        if i % 64 == 0:
            block = _stream(digest + i.to_bytes(4, "big"))
        tokens.append(_SPACED[block[i % 64] % len(_SPACED)])
    for s in stop:
        text = "".join(tokens)
        at = text.find(s) if s else -1
        if at >= 0:
            kept, total = [], 0
            for t in tokens:
                if total + len(t) > at:
                    if at - total > 0:
                        kept.append(t[: at - total])
                    break
                kept.append(t)
                total += len(t)
            return Generation(kept, "stop", s)
    return Generation(tokens, finish)


def echo_tokens(body: bytes, piece: int = 16) -> list[str]:
    """The request body (JSON text as received) cut into fixed-size pieces, one per "token"."""
    text = body.decode("utf-8", "replace")
    return [text[i : i + piece] for i in range(0, len(text), piece)] or [""]
