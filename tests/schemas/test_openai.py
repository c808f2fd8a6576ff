"""Wire types: unknown fields accepted, null keys where vLLM sends them and only there."""

from __future__ import annotations

import msgspec

from schemas.openai import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatRequestView,
    ChunkChoice,
    DeltaMessage,
    Usage,
)


def test_requests_accept_unknown_fields() -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi","x":1}],"guided_json":{}}'
    request = msgspec.json.decode(body, type=ChatCompletionRequest)
    assert request.model == "m" and request.messages[0].content == "hi"
    view = msgspec.json.decode(body, type=ChatRequestView)
    assert (view.model, view.stream, len(view.messages)) == ("m", False, 1)


def test_unset_fields_are_left_out_and_none_is_an_explicit_null() -> None:
    role = ChatCompletionChunk(
        id="c",
        created=1,
        model="m",
        choices=[ChunkChoice(index=0, delta=DeltaMessage(role="assistant", content=""))],
        prompt_token_ids=None,
        prompt_text=None,
    )
    assert msgspec.json.encode(role) == (
        b'{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
        b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}],'
        b'"prompt_token_ids":null,"prompt_text":null}'
    )
    assert msgspec.json.encode(Usage(prompt_tokens=1, total_tokens=3, completion_tokens=2)) == (
        b'{"prompt_tokens":1,"total_tokens":3,"completion_tokens":2}'
    )
