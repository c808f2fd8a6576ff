"""`services.common.limits`: the depth scan against a recursive reference, and the chat caps."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.config import Limits
from schemas.openai import ChatRequestView
from services.common.limits import check_chat, depth_error, too_deep

_view = msgspec.json.Decoder(ChatRequestView)

#: JSON values whose strings are full of brackets, quotes and backslashes, the scan's traps.
_TEXT = st.text(alphabet='[]{}"\\ab\n', max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=60,
)


def _depth(value: Any) -> int:
    """The reference: levels of arrays and objects, the top-level one counting as 1."""
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(value=_JSON, cap=st.integers(min_value=0, max_value=8))
def test_the_scan_agrees_with_a_recursive_count(value: Any, cap: int) -> None:
    body = json.dumps(value).encode()
    assert too_deep(body, cap) == (_depth(value) > cap)


@pytest.mark.parametrize("levels", [65, 1_000, 100_000])
def test_deep_nesting_is_found_without_recursion(levels: int) -> None:
    body = b'{"messages":[],"x":' + b"[" * levels + b"]" * levels + b"}"
    assert too_deep(body, 64)
    assert not too_deep(b"[" * 64 + b"]" * 64, 64)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"messages": [{"role": "user", "content": "[{" * 500 + '\\"]'}]})
    assert not too_deep(text.encode(), 8)


def test_depth_error_is_a_400_on_the_body() -> None:
    error = depth_error(64).error
    assert (error.code, error.type, error.param) == (400, "BadRequestError", "body")
    assert "64" in error.message


def _chat(**fields: Any) -> ChatRequestView:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    return _view.decode(json.dumps(body).encode())


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 17}, "n"),
        ({"n": 2_147_483_648}, "n"),
        ({"n": "17"}, "n"),  # vLLM reads numeric strings, so the cap does too
        ({"n": 17.0}, "n"),
        ({"max_tokens": 32_769}, "max_tokens"),
        ({"max_completion_tokens": 10**30}, "max_completion_tokens"),
        ({"min_tokens": 40_000}, "min_tokens"),
    ],
)
def test_each_cap_names_its_field(fields: dict[str, Any], param: str) -> None:
    error = check_chat(_chat(**fields), Limits())
    assert error is not None
    assert (error.status, error.error.type, error.error.param) == (400, "BadRequestError", param)
    assert error.error.message.startswith(f"{param} must be at most ")


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"n": 16, "max_tokens": 32_768, "max_completion_tokens": 1, "min_tokens": 32_768},
        {"n": None, "max_tokens": None},
        # Values vLLM refuses itself (its own 400 reaches the client): not the router's to judge.
        {"n": 1.5},
        {"n": "many"},
        {"max_tokens": -5},
    ],
)
def test_within_the_caps_or_for_vllm_to_refuse(fields: dict[str, Any]) -> None:
    assert check_chat(_chat(**fields), Limits()) is None


def test_message_count_is_capped() -> None:
    limits = Limits(max_messages=3)
    messages = [{"role": "user", "content": str(i)} for i in range(4)]
    view = _view.decode(json.dumps({"messages": messages}).encode())
    error = check_chat(view, limits)
    assert error is not None and error.error.param == "messages"
    assert "at most 3 messages, got 4" in error.error.message
    assert check_chat(_view.decode(json.dumps({"messages": messages[:3]})), limits) is None


def test_the_caps_are_configurable() -> None:
    assert check_chat(_chat(n=100), Limits(max_n=128)) is None
    assert check_chat(_chat(n=2), Limits(max_n=1)) is not None
