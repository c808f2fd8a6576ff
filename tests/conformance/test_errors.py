"""Error answers: 404 for unknown models and adapters, 400 validation and semantic errors,
FastAPI-style bodies for unknown routes and methods."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conformance.conftest import Target
from tests.conformance.helpers import greedy

HI = [{"role": "user", "content": "hi"}]


def _not_found(target: Target, model: str) -> dict[str, object]:
    return {
        "error": {
            "message": f"The model `{model}` does not exist. Valid aliases: {target.model}.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_adapter_is_a_404_json_body_even_for_streams(
    target: Target, http: httpx.Client, stream: bool
) -> None:
    response = http.post(
        "/v1/chat/completions", json={"model": "nope-lora", "messages": HI, "stream": stream}
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == _not_found(target, "nope-lora")


def test_unknown_model_on_completions(target: Target, http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    assert response.status_code == 404
    assert response.json() == _not_found(target, "nope")


def test_openai_client_raises_not_found(target: Target, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope-lora", messages=HI)  # type: ignore[arg-type]
    assert info.value.status_code == 404
    assert info.value.body == _not_found(target, "nope-lora")["error"]


def _validation(line: str, param: str | None) -> dict[str, object]:
    return {
        "error": {
            "message": f"1 validation error:\n  {line}",
            "type": "Bad Request",
            "param": param,
            "code": 400,
        }
    }


def _bad_request(message: str, param: str | None) -> dict[str, object]:
    return {"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}}


CASES: list[tuple[str, object, dict[str, object]]] = [
    (
        "missing messages",
        {"model": "tiny-llama"},
        _validation(
            "{'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', "
            "'input': '<dict of 1 items>'}",
            "body.messages",
        ),
    ),
    (
        "max_tokens not an integer",
        {"messages": HI, "max_tokens": "lots"},
        _validation(
            "{'type': 'int_parsing', 'loc': 'body.max_tokens', 'msg': 'Input should be a valid "
            "integer, unable to parse string as an integer', 'input': 'lots'}",
            "body.max_tokens",
        ),
    ),
    (
        "messages not a list",
        {"messages": "hi"},
        _validation(
            "{'type': 'list_type', 'loc': 'body.messages', 'msg': 'Input should be a valid list', "
            "'input': 'hi'}",
            "body.messages",
        ),
    ),
    (
        "body not an object",
        [1],
        _validation(
            "{'type': 'model_attributes_type', 'loc': 'body', 'msg': 'Input should be a valid "
            "dictionary or object to extract fields from', 'input': '<list of 1 items>'}",
            "body",
        ),
    ),
    (
        "two errors, in field order",
        {"model": "nope", "max_tokens": "x"},
        {
            "error": {
                "message": "2 validation errors:\n"
                "  {'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', "
                "'input': '<dict of 2 items>'}\n"
                "  {'type': 'int_parsing', 'loc': 'body.max_tokens', 'msg': 'Input should be a "
                "valid integer, unable to parse string as an integer', 'input': 'x'}",
                "type": "Bad Request",
                "param": "body.messages",
                "code": 400,
            }
        },
    ),
    (
        "stream_options without stream (checked before the model)",
        {"model": "nope", "messages": HI, "stream_options": {"include_usage": True}},
        _bad_request(
            "Stream options can only be defined when `stream=True`. (parameter=stream_options)",
            "stream_options",
        ),
    ),
    (
        "max_tokens above max_model_len",
        {"messages": HI, "max_tokens": 600},
        _bad_request(
            "max_tokens=600 cannot be greater than max_model_len=512. Please request fewer output "
            "tokens. (parameter=max_tokens, value=600)",
            "max_tokens",
        ),
    ),
    (
        "max_completion_tokens above max_model_len",
        {"messages": HI, "max_completion_tokens": 600},
        _bad_request(
            "max_completion_tokens=600 cannot be greater than max_model_len=512. Please request "
            "fewer output tokens. (parameter=max_completion_tokens, value=600)",
            "max_completion_tokens",
        ),
    ),
    (
        "max_tokens zero",
        {"messages": HI, "max_tokens": 0},
        _bad_request(
            "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)", "max_tokens"
        ),
    ),
    ("n zero", {"messages": HI, "n": 0}, _bad_request("n must be at least 1, got 0.", None)),
    (
        "n above 1 with greedy sampling",
        {"messages": HI, "n": 2, "temperature": 0},
        _bad_request("n must be 1 when using greedy sampling, got 2.", None),
    ),
    (
        "n above VLLM_MAX_N_SEQUENCES (refused before any work: no memory for 2**31 choices)",
        {"messages": HI, "n": 2147483648},
        _bad_request(
            "n must be at most 16384, got 2147483648. To increase this limit, set the "
            "VLLM_MAX_N_SEQUENCES environment variable.",
            None,
        ),
    ),
    (
        "min_tokens above max_tokens",
        {"messages": HI, "max_tokens": 5, "min_tokens": 10},
        _bad_request("min_tokens must be less than or equal to max_tokens=5, got 10.", None),
    ),
    (
        "negative min_tokens",
        {"messages": HI, "min_tokens": -1},
        _bad_request("min_tokens must be greater than or equal to 0, got -1.", None),
    ),
    (
        "empty conversation",
        {"messages": []},
        _bad_request(
            "Cannot apply chat template to an empty conversation. Provide at least one message.",
            None,
        ),
    ),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_chat_400s(http: httpx.Client, body: object, expected: dict[str, object]) -> None:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json() == expected


def test_invalid_json_is_a_400_at_the_error_position(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        content=b'{"model": x}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json() == _validation(
        "{'type': 'json_invalid', 'loc': 'body.10', 'msg': 'JSON decode error', "
        "'input': '<dict of 0 items>', 'ctx': {'error': 'Expecting value'}}",
        "body.10",
    )


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_non_json_content_type_is_a_400(http: httpx.Client, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = http.post("/v1/chat/completions", content=b"{}", headers=headers)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "1 validation error:\n  Unsupported Media Type: Only 'application/json' "
            "is allowed",
            "type": "Bad Request",
            "param": None,
            "code": 400,
        }
    }


def test_completions_without_prompt(http: httpx.Client) -> None:
    response = http.post("/v1/completions", json={"model": "tiny-llama"})
    assert response.status_code == 400
    assert response.json() == _bad_request(
        "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)",
        "prompt",
    )


def test_unknown_fields_are_accepted(http: httpx.Client) -> None:
    body = {"messages": HI, "unknown_field": {"a": 1}, "guided_json": {}, **greedy(1)}
    assert http.post("/v1/chat/completions", json=body).status_code == 200


def test_numeric_strings_are_accepted_for_numbers(http: httpx.Client) -> None:
    body = {"messages": HI, "max_tokens": "2", "ignore_eos": True}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 2


def test_unknown_route_and_wrong_method_use_fastapi_bodies(http: httpx.Client) -> None:
    response = http.get("/v1/nope")
    assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
    response = http.get("/v1/chat/completions")
    assert (response.status_code, response.json()) == (405, {"detail": "Method Not Allowed"})
    assert response.headers["allow"] == "POST"
