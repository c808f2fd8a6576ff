"""``POST /v1/chat/completions``: the non-streaming body and the SSE frames, byte-level."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.conftest import Target
from tests.conformance.helpers import greedy, sse_payloads

HI = [{"role": "user", "content": "How do I restart the server?"}]
ADAPTER = "technical-lora"  # its text is plain, so no content delta is held back for UTF-8
FINGERPRINT = r"vllm-0\.32\.0-[0-9a-f]{8}"

RESPONSE_KEYS = [
    "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint", "usage",
    "prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params",
    "ec_transfer_params", "metrics",
]  # fmt: skip
CHOICE_KEYS = [
    "index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids", "routed_experts",
]  # fmt: skip
MESSAGE_KEYS = ["role", "content", "refusal", "annotations", "audio", "function_call", "reasoning"]
ROLE_CHUNK_CHOICE = ["index", "delta", "logprobs", "finish_reason"]
CONTENT_CHUNK_CHOICE = ["index", "delta", "logprobs", "finish_reason", "token_ids"]
FINISH_CHUNK_CHOICE = ["index", "delta", "logprobs", "finish_reason", "stop_reason", "token_ids"]
CHUNK_HEAD = ["id", "object", "created", "model", "choices"]


def _chat(
    http: httpx.Client, headers: dict[str, str] | None = None, /, **body: Any
) -> httpx.Response:
    response = http.post("/v1/chat/completions", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    return response


def test_non_streaming_body(target: Target, http: httpx.Client) -> None:
    response = _chat(http, model=ADAPTER, messages=HI, **greedy(8))
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == RESPONSE_KEYS
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{16}", body["id"])
    assert body["object"] == "chat.completion" and body["model"] == ADAPTER
    assert re.fullmatch(FINGERPRINT, body["system_fingerprint"])
    (choice,) = body["choices"]
    assert list(choice) == CHOICE_KEYS
    assert list(choice["message"]) == MESSAGE_KEYS
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert (choice["finish_reason"], choice["stop_reason"]) == ("length", None)
    usage = body["usage"]
    assert list(usage) == [
        "prompt_tokens", "total_tokens", "completion_tokens",
        "prompt_tokens_details", "completion_tokens_details",
    ]  # fmt: skip
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    for key in [*RESPONSE_KEYS[8:], "service_tier"]:
        assert body[key] is None


def test_x_request_id_names_the_completion(http: httpx.Client) -> None:
    body = _chat(http, {"X-Request-Id": "abc123"}, messages=HI, **greedy(1)).json()
    assert body["id"] == "chatcmpl-abc123"
    frames = sse_payloads(
        _chat(http, {"X-Request-Id": "s1"}, messages=HI, stream=True, **greedy(1))
    )
    assert {json.loads(f)["id"] for f in frames[:-1]} == {"chatcmpl-s1"}


def test_n_gives_that_many_choices(http: httpx.Client) -> None:
    body = _chat(http, messages=HI, n=2, max_tokens=2, ignore_eos=True, temperature=1.0).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 4


def test_stream_frames_without_usage(target: Target, http: httpx.Client) -> None:
    response = _chat(http, model=ADAPTER, messages=HI, stream=True, **greedy(8))
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    frames = sse_payloads(response)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert len(chunks) == 1 + 8  # role chunk + one chunk per token, the last with finish_reason
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and re.fullmatch(r"chatcmpl-[0-9a-f]{16}", ids.pop())
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["model"] == ADAPTER

    role, *content, finish = chunks
    assert list(role) == [*CHUNK_HEAD, "prompt_token_ids", "prompt_text"]
    assert role["prompt_token_ids"] is None and role["prompt_text"] is None
    assert list(role["choices"][0]) == ROLE_CHUNK_CHOICE
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    for c in content:
        assert list(c) == CHUNK_HEAD
        (choice,) = c["choices"]
        assert list(choice) == CONTENT_CHUNK_CHOICE
        assert list(choice["delta"]) == ["content"]
        assert choice["finish_reason"] is None and choice["token_ids"] is None
    assert list(finish) == [*CHUNK_HEAD, "system_fingerprint"]
    assert re.fullmatch(FINGERPRINT, finish["system_fingerprint"])
    (choice,) = finish["choices"]
    assert list(choice) == FINISH_CHUNK_CHOICE
    assert (choice["finish_reason"], choice["stop_reason"]) == ("length", None)
    assert "usage" not in response.text


def test_stream_usage_chunk_only_when_asked(http: httpx.Client) -> None:
    response = _chat(
        http, model=ADAPTER, messages=HI, stream=True,
        stream_options={"include_usage": True}, **greedy(8),
    )  # fmt: skip
    frames = sse_payloads(response)
    assert frames[-1] == "[DONE]"
    *chunks, usage_chunk = (json.loads(f) for f in frames[:-1])
    assert list(usage_chunk) == [*CHUNK_HEAD, "usage", "system_fingerprint"]
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert list(usage) == ["prompt_tokens", "total_tokens", "completion_tokens"]
    assert usage["completion_tokens"] == 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + 8
    finish = chunks[-1]
    assert finish["choices"][0]["finish_reason"] == "length"
    assert list(finish) == CHUNK_HEAD  # the fingerprint moves to the usage chunk
    assert all("usage" not in c for c in chunks)


def test_continuous_usage_stats(http: httpx.Client) -> None:
    response = _chat(
        http, model=ADAPTER, messages=HI, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True}, **greedy(3),
    )  # fmt: skip
    chunks = [json.loads(f) for f in sse_payloads(response)[:-1]]
    running = [c["usage"] for c in chunks[:-1]]
    assert [u["completion_tokens"] for u in running] == [0, 1, 2, 3]
    assert all(list(u) == ["prompt_tokens", "total_tokens", "completion_tokens",
                           "completion_tokens_details"] for u in running)  # fmt: skip
    assert list(chunks[-1]["usage"]) == ["prompt_tokens", "total_tokens", "completion_tokens"]


def test_streamed_text_equals_the_non_streamed_text(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": ADAPTER,
        "messages": HI,
        "max_tokens": 12,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    parts: list[str] = []
    finish: list[str | None] = []
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish.append(choice.finish_reason)
    assert "".join(parts) == whole
    assert finish[-1] == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_system_prompt_and_template_fields_are_accepted(http: httpx.Client, stream: bool) -> None:
    messages = [{"role": "system", "content": "You are terse."}, *HI]
    body = {
        "messages": messages, "stream": stream, "chat_template_kwargs": {"enable_thinking": False},
        "reasoning_effort": "low", **greedy(2),
    }  # fmt: skip
    assert http.post("/v1/chat/completions", json=body).status_code == 200
