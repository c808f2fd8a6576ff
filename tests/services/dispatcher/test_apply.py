"""`services.dispatcher.apply`: model, system prompt and reasoning written; nothing else touched."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from schemas.wire import Route
from services.dispatcher.apply import BodyError, apply_route


def _route(**kw: Any) -> Route:
    args: dict[str, Any] = {"model": "medical-lora", "base_model": "llama2-7b"}
    args.update(kw)
    return Route(**args)


def _apply(body: dict[str, Any], route: Route) -> tuple[dict[str, Any], bool]:
    out, stream = apply_route(msgspec.json.encode(body), route)
    decoded: dict[str, Any] = msgspec.json.decode(out)
    return decoded, stream


def test_model_is_set_and_every_other_field_kept_in_order() -> None:
    body = {
        "model": "MoM",
        "messages": [{"role": "user", "content": "hi", "name": "u1"}],
        "temperature": 0.7,
        "top_p": 1e-7,
        "seed": 12345678901234567,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "unknown_extension": {"nested": [1, 2.5, None, True]},
        "stream": True,
    }
    out, stream = _apply(body, _route())
    assert stream is True
    assert list(out) == list(body)
    assert out == {**body, "model": "medical-lora"}


def test_stream_flag() -> None:
    assert _apply({"messages": []}, _route())[1] is False
    assert _apply({"messages": [], "stream": False}, _route())[1] is False


class TestSystemPrompt:
    def test_added_first_when_absent(self) -> None:
        out, _ = _apply({"messages": [{"role": "user", "content": "q"}]}, _route(system_prompt="P"))
        assert out["messages"] == [
            {"role": "system", "content": "P"},
            {"role": "user", "content": "q"},
        ]

    def test_insert_before_existing_text(self) -> None:
        body = {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "q"},
            ]
        }
        out, _ = _apply(body, _route(system_prompt="P"))
        assert out["messages"][0] == {"role": "system", "content": "P\n\nBe brief."}
        assert len(out["messages"]) == 2

    def test_replace(self) -> None:
        body = {
            "messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "old"}]
        }
        out, _ = _apply(body, _route(system_prompt="P", system_prompt_mode="replace"))
        assert out["messages"][1] == {"role": "system", "content": "P"}
        assert out["messages"][0] == {"role": "user", "content": "q"}

    def test_insert_into_content_parts(self) -> None:
        parts = [{"type": "text", "text": "Be brief."}]
        body = {"messages": [{"role": "system", "content": parts}]}
        out, _ = _apply(body, _route(system_prompt="P"))
        assert out["messages"][0]["content"] == [{"type": "text", "text": "P\n\n"}, *parts]

    def test_empty_system_content_gets_the_prompt(self) -> None:
        out, _ = _apply(
            {"messages": [{"role": "system", "content": ""}]}, _route(system_prompt="P")
        )
        assert out["messages"][0]["content"] == "P"

    def test_no_prompt_no_change(self) -> None:
        body = {"messages": [{"role": "user", "content": "q"}]}
        assert _apply(body, _route())[0]["messages"] == body["messages"]


class TestReasoning:
    def _family(
        self, type_: str, param: str, on: bool | None, effort: str | None = "high"
    ) -> Route:
        return _route(
            use_reasoning=on,
            reasoning_type=type_,
            reasoning_parameter=param,
            reasoning_effort=effort if on else None,
        )

    def test_chat_template_kwargs_on_and_explicit_off(self) -> None:
        body = {"messages": [], "chat_template_kwargs": {"custom": 1}, "reasoning_effort": "low"}
        on, _ = _apply(body, self._family("chat_template_kwargs", "enable_thinking", True))
        assert on["chat_template_kwargs"] == {"custom": 1, "enable_thinking": True}
        assert "reasoning_effort" not in on
        off, _ = _apply(body, self._family("chat_template_kwargs", "enable_thinking", False))
        assert off["chat_template_kwargs"] == {"custom": 1, "enable_thinking": False}

    @pytest.mark.parametrize("family", ["reasoning_effort", "top_level_reasoning_effort"])
    def test_effort_families_write_the_routes_effort(self, family: str) -> None:
        out, _ = _apply(
            {"messages": [], "reasoning_effort": "low"},
            self._family(family, "reasoning_effort", True, "high"),
        )
        assert out["reasoning_effort"] == "high" and "chat_template_kwargs" not in out

    @pytest.mark.parametrize("family", ["reasoning_effort", "top_level_reasoning_effort"])
    def test_effort_families_off_send_no_effort(self, family: str) -> None:
        off = self._family(family, "reasoning_effort", False)
        out, _ = _apply({"messages": [], "reasoning_effort": "high"}, off)
        assert "reasoning_effort" not in out and "chat_template_kwargs" not in out

    def test_effort_family_with_another_parameter_name(self) -> None:
        route = self._family("top_level_reasoning_effort", "effort", True, "low")
        out, _ = _apply({"messages": [], "reasoning_effort": "high"}, route)
        assert out["effort"] == "low" and "reasoning_effort" not in out

    def test_without_family_nothing_is_written(self) -> None:
        body = {"messages": [], "reasoning_effort": "low"}
        out, _ = _apply(body, _route(use_reasoning=True, reasoning_effort="high"))
        assert out == {**body, "model": "medical-lora"}


@pytest.mark.parametrize("body", [b"[1, 2]", b"not json", b'{"model": "x"}', b'{"messages": "x"}'])
def test_bad_bodies(body: bytes) -> None:
    with pytest.raises(BodyError):
        apply_route(body, _route())


# ------------------------------------------------------------------ against a full re-encode
#
# The straightforward way to apply a route, kept here as the oracle: decode the whole body into
# Python objects, edit them, encode everything again. `apply_route` must produce the same JSON
# (values and key order at every level); for a body already in msgspec's compact form, the very
# same bytes.

_whole = msgspec.json.Decoder(dict[str, Any])


def _reference(body: bytes, route: Route) -> tuple[bytes, bool]:
    data = _whole.decode(body)
    messages = data["messages"]
    data["model"] = route.model
    if route.system_prompt:
        for message in messages:
            if isinstance(message, dict) and message.get("role") == "system":
                content = message.get("content")
                if route.system_prompt_mode == "replace" or not content:
                    message["content"] = route.system_prompt
                elif isinstance(content, str):
                    message["content"] = f"{route.system_prompt}\n\n{content}"
                elif isinstance(content, list):
                    part = {"type": "text", "text": f"{route.system_prompt}\n\n"}
                    message["content"] = [part, *content]
                else:
                    message["content"] = route.system_prompt
                break
        else:
            messages.insert(0, {"role": "system", "content": route.system_prompt})
    param = route.reasoning_parameter
    if route.use_reasoning is not None and route.reasoning_type and param:
        data.pop("reasoning_effort", None)
        if route.reasoning_type == "chat_template_kwargs":
            kwargs = data.get("chat_template_kwargs")
            if not isinstance(kwargs, dict):
                kwargs = {}
                data["chat_template_kwargs"] = kwargs
            kwargs[param] = bool(route.use_reasoning)
        elif route.use_reasoning:
            data[param] = route.reasoning_effort or "medium"
        else:
            data.pop(param, None)
    return msgspec.json.encode(data), data.get("stream") is True


_BODIES: list[bytes] = [
    b'{"model":"MoM","messages":[{"role":"user","content":"hi"}]}',
    b'{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"x"}],'
    b'"stream":true,"temperature":0.7}',
    b'{"messages":[{"role":"user","content":"a"},{"role":"system","content":""}],"model":"m"}',
    b'{"messages":[{"role":"system","content":null,"name":"s"}],"stream":false}',
    b'{"messages":[{"role":"system","content":[{"type":"text","text":"rules"},'
    b'{"type":"image_url","image_url":{"url":"data:x"}}]},{"role":"user","content":'
    b'[{"type":"text","text":"look"},{"type":"input_audio","input_audio":{"data":"AA=="}}]}]}',
    b'{"messages":[{"role":"system","content":{"odd":1}}],"stream":"yes"}',
    b'{"messages":["not an object",3,null,{"role":"system","content":"s"}]}',
    b'{"messages":[],"chat_template_kwargs":{"custom":1,"enable_thinking":true},'
    b'"reasoning_effort":"low","seed":12345678901234567}',
    b'{"messages":[],"chat_template_kwargs":null,"effort":"high","vllm_xargs":{"a":[1,2.5]}}',
    '{"messages":[{"role":"user","content":"Zürich ☃ 東京 🚀"}],"user":"ñ"}'.encode(),
    b'{"messages":[{"role":"user","content":"esc \\u00e9 \\/ \\" \\\\ \\n"}],"x":"\\ud83d\\ude80"}',
    b'{ "model" : "MoM" ,\n  "messages" : [ { "role" : "system" , "content" : "s" } ],\n'
    b'  "top_p" : 1e-7, "n" : 1.0, "logit_bias" : { "50256" : -100 } }',
    b'{"messages":[{"role":"user","content":"a"}],"messages":[{"role":"user","content":"b"}]}',
    b'{"frobnicate":{"deep":{"deeper":[true,false,null]}},"messages":[{"role":"user",'
    b'"content":"q","tool_calls":[{"id":"c","function":{"name":"f","arguments":"{}"}}]}],'
    b'"model":"MoM","tools":[]}',
]

_ROUTES: list[Route] = [
    _route(),
    _route(system_prompt="You are a doctor."),
    _route(system_prompt="Ünïcode prompt ✓", system_prompt_mode="replace"),
    *(
        _route(
            system_prompt=prompt,
            use_reasoning=on,
            reasoning_type=family,
            reasoning_parameter=param,
            reasoning_effort=effort,
        )
        for prompt in (None, "P")
        for on in (True, False)
        for family, param, effort in (
            ("chat_template_kwargs", "enable_thinking", None),
            ("reasoning_effort", "reasoning_effort", "high"),
            ("top_level_reasoning_effort", "effort", None),
        )
    ),
]


@pytest.mark.parametrize("route", _ROUTES, ids=lambda r: f"{r.system_prompt}-{r.reasoning_type}")
@pytest.mark.parametrize("body", _BODIES, ids=range(len(_BODIES)))
def test_same_output_as_a_full_re_encode(body: bytes, route: Route) -> None:
    got, stream = apply_route(body, route)
    want, want_stream = _reference(body, route)
    assert stream is want_stream
    # Same values in the same key order at every level: re-encoding is canonical and
    # order-preserving, so it equals the reference's bytes only then.
    assert msgspec.json.encode(_whole.decode(got)) == want
    if msgspec.json.encode(_whole.decode(body)) == body:
        assert got == want, "a body in compact form comes out byte for byte the same"


def test_untouched_values_keep_the_clients_bytes() -> None:
    body = b'{"messages": [{"role": "user", "content": "caf\\u00e9"}], "n": 1.0, "top_p": 1e-7}'
    out, _ = apply_route(body, _route())
    assert out == (
        b'{"messages":[{"role": "user", "content": "caf\\u00e9"}],"n":1.0,"top_p":1e-7,'
        b'"model":"medical-lora"}'
    )
