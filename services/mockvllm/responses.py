"""How an admitted request looks on the wire: vLLM's response bodies and SSE frames.

A `Job` is one request with its generated tokens. `chat_body` and `completion_body` render it
whole; `chat_frames` and `completion_frames` render it as SSE frames, one per token, with the
inter-token delay between steps, and apply the job's stream fault at its chunk: an in-band error
frame then ``[DONE]``, or `ConnectionDropped` raised for the server to cut the connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
from msgspec import UNSET, UnsetType

from schemas.errors import ErrorResponse
from schemas.openai import (
    ChatCompletionChunk,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    CompletionChoice,
    CompletionChunk,
    CompletionChunkChoice,
    CompletionResponse,
    DeltaMessage,
    ResponseMessage,
    Usage,
)
from services.mockvllm.faults import Fault, FaultKind, fault_error
from services.mockvllm.generation import Generation

__all__ = [
    "ConnectionDropped",
    "Job",
    "chat_body",
    "chat_frames",
    "completion_body",
    "completion_frames",
]

_DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.Encoder().encode


class ConnectionDropped(Exception):
    """Raised inside a response to make the server cut the connection (the "drop" fault)."""


class _InBandError(Exception):
    def __init__(self, kind: FaultKind) -> None:
        super().__init__(kind.value)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Job:
    """One admitted request: its identity, its tokens, and how its stream is to look."""

    id: str
    model: str
    created: int
    prompt_tokens: int
    generations: list[Generation]
    fingerprint: str
    fault: Fault | None = None
    include_usage: bool = False
    continuous_usage: bool = False

    def usage(self, details: bool) -> Usage:
        """Totals over all choices; ``details`` adds the explicit nulls of full bodies."""
        completion = sum(len(g.tokens) for g in self.generations)
        usage = Usage(
            prompt_tokens=self.prompt_tokens,
            total_tokens=self.prompt_tokens + completion,
            completion_tokens=completion,
        )
        if details:
            usage.prompt_tokens_details = usage.completion_tokens_details = None
        return usage


def chat_body(job: Job) -> ChatCompletionResponse:
    return ChatCompletionResponse(
        id=job.id,
        created=job.created,
        model=job.model,
        choices=[
            Choice(
                index=i,
                message=ResponseMessage(content=g.text),
                finish_reason=g.finish_reason,
                stop_reason=g.stop_reason,
            )
            for i, g in enumerate(job.generations)
        ],
        system_fingerprint=job.fingerprint,
        usage=job.usage(details=True),
    )


def completion_body(job: Job) -> CompletionResponse:
    return CompletionResponse(
        id=job.id,
        created=job.created,
        model=job.model,
        choices=[
            CompletionChoice(
                index=i, text=g.text, finish_reason=g.finish_reason, stop_reason=g.stop_reason
            )
            for i, g in enumerate(job.generations)
        ],
        system_fingerprint=job.fingerprint,
        usage=job.usage(details=True),
    )


def _frame(chunk: msgspec.Struct) -> bytes:
    return b"data: " + _encode(chunk) + b"\n\n"


async def _steps(job: Job, itl_s: float) -> AsyncIterator[tuple[int, str, str | None]]:
    """(choice, token text, finish reason on its last token) in vLLM's interleaved order, waiting
    ``itl_s`` between steps; raises for the job's stream fault when its chunk comes."""
    longest = max(1, *(len(g.tokens) for g in job.generations))
    sent = 0
    for step in range(longest):
        if step and itl_s:
            await asyncio.sleep(itl_s)
        for i, g in enumerate(job.generations):
            tokens = g.tokens or [""]  # a choice always ends with a chunk carrying finish_reason
            if step >= len(tokens):
                continue
            if job.fault is not None and sent == job.fault.after:
                _raise(job.fault)
            yield i, tokens[step], g.finish_reason if step == len(tokens) - 1 else None
            sent += 1
    if job.fault is not None:  # after=K beyond the last chunk: fail before [DONE]
        _raise(job.fault)


def _raise(fault: Fault) -> None:
    if fault.kind is FaultKind.DROP:
        raise ConnectionDropped
    raise _InBandError(fault.kind)


def _error_frame(error: ErrorResponse) -> bytes:
    return _frame(error) + _DONE


async def chat_frames(job: Job, itl_s: float) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` frames: role chunks, token chunks, [usage chunk], ``[DONE]``."""
    done = [0] * len(job.generations)

    def chunk(choice: ChunkChoice, **fields: object) -> bytes:
        running: Usage | UnsetType = UNSET
        if job.continuous_usage:
            n = done[choice.index]
            running = Usage(
                prompt_tokens=job.prompt_tokens,
                total_tokens=job.prompt_tokens + n,
                completion_tokens=n,
                completion_tokens_details=None,
            )
        head = {"id": job.id, "created": job.created, "model": job.model}
        return _frame(ChatCompletionChunk(**head, choices=[choice], usage=running, **fields))  # type: ignore[arg-type]

    for i in range(len(job.generations)):
        role = ChunkChoice(index=i, delta=DeltaMessage(role="assistant", content=""))
        yield chunk(role, prompt_token_ids=None, prompt_text=None)
    try:
        async for i, text, finish in _steps(job, itl_s):
            done[i] += 1 if job.generations[i].tokens else 0
            choice = ChunkChoice(
                index=i, delta=DeltaMessage(content=text), finish_reason=finish, token_ids=None
            )
            if finish is None:
                yield chunk(choice)
                continue
            choice.stop_reason = job.generations[i].stop_reason
            yield chunk(choice, system_fingerprint=UNSET if job.include_usage else job.fingerprint)
    except _InBandError as exc:
        yield _error_frame(fault_error(exc.kind))
        return
    if job.include_usage:
        yield _frame(
            ChatCompletionChunk(
                id=job.id,
                created=job.created,
                model=job.model,
                choices=[],
                usage=job.usage(details=False),
                system_fingerprint=job.fingerprint,
            )
        )
    yield _DONE


async def completion_frames(job: Job, itl_s: float) -> AsyncIterator[bytes]:
    """``text_completion`` frames: token chunks (no role chunk), [usage chunk], ``[DONE]``."""
    try:
        async for i, text, finish in _steps(job, itl_s):
            last = finish is not None
            choice = CompletionChunkChoice(
                index=i,
                text=text,
                finish_reason=finish,
                stop_reason=job.generations[i].stop_reason if last else None,
            )
            yield _frame(
                CompletionChunk(
                    id=job.id,
                    created=job.created,
                    model=job.model,
                    choices=[choice],
                    system_fingerprint=job.fingerprint if last and not job.include_usage else UNSET,
                )
            )
    except _InBandError as exc:
        yield _error_frame(fault_error(exc.kind))
        return
    if job.include_usage:
        yield _frame(
            CompletionChunk(
                id=job.id,
                created=job.created,
                model=job.model,
                choices=[],
                usage=job.usage(details=False),
                system_fingerprint=job.fingerprint,
            )
        )
    yield _DONE
