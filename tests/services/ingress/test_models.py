from __future__ import annotations

import msgspec

from schemas.config import Config
from schemas.openai import ModelList
from services.ingress.models import AUTO_OWNER, Target, model_list, resolve_model, unknown_model


def test_auto_names_classify(config: Config) -> None:
    for name in config.routing.auto_model_names:
        assert resolve_model(config, name) == Target("auto")


def test_missing_model_means_the_default_model(config: Config) -> None:
    for name in [None, ""]:
        assert resolve_model(config, name) == Target(
            "passthrough", config.default_model, "llama2-7b"
        )


def test_base_models_and_adapters_pass_through(config: Config) -> None:
    assert resolve_model(config, "llama2-7b") == Target("passthrough", "llama2-7b", "llama2-7b")
    assert resolve_model(config, "medical-lora") == Target(
        "passthrough", "medical-lora", "llama2-7b"
    )


def test_unknown_model_is_vllms_404(config: Config) -> None:
    assert resolve_model(config, "gpt-4") is None
    error = unknown_model("gpt-4").error
    assert (error.code, error.type, error.param) == (404, "NotFoundError", "model")
    assert "gpt-4" in error.message


def test_model_list_shape(config: Config) -> None:
    listing = msgspec.json.decode(model_list(config, 1700000000), type=ModelList)
    assert listing.object == "list"
    ids = [card.id for card in listing.data]
    assert ids[:3] == list(config.routing.auto_model_names)
    assert ids[3:] == ["llama2-7b", "technical-lora", "medical-lora", "legal-lora"]
    by_id = {card.id: card for card in listing.data}
    assert by_id["MoM"].owned_by == AUTO_OWNER
    assert by_id["llama2-7b"].parent is None
    assert by_id["medical-lora"].parent == "llama2-7b"
    assert all(card.object == "model" and card.created == 1700000000 for card in listing.data)
