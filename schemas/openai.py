"""OpenAI-compatible wire types as vLLM sends and accepts them (shapes of vLLM 0.32).

Requests: decoding ignores unknown fields (vLLM accepts them too), so a request Struct validates the
fields it names and nothing else. Code that forwards a body must forward the original bytes, not a
re-encoded Struct, or fields unknown here would be lost; ``ChatRequestView`` reads only what routing
needs (``model``, ``messages``, ``stream``).

Responses: key order and the presence of ``null`` keys follow vLLM's output. A field typed
``X | None | UnsetType`` with the default ``UNSET`` is left out unless set; set it to ``None`` to send an
explicit ``null`` (vLLM's ``exclude_unset``). Readers must not require any of those keys.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatMessage",
    "ChatRequestView",
    "Choice",
    "ChunkChoice",
    "CompletionChoice",
    "CompletionChunk",
    "CompletionChunkChoice",
    "CompletionRequest",
    "CompletionResponse",
    "DeltaMessage",
    "LoadLoRAAdapterRequest",
    "ModelCard",
    "ModelList",
    "ModelPermission",
    "ResponseMessage",
    "StreamOptions",
    "UnloadLoRAAdapterRequest",
    "Usage",
]

# ----------------------------------------------------------------------------------------- requests


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One message of a chat request. ``content`` is text or a list of content parts (kept as dicts)."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None


class ChatRequestView(msgspec.Struct, kw_only=True):
    """The few fields of a chat request that loraroute reads; everything else is skipped unparsed.

    The ingress validates a body with it (each message's role and content types, so a malformed
    conversation is refused before the pipeline); the classifier reads the text to classify.
    ``messages`` is ``UNSET`` when the key is missing, which the ingress answers like vLLM.
    The counts the router caps (``limits``) are read as sent, in any type vLLM's lax parsing
    turns into an integer (``2``, ``2.0``, ``"2"``); a value vLLM refuses is left to vLLM.
    """

    model: str | None = None
    messages: list[ChatMessage] | UnsetType = UNSET
    stream: bool | None = False
    n: int | float | str | bool | None = None
    max_tokens: int | float | str | bool | None = None
    max_completion_tokens: int | float | str | bool | None = None
    min_tokens: int | float | str | bool | None = None


class StreamOptions(msgspec.Struct, kw_only=True, omit_defaults=True):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST /v1/chat/completions`` body: the OpenAI fields plus the vLLM extras loraroute uses.

    Only ``messages`` is required; a missing or empty ``model`` means the base model (vLLM).
    ``max_tokens`` is deprecated by OpenAI in favour of ``max_completion_tokens``; vLLM takes either.
    """

    messages: list[ChatMessage]
    model: str | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = 1
    presence_penalty: float | None = None
    response_format: dict[str, Any] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    reasoning_effort: str | None = None
    parallel_tool_calls: bool | None = None
    user: str | None = None
    # vLLM extras
    chat_template_kwargs: dict[str, Any] | None = None
    include_reasoning: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    ignore_eos: bool = False
    min_tokens: int = 0
    top_k: int | None = None
    request_id: str | None = None
    priority: int = 0
    vllm_xargs: dict[str, Any] | None = None


class CompletionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST /v1/completions`` body. ``max_tokens`` defaults to 16 (OpenAI's and vLLM's default).
    ``prompt`` is optional on the wire (vLLM answers a missing one with a 400 ``BadRequestError``)."""

    # One text, a batch of texts, token ids, or a batch of token-id lists (msgspec allows one
    # array type per union, hence the element union).
    prompt: str | list[str | int | list[int]] | None = None
    model: str | None = None
    max_tokens: int | None = 16
    n: int | None = 1
    echo: bool | None = False
    logprobs: int | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    user: str | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    request_id: str | None = None


class LoadLoRAAdapterRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/load_lora_adapter`` (vLLM, only with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``)."""

    lora_name: str
    lora_path: str
    load_inplace: bool = False
    is_3d_lora_weight: bool = False


class UnloadLoRAAdapterRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/unload_lora_adapter``; ``lora_int_id`` is accepted and ignored, as by vLLM."""

    lora_name: str
    lora_int_id: int | None = None


# ---------------------------------------------------------------------------------------- responses


class Usage(msgspec.Struct, kw_only=True):
    """Token counts. vLLM's key order is prompt, total, completion. The two ``*_details`` keys are
    explicit nulls in non-streaming bodies and absent from the streaming usage chunk."""

    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: dict[str, Any] | UnsetType | None = UNSET
    completion_tokens_details: dict[str, Any] | UnsetType | None = UNSET


class ResponseMessage(msgspec.Struct, kw_only=True):
    """The assistant message of a non-streaming choice; ``tool_calls`` is left out when empty."""

    role: str = "assistant"
    content: str | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET
    reasoning: str | None = None


class Choice(msgspec.Struct, kw_only=True):
    index: int
    message: ResponseMessage
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    routed_experts: Any = None


class ChatCompletionResponse(msgspec.Struct, kw_only=True):
    """``chat.completion``. ``model`` is the adapter name for LoRA requests, else the first served name."""

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    service_tier: str | None = None
    system_fingerprint: str | None = None
    usage: Usage
    prompt_logprobs: Any = None
    prompt_token_ids: list[int] | None = None
    prompt_text: str | None = None
    kv_transfer_params: dict[str, Any] | None = None
    ec_transfer_params: dict[str, Any] | None = None
    metrics: Any = None


class DeltaMessage(msgspec.Struct, kw_only=True):
    role: str | UnsetType = UNSET
    content: str | UnsetType | None = UNSET
    reasoning: str | UnsetType | None = UNSET
    tool_calls: list[dict[str, Any]] | UnsetType = UNSET


class ChunkChoice(msgspec.Struct, kw_only=True):
    """One choice of a stream chunk. The role chunk sets neither ``stop_reason`` nor ``token_ids``;
    content chunks set ``token_ids`` (null); the chunk with ``finish_reason`` sets both."""

    index: int
    delta: DeltaMessage
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | UnsetType | None = UNSET
    token_ids: list[int] | UnsetType | None = UNSET


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    """``chat.completion.chunk``: one SSE ``data:`` frame. The usage chunk has ``choices == []``."""

    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | UnsetType | None = UNSET
    system_fingerprint: str | UnsetType | None = UNSET
    prompt_token_ids: list[int] | UnsetType | None = UNSET
    prompt_text: str | UnsetType | None = UNSET


class CompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    prompt_logprobs: Any = None
    prompt_token_ids: list[int] | None = None
    routed_experts: Any = None


class CompletionResponse(msgspec.Struct, kw_only=True):
    """``text_completion`` (``POST /v1/completions``, non-streaming)."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    service_tier: str | None = None
    system_fingerprint: str | None = None
    usage: Usage
    kv_transfer_params: dict[str, Any] | None = None
    ec_transfer_params: dict[str, Any] | None = None
    metrics: Any = None


class CompletionChunkChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None


class CompletionChunk(msgspec.Struct, kw_only=True):
    """A streaming ``text_completion`` frame; the usage frame has ``choices == []``."""

    id: str
    object: str = "text_completion"
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | UnsetType | None = UNSET
    system_fingerprint: str | UnsetType | None = UNSET


class ModelPermission(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model_permission"
    created: int
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(msgspec.Struct, kw_only=True):
    """One ``/v1/models`` entry. An adapter card has ``parent`` = its base's served name and
    ``max_model_len`` null; a base card has ``parent`` null. Test "is adapter" by ``parent``."""

    id: str
    object: str = "model"
    created: int
    owned_by: str = "vllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = msgspec.field(default_factory=list)


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ModelCard] = msgspec.field(default_factory=list)
