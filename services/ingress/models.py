"""Which `model` names the ingress accepts, and the `/v1/models` list it answers with.

Three kinds of name (DESIGN section 4): auto names (`MoM`, `auto`, ... from
`routing.auto_model_names`) ask for classification; a configured base model or adapter passes
through unchanged; anything else is unknown and gets vLLM's 404. A missing or empty `model` means
`default_model`, passed through, as vLLM takes it to mean its base model (the classifier applies
the same rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from schemas.config import Config
from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.openai import ModelCard, ModelList, ModelPermission

__all__ = [
    "AUTO_OWNER",
    "Target",
    "model_list",
    "resolve_model",
    "unknown_model",
]

#: `owned_by` of the auto names in `/v1/models`, so a client can tell them from served models.
AUTO_OWNER = "loraroute"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a request goes: `auto` (classify) or `passthrough` to `model` on `base_model`."""

    kind: Literal["auto", "passthrough"]
    model: str | None = None
    base_model: str | None = None


_AUTO = Target("auto")


def resolve_model(config: Config, model: str | None) -> Target | None:
    """The target for a request's `model`, or None when the name is unknown (answer 404)."""
    if model in config.routing.auto_model_names:
        return _AUTO
    model = model or config.default_model
    base = config.base_model_of(model)
    if base is None:
        return None
    return Target("passthrough", model, base)


def unknown_model(model: str) -> ErrorResponse:
    """vLLM's 404 for a model it does not serve (`param: "model"`)."""
    return error_response(ErrorKind.NOT_FOUND, f"The model `{model}` does not exist.", "model")


def model_list(config: Config, created: int) -> bytes:
    """The `/v1/models` body: auto names first, then each base model followed by its adapters.

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
    return msgspec.json.encode(ModelList(data=cards))
