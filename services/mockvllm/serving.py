"""Chat and text completions as vLLM serves them: checks, errors, generation, scheduling, timing.

`Serving` is the mock's engine room; it knows no HTTP framework (bodies and frames: `responses.py`). Each entry point takes the raw body
and headers and returns one of: an `ErrorResponse` (sent as JSON with its status), a response Struct
(JSON, 200), a `Stream` (SSE frames, 200), or a `Truncated` body (the "drop" fault: headers and part
of the body, then the connection is cut). Checks run in vLLM's order: body validation,
``stream_options`` without ``stream``, model resolution (404), token limits, admission (503).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

import msgspec

from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.openai import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    StreamOptions,
)
from services.mockvllm.engine import Engine, LatencyModel, Ticket
from services.mockvllm.faults import FaultKind, FaultPlan, fault_error, parse_fault
from services.mockvllm.generation import (
    Generation,
    count_tokens,
    echo_tokens,
    generate,
    render_chat,
)
from services.mockvllm.metrics import Metrics
from services.mockvllm.registry import Registry
from services.mockvllm.responses import (
    ConnectionDropped,
    Job,
    chat_body,
    chat_frames,
    completion_body,
    completion_frames,
)
from services.mockvllm.settings import MockSettings
from services.mockvllm.validation import decode_request

__all__ = ["ConnectionDropped", "Result", "Serving", "Stream", "Truncated"]

_HANG_S = 3600.0
_SAMPLING_EPS = 1e-5  # vLLM: a temperature below this is greedy sampling
_QUEUE_FULL = (
    "The engine is currently busy and cannot accept new requests. "
    "Please try again later or on a different instance."
)
_STREAM_FAULTS = (FaultKind.STREAM_500, FaultKind.STREAM_503, FaultKind.DROP)
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Stream:
    """An SSE body: ``text/event-stream``, status 200, these frames."""

    frames: AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class Truncated:
    """A JSON body to announce in full (``content-length``) but cut off half-way."""

    body: bytes


Result = ErrorResponse | ChatCompletionResponse | CompletionResponse | Stream | Truncated


class Serving:
    """The mock's state (registry, engine, faults, metrics) and its two inference endpoints."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.registry = Registry(settings)
        self.metrics = Metrics(
            settings.served_names[0],
            settings.max_loras,
            lora_enabled=bool(settings.lora_modules) or settings.runtime_lora_updating,
        )
        self.engine = Engine(
            max_num_seqs=settings.max_num_seqs,
            max_loras=settings.max_loras,
            max_cpu_loras=settings.max_cpu_loras,
            max_num_queued_reqs=settings.max_num_queued_reqs,
            latency=LatencyModel(
                settings.ttft_ms / 1000,
                settings.itl_ms / 1000,
                settings.lora_load_ms / 1000,
                settings.lora_swap_ms / 1000,
            ),
            on_change=self.metrics.engine_changed,
        )
        for name in self.registry.adapters:  # vLLM reads static adapters at start-up
            self.engine.preload(name)
        self.faults = FaultPlan(parse_fault(spec) for spec in settings.faults)

    # ------------------------------------------------------------------- runtime adapters
    async def load_adapter(self, name: str, path: str, load_inplace: bool) -> str | ErrorResponse:
        """``POST /v1/load_lora_adapter``: register, then read the adapter into the CPU cache
        (vLLM preloads it, so the call takes the disk read)."""
        result = self.registry.load(name, path, load_inplace)
        if isinstance(result, str):
            self.engine.forget(name)  # new weights, or an in-place reload
            await asyncio.sleep(self.engine.preload(name))
        return result

    def unload_adapter(self, name: str) -> str | ErrorResponse:
        """``POST /v1/unload_lora_adapter``."""
        result = self.registry.unload(name)
        if isinstance(result, str):
            self.engine.forget(name)
        return result

    def lora_state(self) -> dict[str, object]:
        """Mock only: the adapter caches and how often adapters were swapped in and loaded."""
        engine = self.engine
        return {
            "max_loras": engine.max_loras,
            "max_cpu_loras": engine.max_cpu_loras,
            "gpu": engine.gpu_adapters,
            "cpu": engine.cpu_adapters,
            "swaps": engine.swaps,
            "loads": engine.loads,
        }

    # ------------------------------------------------------------------------------ chat
    async def chat(self, body: bytes, headers: Mapping[str, str]) -> Result:
        """``POST /v1/chat/completions``."""
        req = decode_request(body, ChatCompletionRequest)
        if isinstance(req, ErrorResponse):
            return req
        # An empty conversation fails later, after the model check, as in vLLM (prompts=[]).
        prompts = [render_chat(req.messages, req.add_generation_prompt)] if req.messages else []
        return await self._serve(
            body,
            headers,
            prefix="chatcmpl-",
            model=req.model,
            prompts=prompts,
            n=1 if req.n is None else req.n,
            stream=bool(req.stream),
            stream_options=req.stream_options,
            limit=("max_completion_tokens", req.max_completion_tokens)
            if req.max_completion_tokens is not None
            else ("max_tokens", req.max_tokens),
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens,
            stop=req.stop,
            temperature=req.temperature,
            request_id=req.request_id,
            chat=True,
        )

    # ------------------------------------------------------------------------- completions
    async def completion(self, body: bytes, headers: Mapping[str, str]) -> Result:
        """``POST /v1/completions``."""
        req = decode_request(body, CompletionRequest)
        if isinstance(req, ErrorResponse):
            return req
        prompts = _prompts(req.prompt)
        if not prompts:
            return error_response(
                ErrorKind.BAD_REQUEST,
                "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
                param="prompt",
            )
        return await self._serve(
            body,
            headers,
            prefix="cmpl-",
            model=req.model,
            prompts=prompts,
            n=1 if req.n is None else req.n,
            stream=bool(req.stream),
            stream_options=req.stream_options,
            limit=("max_tokens", req.max_tokens),
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens,
            stop=req.stop,
            temperature=req.temperature,
            request_id=req.request_id,
            chat=False,
        )

    # ----------------------------------------------------------------------------- shared
    async def _serve(
        self,
        body: bytes,
        headers: Mapping[str, str],
        *,
        prefix: str,
        model: str | None,
        prompts: list[str],
        n: int,
        stream: bool,
        stream_options: StreamOptions | None,
        limit: tuple[str, int | None],
        ignore_eos: bool,
        min_tokens: int,
        stop: str | list[str] | None,
        temperature: float | None,
        request_id: str | None,
        chat: bool,
    ) -> Result:
        if stream_options is not None and not stream:
            return error_response(
                ErrorKind.BAD_REQUEST,
                "Stream options can only be defined when `stream=True`. (parameter=stream_options)",
                param="stream_options",
            )
        resolved = self.registry.resolve(model)
        if isinstance(resolved, ErrorResponse):
            return resolved
        if not prompts:
            return error_response(
                ErrorKind.BAD_REQUEST,
                "Cannot apply chat template to an empty conversation. Provide at least one message.",
            )
        prompt_counts = [count_tokens(p) for p in prompts]
        max_tokens = self._max_tokens(limit, max(prompt_counts))
        if isinstance(max_tokens, ErrorResponse):
            return max_tokens
        if n < 1:
            return error_response(ErrorKind.BAD_REQUEST, f"n must be at least 1, got {n}.")
        if n > self.settings.max_n_sequences:
            return error_response(
                ErrorKind.BAD_REQUEST,
                f"n must be at most {self.settings.max_n_sequences}, got {n}. To increase this "
                "limit, set the VLLM_MAX_N_SEQUENCES environment variable.",
            )
        if min_tokens < 0:
            return error_response(
                ErrorKind.BAD_REQUEST,
                f"min_tokens must be greater than or equal to 0, got {min_tokens}.",
            )
        if min_tokens > max_tokens:
            return error_response(
                ErrorKind.BAD_REQUEST,
                f"min_tokens must be less than or equal to max_tokens={max_tokens}, "
                f"got {min_tokens}.",
            )
        if n > 1 and temperature is not None and temperature < _SAMPLING_EPS:
            return error_response(
                ErrorKind.BAD_REQUEST, f"n must be 1 when using greedy sampling, got {n}."
            )
        fault = self.faults.next_request("\n".join(prompts))
        if fault is not None and (
            fault.kind in (FaultKind.ERROR_500, FaultKind.ERROR_503)
            or (not stream and fault.kind in (FaultKind.STREAM_500, FaultKind.STREAM_503))
        ):
            self.metrics.finished("error")
            return fault_error(fault.kind)
        ticket = self.engine.submit(resolved.adapter.name if resolved.adapter else None)
        if ticket is None:
            return error_response(ErrorKind.QUEUE_FULL, _QUEUE_FULL)
        stops = [stop] if isinstance(stop, str) else list(stop or ())
        if self.settings.echo:
            generations = [Generation(echo_tokens(body), "stop")] * (n * len(prompts))
        else:
            generations = [
                generate(
                    # Like real weights: the same adapter files under two names give the same text.
                    resolved.adapter.path if resolved.adapter else self.settings.model,
                    prompt,
                    max_tokens=max_tokens,
                    ignore_eos=ignore_eos,
                    min_tokens=min_tokens,
                    choice=j,
                    length_range=self.settings.default_output_tokens,
                    stop=stops,
                )
                for prompt in prompts
                for j in range(n)
            ]
        include_usage = self.settings.enable_force_include_usage or bool(
            stream_options and stream_options.include_usage
        )
        job = Job(
            id=prefix + (headers.get("x-request-id") or request_id or secrets.token_hex(8)),
            model=resolved.response_model,
            created=int(time.time()),
            prompt_tokens=sum(prompt_counts) * n,
            generations=generations,
            fingerprint=self.settings.system_fingerprint,
            fault=fault if fault is not None and fault.kind in _STREAM_FAULTS else None,
            include_usage=include_usage,
            continuous_usage=include_usage
            and bool(stream_options and stream_options.continuous_usage_stats),
        )
        hang = fault is not None and fault.kind is FaultKind.HANG
        self.metrics.prompt_tokens.inc(job.prompt_tokens)
        if stream:
            itl_s = self.engine.latency.itl_s
            frames = chat_frames(job, itl_s) if chat else completion_frames(job, itl_s)
            return Stream(self._timed(job, ticket, hang, frames))
        try:
            await self._run_until_done(job, ticket, hang)
        except asyncio.CancelledError:
            self.metrics.finished("abort")
            raise
        finally:
            self.engine.release(ticket)
        response = chat_body(job) if chat else completion_body(job)
        if job.fault is not None and job.fault.kind is FaultKind.DROP:
            return Truncated(_encode(response))
        return response

    def _max_tokens(self, limit: tuple[str, int | None], prompt_tokens: int) -> int | ErrorResponse:
        name, value = limit
        max_len = self.settings.max_model_len
        if value is not None and value < 1:
            return error_response(
                ErrorKind.BAD_REQUEST,
                f"{name} must be at least 1, got {value}. (parameter={name}, value={value})",
                param=name,
            )
        if value is not None and value > max_len:
            return error_response(
                ErrorKind.BAD_REQUEST,
                f"{name}={value} cannot be greater than max_model_len={max_len}. Please request "
                f"fewer output tokens. (parameter={name}, value={value})",
                param=name,
            )
        if prompt_tokens >= max_len:
            return error_response(
                ErrorKind.BAD_REQUEST,
                f"This model's maximum context length is {max_len} tokens. However, your prompt "
                f"contains {prompt_tokens} input tokens, which exceeds this limit even without any "
                "output tokens. Please reduce the length of the input prompt. "
                f"(parameter=input_tokens, value={prompt_tokens})",
                param="input_tokens",
            )
        room = max_len - prompt_tokens
        return room if value is None else min(value, room)

    async def _run_until_done(self, job: Job, ticket: Ticket, hang: bool) -> None:
        """Non-streaming: wait for a slot, then for all tokens (time to first token + the rest)."""
        started = time.monotonic()
        self.metrics.queue_time.observe(await self.engine.wait(ticket))
        if hang:
            await asyncio.sleep(_HANG_S)
        latency = self.engine.latency
        longest = max(len(g.tokens) for g in job.generations)
        await asyncio.sleep(latency.ttft_s + latency.itl_s * max(0, longest - 1))
        self._account(job, started)

    def _account(self, job: Job, started: float) -> None:
        for g in job.generations:
            self.metrics.finished(g.finish_reason)
        self.metrics.generation_tokens.inc(sum(len(g.tokens) for g in job.generations))
        self.metrics.e2e.observe(time.monotonic() - started)

    # ---------------------------------------------------------------------------- streams
    async def _timed(
        self, job: Job, ticket: Ticket, hang: bool, frames: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """Wrap a job's frames with scheduling, time to first token and accounting."""
        started = time.monotonic()
        finished = False
        try:
            self.metrics.queue_time.observe(await self.engine.wait(ticket))
            if hang:
                await asyncio.sleep(_HANG_S)
            await asyncio.sleep(self.engine.latency.ttft_s)
            self.metrics.ttft.observe(time.monotonic() - started)
            async for frame in frames:
                yield frame
            finished = True
            self._account(job, started)
        finally:
            if not finished:
                self.metrics.finished("abort")
            self.engine.release(ticket)


def _prompts(prompt: str | Sequence[str | int | Sequence[int]] | None) -> list[str]:
    """A completion request's prompt(s) as texts: one string, a batch of strings, token ids."""
    if not prompt:
        return []
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(p, int) for p in prompt):
        return [" ".join(map(str, prompt))]
    return [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt]  # type: ignore[arg-type]
