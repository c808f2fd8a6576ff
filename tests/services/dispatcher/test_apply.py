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
