"""Test doubles for the classifier worker: a keyword `Backend` behind the real seam, a word-level
tokenizer, and an ingress stand-in (`Caller`) that speaks the classify subject's protocol."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import msgspec
import numpy as np
import tokenizers
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.wire import RouteChat, encoder
from services.classifier.backend import Prediction
from services.classifier.errors import BackendError
from services.classifier.tokens import Encoded, Tokenizer
from services.common import bus
from services.common.subjects import Subjects

__all__ = ["LABELS", "Caller", "KeywordBackend", "chat", "keyword_tokenizer"]

LABELS = ("technical", "medical", "legal", "general")
_VOCAB = ["[PAD]", "[UNK]", "code", "blood", "law", "hello", "block", "fail", "maybe"]


class KeywordBackend:
    """A `Backend` that answers by keyword: code/blood/law/hello -> technical/medical/legal/
    general at 0.9; `maybe` -> technical at 0.4 (below the threshold); `block` waits for
    `gate`; `fail` raises `BackendError`."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []

    @property
    def labels(self) -> tuple[str, ...]:
        return LABELS

    @property
    def max_batch_size(self) -> int:
        return 64

    def health(self) -> bool:
        return True

    def predict(self, batch: Encoded) -> list[Prediction]:
        self.batches.append(len(batch))
        out = []
        for row in batch.input_ids:
            words = {_VOCAB[i] for i in row}
            if "block" in words:
                self.gate.wait(10)
            if "fail" in words:
                raise BackendError("forward pass failed")
            probs = np.full(4, 0.1 / 3, dtype=np.float32)
            best = 3
            for k, word in enumerate(["code", "blood", "law", "hello"]):
                if word in words:
                    best = k
            probs[best] = 0.9
            if "maybe" in words:
                probs = np.array([0.4, 0.3, 0.2, 0.1], dtype=np.float32)
                best = 0
            out.append(Prediction(LABELS[best], best, float(probs[best]), probs))
        return out


def keyword_tokenizer() -> Tokenizer:
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(_VOCAB)}, unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return Tokenizer(tok, max_length=16)


class Caller:
    """An ingress stand-in: one wildcard inbox, replies collected per token."""

    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self.nc = nc
        self.subjects = subjects
        self.inbox = f"_INBOX.{uuid.uuid4().hex}"
        self.replies: dict[str, asyncio.Queue[Msg]] = {}

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_reply)
        await self.nc.flush()

    async def _on_reply(self, msg: Msg) -> None:
        self.replies.setdefault(msg.subject, asyncio.Queue()).put_nowait(msg)

    async def send(
        self,
        payload: bytes,
        *,
        deadline_s: float = 5.0,
        request_id: str | None = None,
        subject: str | None = None,
    ) -> str:
        """Publish `payload` to `subject` (default: the classify subject); returns its inbox."""
        reply = f"{self.inbox}.{uuid.uuid4().hex}"
        self.replies[reply] = asyncio.Queue()
        meta = bus.RequestMeta(
            request_id=request_id or uuid.uuid4().hex, deadline_ms=bus.deadline_after(deadline_s)
        )
        await self.nc.publish(
            subject or self.subjects.classify, payload, reply=reply, headers=meta.to_headers()
        )
        return reply

    async def reply(self, reply: str, timeout: float = 5.0) -> Msg:
        return await asyncio.wait_for(self.replies[reply].get(), timeout)


def chat(text: str | None, model: str = "MoM", **extra: Any) -> bytes:
    """A `RouteChat` message for one user turn (none when `text` is None)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [] if text is None else [{"role": "user", "content": text}],
    }
    body.update(extra)
    return encoder.encode(RouteChat(body=msgspec.Raw(msgspec.json.encode(body))))
