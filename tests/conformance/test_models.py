"""``GET /v1/models``: base and adapter cards, key order, fresh ids; model resolution."""

from __future__ import annotations

import re
import time

import httpx
import openai

from tests.conformance.conftest import Target
from tests.conformance.helpers import greedy

CARD_KEYS = ["id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"]
PERMISSION_KEYS = [
    "id", "object", "created", "allow_create_engine", "allow_sampling", "allow_logprobs",
    "allow_search_indices", "allow_view", "allow_fine_tuning", "organization", "group", "is_blocking",
]  # fmt: skip


def test_models_list_has_base_then_adapter_cards(target: Target, http: httpx.Client) -> None:
    response = http.get("/v1/models")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["object", "data"] and body["object"] == "list"
    cards = body["data"]
    assert [c["id"] for c in cards[: 1 + len(target.adapters)]] == [target.model, *target.adapters]
    now = int(time.time())
    for card in cards:
        assert list(card) == CARD_KEYS
        assert card["object"] == "model" and card["owned_by"] == "vllm"
        assert abs(card["created"] - now) < 60
        (perm,) = card["permission"]
        assert list(perm) == PERMISSION_KEYS
        assert re.fullmatch(r"modelperm-[0-9a-f]{16}", perm["id"])
    base = cards[0]
    assert base["root"] == target.model_path
    assert base["parent"] is None
    assert base["max_model_len"] == target.max_model_len
    for card in cards[1 : 1 + len(target.adapters)]:
        assert card["root"] == target.adapters[card["id"]]
        assert card["parent"] == target.model
        assert card["max_model_len"] is None


def test_permission_ids_are_fresh_on_every_call(http: httpx.Client) -> None:
    first = http.get("/v1/models").json()["data"][0]["permission"][0]["id"]
    second = http.get("/v1/models").json()["data"][0]["permission"][0]["id"]
    assert first != second


def test_openai_client_lists_models(target: Target, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[: 1 + len(target.adapters)] == [target.model, *target.adapters]


def test_missing_or_empty_model_means_the_base_model(target: Target, http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "hi"}]
    for extra in ({}, {"model": ""}, {"model": target.model}):
        response = http.post(
            "/v1/chat/completions", json={"messages": messages, **greedy(2), **extra}
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == target.model


def test_adapter_requests_report_the_adapter_name(target: Target, client: openai.OpenAI) -> None:
    for name in target.adapters:
        reply = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        assert reply.model == name


def test_each_model_answers_differently_and_repeatably(
    target: Target, client: openai.OpenAI
) -> None:
    """Texts tell the adapters apart, so a test can prove which adapter answered."""

    def text(model: str) -> str:
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "How do I restart the server?"}],
            max_tokens=16,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        return reply.choices[0].message.content or ""

    models = [target.model, *target.adapters]
    texts = {m: text(m) for m in models}
    assert len(set(texts.values())) == len(models), texts
    assert all(text(m) == texts[m] for m in models)
