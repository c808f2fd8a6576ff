"""Served models and LoRA adapters: the `/v1/models` cards, model resolution, runtime load/unload.

Mirrors vLLM's `OpenAIServingModels`: one card per served base name, then one per adapter in insertion
order (static first, runtime loads appended); an unknown model and an unknown adapter are the same 404.
Every public method returns its result or an `ErrorResponse`; none raises for bad input.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import ErrorKind, ErrorResponse, error_response
from schemas.openai import ModelCard, ModelList, ModelPermission
from services.mockvllm.settings import MockSettings

__all__ = ["Adapter", "Registry", "Resolved", "sanitize_message"]

# vLLM's sanitize_message() hides file-system paths in error texts; this matches the same two families.
_PATH_RE = re.compile(
    r"(?:/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[^\s'\"`,]*)?)"
    r"|(?:\b[\w.-]+/(?:[\w.-]+/)+[\w-]+\.\w+\b)"
)


def sanitize_message(message: str) -> str:
    """Replace file-system paths in ``message`` with ``<path>``, as vLLM does before sending errors."""
    return _PATH_RE.sub("<path>", message)


@dataclass(frozen=True, slots=True)
class Adapter:
    name: str
    path: str
    parent: str


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a request's ``model`` resolved to: the name to report and the adapter, if any."""

    response_model: str
    adapter: Adapter | None


class Registry:
    """The mutable set of adapters on top of fixed base names. Not thread-safe; one event loop."""

    def __init__(self, settings: MockSettings) -> None:
        self._settings = settings
        self.base_names: tuple[str, ...] = settings.served_names
        self._adapters: dict[str, Adapter] = {}
        for module in settings.lora_modules:
            self._adapters[module.name] = Adapter(
                module.name, module.path, self._parent_for(module.base_model_name)
            )

    def _parent_for(self, base_model_name: str | None) -> str:
        if base_model_name and base_model_name in self.base_names:
            return base_model_name
        return self.base_names[0]

    @property
    def adapters(self) -> dict[str, Adapter]:
        return dict(self._adapters)

    def model_list(self) -> ModelList:
        """The `/v1/models` body; `created` and the permission ids are fresh on every call, as in vLLM."""
        now = int(time.time())

        def perm() -> list[ModelPermission]:
            return [ModelPermission(id=f"modelperm-{secrets.token_hex(8)}", created=now)]

        cards = [
            ModelCard(
                id=name,
                created=now,
                root=self._settings.model,
                parent=None,
                max_model_len=self._settings.max_model_len,
                permission=perm(),
            )
            for name in self.base_names
        ]
        cards += [
            ModelCard(id=a.name, created=now, root=a.path, parent=a.parent, permission=perm())
            for a in self._adapters.values()
        ]
        return ModelList(data=cards)

    def resolve(self, model: str | None) -> Resolved | ErrorResponse:
        """Map a request's ``model`` to the base model (missing, empty or a base alias) or an adapter."""
        if not model or model in self.base_names:
            return Resolved(self.base_names[0], None)
        adapter = self._adapters.get(model)
        if adapter is not None:
            return Resolved(adapter.name, adapter)
        message = f"The model `{model}` does not exist."
        if self._settings.valid_aliases_suffix:
            message += f" Valid aliases: {', '.join(self.base_names)}."
        return error_response(ErrorKind.NOT_FOUND, message, param="model")

    def load(self, name: str, path: str, load_inplace: bool) -> str | ErrorResponse:
        """Register an adapter at run time; returns vLLM's success text or its error."""
        if not name or not path:
            return error_response(
                ErrorKind.INVALID_USER_INPUT, "Both 'lora_name' and 'lora_path' must be provided."
            )
        if name in self.base_names:
            return error_response(
                ErrorKind.INVALID_USER_INPUT,
                f"The lora adapter '{name}' conflicts with a served base model.",
            )
        if name in self._adapters and not load_inplace:
            return error_response(
                ErrorKind.INVALID_USER_INPUT,
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.",
            )
        if self._settings.lora_path_check == "adapter":
            config = Path(path) / "adapter_config.json"
            try:
                rank = int(json.loads(config.read_text()).get("r", 0))
            except (OSError, ValueError, AttributeError):
                return error_response(
                    ErrorKind.NOT_FOUND,
                    sanitize_message(f"Loading lora {name} failed: No adapter found for {path}"),
                )
            if rank > self._settings.max_lora_rank:
                return error_response(
                    ErrorKind.INTERNAL,
                    "Call to add_lora method failed: Worker failed with error 'LoRA rank "
                    f"{rank} is greater than max_lora_rank {self._settings.max_lora_rank}.', "
                    "please check the stack trace above for the root cause",
                )
        self._adapters[name] = Adapter(name, path, self.base_names[0])
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str) -> str | ErrorResponse:
        """Deregister an adapter; returns vLLM's success text or its error."""
        if not name:
            return error_response(
                ErrorKind.INVALID_USER_INPUT,
                "'lora_name' needs to be provided to unload a LoRA adapter.",
            )
        if name not in self._adapters:
            return error_response(
                ErrorKind.NOT_FOUND, f"The lora adapter '{name}' cannot be found."
            )
        del self._adapters[name]
        return f"Success: LoRA adapter '{name}' removed successfully."
