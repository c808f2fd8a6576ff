"""Apply a `Route` to a client's chat body: the model name, the system prompt, the reasoning fields.

Plain bytes in, bytes out; every field the client sent and the route does not concern is kept,
in the client's key order. A key the route writes keeps its place when the client sent it, else
it is appended.

Two ways to edit, by the route. Without a system prompt (passthrough, below the threshold, a
category without one) only the top level is split into keys, each value kept as the client's
bytes (`msgspec.Raw`): the model and reasoning values are written, the rest, messages included,
passes byte for byte, so a long conversation costs one scan instead of a decode into Python
objects and a re-encode. With a system prompt the messages must be read, and reading them
costs as much as decoding the body whole, so the body is decoded and re-encoded (values the
same; numbers and escapes in msgspec's compact form). `loadtest/bench_apply.py` measures both.

Reasoning, by the base model's family type (DESIGN section 4.6):

| family type | `use_reasoning: true` | `use_reasoning: false` |
|---|---|---|
| `chat_template_kwargs` | `chat_template_kwargs.<param> = true` | `chat_template_kwargs.<param> = false` (explicit off) |
| `reasoning_effort` | top-level `<param> = <effort>` | no effort field (the client's is removed) |
| `top_level_reasoning_effort` | top-level `<param> = <effort>` | no effort field (the client's is removed) |

The client's top-level `reasoning_effort` is removed before the family's field is written. A
route without `use_reasoning`, or whose family is not defined, leaves reasoning untouched.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.wire import Route

__all__ = ["BodyError", "apply_route"]

# Both give `dict[str, Any]`: the edits put Python values beside the raw ones, and the encoder
# writes `msgspec.Raw` values as they are.
_split_decoder: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, msgspec.Raw])
_whole_decoder = msgspec.json.Decoder(dict[str, Any])
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_TRUE = b"true"


class BodyError(ValueError):
    """The body is not a JSON object with a `messages` list (the ingress should have refused it)."""


def apply_route(body: bytes | msgspec.Raw, route: Route) -> tuple[bytes, bool]:
    """Return the body vLLM must see for `route`, and whether the client asked for a stream.

    Raises `BodyError` when `body` is not a chat request object.
    """
    decoder = _whole_decoder if route.system_prompt else _split_decoder
    try:
        data = decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise BodyError(f"request body is not a JSON object: {error}") from error
    messages = data.get("messages")
    if not isinstance(messages, list) and not _is_array(messages):
        raise BodyError("request body has no `messages` list")
    data["model"] = route.model
    if route.system_prompt and isinstance(messages, list):  # decoded whole for a prompt
        _apply_system_prompt(messages, route.system_prompt, route.system_prompt_mode)
    if route.use_reasoning is not None and route.reasoning_type and route.reasoning_parameter:
        _apply_reasoning(data, route)
    stream = data.get("stream")
    if isinstance(stream, msgspec.Raw):
        stream = memoryview(stream) == _TRUE
    return _encoder.encode(data), stream is True


def _is_array(value: object) -> bool:
    """True for the raw bytes of a JSON array (a `Raw` value starts at its first byte)."""
    return isinstance(value, msgspec.Raw) and memoryview(value)[:1].tobytes() == b"["


def _apply_system_prompt(messages: list[Any], prompt: str, mode: str) -> None:
    """`insert`: the prompt, a blank line, then the existing system text; `replace`: the prompt
    alone. Without a system message, one is added first (both modes)."""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "system":
            content = message.get("content")
            if mode == "replace" or not content:
                message["content"] = prompt
            elif isinstance(content, str):
                message["content"] = f"{prompt}\n\n{content}"
            elif isinstance(content, list):
                message["content"] = [{"type": "text", "text": f"{prompt}\n\n"}, *content]
            else:
                message["content"] = prompt
            return
    messages.insert(0, {"role": "system", "content": prompt})


def _apply_reasoning(data: dict[str, Any], route: Route) -> None:
    param = route.reasoning_parameter
    assert param is not None
    # The client's own effort would contradict the route's decision (or its explicit off).
    data.pop("reasoning_effort", None)
    if route.reasoning_type == "chat_template_kwargs":
        kwargs = data.get("chat_template_kwargs")
        if isinstance(kwargs, msgspec.Raw):
            kwargs = _any_decoder.decode(kwargs)
        if not isinstance(kwargs, dict):
            kwargs = {}
        kwargs[param] = bool(route.use_reasoning)
        data["chat_template_kwargs"] = kwargs
    elif route.use_reasoning:
        data[param] = route.reasoning_effort or "medium"
    else:
        data.pop(param, None)
