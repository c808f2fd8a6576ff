from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.classify import ClassifyBatchRequest, ClassifyIntentRequest
from schemas.config import Config, Limits
from schemas.errors import ErrorResponse
from schemas.openai import ChatRequestView
from services.ingress.batches import parse_batch_request
from services.ingress.validation import (
    body_limit,
    check_content_type,
    envelope_headroom,
    parse_chat,
    parse_classify_batch,
    parse_classify_intent,
    too_large,
)


def _error(result: object) -> ErrorResponse:
    assert isinstance(result, ErrorResponse), result
    return result


def test_valid_chat_is_read() -> None:
    view = parse_chat(b'{"model":"MoM","messages":[{"role":"user","content":"hi"}],"stream":true}')
    assert isinstance(view, ChatRequestView)
    assert view.model == "MoM" and view.stream is True
    assert isinstance(view.messages, list) and view.messages[0].content == "hi"


def test_unknown_fields_are_accepted() -> None:
    assert isinstance(
        parse_chat(b'{"messages":[{"role":"user","content":"x"}],"frobnicate":{"a":1}}'),
        ChatRequestView,
    )


def test_missing_messages_is_vllms_400() -> None:
    error = _error(parse_chat(b'{"model":"MoM"}')).error
    assert (error.code, error.type, error.param) == (400, "Bad Request", "body.messages")
    assert error.message.startswith("1 validation error:\n  {'type': 'missing'")
    assert "'loc': 'body.messages'" in error.message


def test_empty_messages_is_400() -> None:
    error = _error(parse_chat(b'{"model":"MoM","messages":[]}')).error
    assert (error.code, error.param) == (400, "body.messages")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"messages":[{"role":1}]}', "body.messages.0.role"),
        (b'{"messages":"hello"}', "body.messages"),
        (b'{"messages":[{"content":"x"}]}', "body.messages.0.role"),
        (b'{"messages":[{"role":"user","content":"x"}],"model":5}', "body.model"),
        (b'{"messages":[{"role":"user","content":"x"}],"stream":"yes"}', "body.stream"),
    ],
)
def test_wrong_types_name_the_field(body: bytes, param: str) -> None:
    error = _error(parse_chat(body)).error
    assert (error.code, error.type, error.param) == (400, "Bad Request", param)


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"\xff\xfe", b'{"messages": [}'])
def test_invalid_json_is_400(body: bytes) -> None:
    error = _error(parse_chat(body)).error
    assert (error.code, error.type) == (400, "Bad Request")
    assert "json_invalid" in error.message


def test_non_object_body_is_400() -> None:
    error = _error(parse_chat(b"[1, 2]")).error
    assert error.code == 400 and error.param is None


