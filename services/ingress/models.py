"""The ingress's answers about model names: vLLM's 404 for an unknown one, and `/v1/models`.

What a requested name means (auto, a base model, an adapter, unknown) is decided by
`schemas.config.Config.target_of`, the one rule the classifier applies too.
"""

from __future__ import annotations

import msgspec

from schemas.config import Config
from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.openai import ModelCard, ModelList, ModelPermission

__all__ = ["AUTO_OWNER", "model_list", "unknown_model"]

#: `owned_by` of the auto names in `/v1/models`, so a client can tell them from served models.
AUTO_OWNER = "loraroute"


def unknown_model(model: str) -> ErrorResponse:
    """vLLM's 404 for a model it does not serve (`param: "model"`)."""
    return error_response(ErrorKind.NOT_FOUND, f"The model `{model}` does not exist.", "model")


def model_list(config: Config, created: int, allowed: frozenset[str] | None = None) -> bytes:
    """The `/v1/models` body: auto names first, then each base model followed by its adapters;
    only the names in `allowed` when given (what an API key limited to them may see).

    Adapters carry `parent` = their base model (how vLLM marks them); auto names are owned by
    `loraroute`. Built once at start-up: the list changes only with the config.
    """

    def card(name: str, owner: str, parent: str | None) -> ModelCard:
        return ModelCard(
            id=name,
            created=created,
            owned_by=owner,
            root=name,
            parent=parent,
            permission=[ModelPermission(id=f"modelperm-{name}", created=created)],
        )

    cards = [card(name, AUTO_OWNER, None) for name in config.routing.auto_model_names]
    for base, model in config.model_config.items():
        cards.append(card(base, "vllm", None))
        cards.extend(card(lora.name, "vllm", base) for lora in model.loras)
    if allowed is not None:
        cards = [c for c in cards if c.id in allowed]
    return msgspec.json.encode(ModelList(data=cards))
