from __future__ import annotations

import msgspec

from schemas.config import Config
from schemas.openai import ModelList
from services.ingress.models import AUTO_OWNER, model_list, unknown_model


def test_unknown_model_is_vllms_404(config: Config) -> None:
    assert config.target_of("gpt-4") is None
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
