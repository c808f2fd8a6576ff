"""``POST /v1/completions``: body and stream frames."""

from __future__ import annotations

import json
import re

import httpx

from tests.conformance.helpers import greedy, sse_payloads

ADAPTER = "technical-lora"
CHOICE_KEYS = [
    "index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids", "prompt_logprobs",
    "prompt_token_ids", "routed_experts",
]  # fmt: skip
STREAM_CHOICE_KEYS = [
    "index", "text", "logprobs", "finish_reason", "stop_reason", "prompt_token_ids", "token_ids",
]  # fmt: skip


def test_completion_body(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"model": ADAPTER, "prompt": "hello", **greedy(4)})
    assert response.status_code == 200
    body = response.json()
    assert list(body) == [
        "id", "object", "created", "model", "choices", "service_tier", "system_fingerprint",
        "usage", "kv_transfer_params", "ec_transfer_params", "metrics",
    ]  # fmt: skip
    assert re.fullmatch(r"cmpl-[0-9a-f]{16}", body["id"])
    assert (body["object"], body["model"]) == ("text_completion", ADAPTER)
    (choice,) = body["choices"]
    assert list(choice) == CHOICE_KEYS
    assert choice["finish_reason"] == "length" and choice["text"]
    assert body["usage"]["completion_tokens"] == 4


def test_completion_batch_prompt(http: httpx.Client) -> None:
    body = {"prompt": ["hello", "there"], **greedy(2)}
    choices = http.post("/v1/completions", json=body).json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]


def test_completion_stream_frames(http: httpx.Client) -> None:
    body = {"model": ADAPTER, "prompt": "hello", "stream": True, **greedy(3)}
    frames = sse_payloads(http.post("/v1/completions", json=body))
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert len(chunks) == 3  # no role chunk in text completions
    for c in chunks:
        assert c["object"] == "text_completion"
        assert list(c["choices"][0]) == STREAM_CHOICE_KEYS
    assert [list(c) for c in chunks[:-1]] == [["id", "object", "created", "model", "choices"]] * 2
    assert list(chunks[-1]) == ["id", "object", "created", "model", "choices", "system_fingerprint"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_completion_stream_usage(http: httpx.Client) -> None:
    body = {
        "model": ADAPTER, "prompt": "hello", "stream": True,
        "stream_options": {"include_usage": True}, **greedy(3),
    }  # fmt: skip
    frames = sse_payloads(http.post("/v1/completions", json=body))
    usage_chunk = json.loads(frames[-2])
    assert usage_chunk["choices"] == []
    assert list(usage_chunk) == [
        "id", "object", "created", "model", "choices", "usage", "system_fingerprint",
    ]  # fmt: skip
    assert usage_chunk["usage"]["completion_tokens"] == 3