@pytest.mark.parametrize(
    "value", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_content_types_pass(value: str) -> None:
    assert check_content_type(value) is None


@pytest.mark.parametrize("value", [None, "", "text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_are_vllms_400(value: str | None) -> None:
    error = _error(check_content_type(value)).error
    assert error.code == 400 and "Only 'application/json' is allowed" in error.message


def test_too_large_is_413_and_names_the_limit() -> None:
    error = too_large(5000, 4096).error
    assert (error.code, error.type) == (413, "PayloadTooLargeError")
    assert "4096" in error.message and "5000" in error.message


def test_body_limit_is_the_smaller_of_config_and_bus() -> None:
    assert body_limit(4 * 1024 * 1024, 1024 * 1024, 10_000) == 1024 * 1024 - 10_000
    assert body_limit(64 * 1024, 8 * 1024 * 1024, 10_000) == 64 * 1024
    assert body_limit(64 * 1024, 2000, 10_000) == 1024


def test_headroom_covers_the_longest_system_prompt(config: Config) -> None:
    longest = max(len((c.system_prompt or "").encode()) for c in config.categories)
    assert envelope_headroom(config) >= 8 * 1024 + 2 * longest


def test_classify_intent() -> None:
    request = parse_classify_intent(b'{"text":"hello","options":{"return_probabilities":true}}')
    assert isinstance(request, ClassifyIntentRequest)
    assert request.options.return_probabilities is True
    assert _error(parse_classify_intent(b'{"text":"  "}')).error.param == "body.text"
    assert _error(parse_classify_intent(b"{}")).error.param == "body.text"
    assert _error(parse_classify_intent(b"{")).error.code == 400


def test_classify_batch_limits() -> None:
    ok = parse_classify_batch(msgspec.json.encode({"texts": ["a", "b"]}), 2)
    assert isinstance(ok, ClassifyBatchRequest) and ok.task_type == "intent"
    over = _error(parse_classify_batch(msgspec.json.encode({"texts": ["a", "b", "c"]}), 2)).error
    assert over.code == 400 and over.param == "body.texts"
    assert "at most 2" in over.message
    assert _error(parse_classify_batch(b'{"texts":[]}', 2)).error.param == "body.texts"
    assert _error(parse_classify_batch(b'{"texts":["a",""]}', 2)).error.param == "body.texts.1"
    wrong_task = parse_classify_batch(b'{"texts":["a"],"task_type":"pii"}', 2)
    assert _error(wrong_task).error.param == "body.task_type"


# ------------------------------------------------------------------------------ limits


def test_caps_are_checked_after_the_schema() -> None:
    body = b'{"messages":[{"role":"user","content":"x"}],"n":2147483648}'
    error = _error(parse_chat(body)).error
    assert (error.code, error.param) == (400, "n")
    assert error.message == (
        "n must be at most 16, got 2147483648. (parameter=n, value=2147483648)"
    )
    assert isinstance(parse_chat(body, Limits(max_n=2**31)), ChatRequestView)


@pytest.mark.parametrize("levels", [65, 1_000, 50_000])
def test_deep_json_is_400_not_a_recursion_error(levels: int) -> None:
    deep = b"[" * levels + b"]" * levels
    chat = b'{"messages":[{"role":"user","content":"x"}],"x":' + deep + b"}"
    for result in (
        parse_chat(chat),
        parse_classify_intent(b'{"text":"x","x":' + deep + b"}"),
        parse_classify_batch(b'{"texts":["x"],"x":' + deep + b"}", 10),
        parse_batch_request(b'{"input_file_id":"f","x":' + deep + b"}"),
    ):
        error = _error(result).error
        assert (error.code, error.param) == (400, "body")
        assert "deeper than 64 levels" in error.message


def test_the_depth_cap_is_configurable() -> None:
    body = b'{"messages":[{"role":"user","content":"x"}],"x":[[[[[[[[[[]]]]]]]]]]}'
    assert isinstance(parse_chat(body), ChatRequestView)
    assert _error(parse_chat(body, Limits(max_json_depth=8))).error.param == "body"


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=20,
)
_FIELD_VALUES = _JSON_VALUES | st.integers(min_value=-(2**70), max_value=2**70)
_MESSAGE = st.dictionaries(
    st.sampled_from(["role", "content", "name", "tool_calls"]), _JSON_VALUES, max_size=3
)
_CHAT_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "model": _FIELD_VALUES,
        "messages": st.lists(_MESSAGE, max_size=3) | _JSON_VALUES,
        "stream": _FIELD_VALUES,
        "n": _FIELD_VALUES,
        "max_tokens": _FIELD_VALUES,
        "max_completion_tokens": _FIELD_VALUES,
        "min_tokens": _FIELD_VALUES,
    },
)


def _encoded(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@settings(max_examples=300, deadline=None)
@given(
    body=st.one_of(
        _CHAT_BODIES.map(_encoded),
        _JSON_VALUES.map(_encoded),
        st.binary(max_size=64),
        st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    )
)
def test_no_body_escapes_as_an_exception(body: bytes) -> None:
    # Every body is a value or a 4xx, never an exception (which the app would turn into a 500).
    for result in (
        parse_chat(body),
        parse_classify_intent(body),
        parse_classify_batch(body, 10),
        parse_batch_request(body),
    ):
        if isinstance(result, ErrorResponse):
            assert 400 <= result.status < 500
