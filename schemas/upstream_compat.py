"""Keys of the upstream semantic-router schema that loraroute reads but does not implement.

The upstream LoRA-routing guide links to a complete example config (its repository's
`config/intelligent-routing/in-tree/lora_routing.yaml` at commit 3951728, 2025-11-03). That file
carries keys of the upstream router's whole schema (`src/semantic-router/pkg/config/config.go`
at the same commit): a similarity model, a semantic cache, PII policies, ... loraroute routes by
category only, so it has nothing to do with them. `strip_upstream_keys` takes them out of the
parsed YAML before it is typed, so that file passes unchanged, and names each one with what it
did upstream, for one warning. A key no version of either schema knows (a misspelling) is left
in place, and typing then reports it as an error with its line.

The upstream's later configs describe routing as `decisions` (each with `rules` and
`modelRefs[].lora_name`) under a `strategy`: a different format, which `decisions_format_issue`
recognises so that the error says so and points to the section of docs/config.md that maps it
to this one.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DECISIONS_DOCS",
    "DECISIONS_KEYS",
    "UPSTREAM_IGNORED",
    "decisions_format_key",
    "decisions_format_message",
    "strip_upstream_keys",
]

#: Where a table may hold ignored keys: the top level, or one of the guide's tables.
_TOP = ""
_CLASSIFIER = "classifier"
_MODEL = "model_config.*"
_CATEGORY = "categories[]"
_SCORE = "categories[].model_scores[]"

#: (table, key) -> what the key did upstream. Keys loraroute implements are not listed.
UPSTREAM_IGNORED: dict[tuple[str, str], str] = {
    (_TOP, "bert_model"): "the BERT similarity model of the semantic cache and tool selection",
    (_TOP, "embedding_models"): "long-context embedding models (Qwen3, Gemma) for similarity",
    (_TOP, "semantic_cache"): "the semantic cache of answers to similar prompts",
    (_TOP, "prompt_guard"): "the jailbreak detection model",
    (_TOP, "tools"): "automatic tool selection by prompt similarity",
    (_TOP, "api"): "metrics of the batch classification API",
    (_TOP, "observability"): "OpenTelemetry tracing",
    (_TOP, "keyword_rules"): "keyword rules that pick a category before the classifier",
    (_TOP, "auto_model_name"): (
        "the model name that asks for routing (loraroute: routing.auto_model_names)"
    ),
    (_TOP, "include_config_models_in_list"): (
        "listing configured models in /v1/models (loraroute always lists them)"
    ),
    (_TOP, "clear_route_cache"): "clearing Envoy's route cache after the model is rewritten",
    (_TOP, "default_reasoning_effort"): (
        "the effort when an entry sets none (loraroute: routing.default_reasoning_effort)"
    ),
    (_CLASSIFIER, "mcp_category_model"): "a category classifier reached over MCP",
    (_CLASSIFIER, "pii_model"): "the PII detection model",
    (_MODEL, "pii_policy"): "which PII types requests to this model may carry",
    (_MODEL, "pricing"): "prices per million tokens, for cost metrics",
    (_CATEGORY, "system_prompt_enabled"): "switching the category's system prompt off",
    (_CATEGORY, "system_prompt_mode"): (
        "this category's prompt insertion mode (loraroute: routing.system_prompt_mode)"
    ),
    (_CATEGORY, "semantic_cache_enabled"): "the semantic cache for this category",
    (_CATEGORY, "semantic_cache_similarity_threshold"): "this category's cache hit threshold",
    (_CATEGORY, "jailbreak_enabled"): "jailbreak detection for this category",
    (_CATEGORY, "jailbreak_threshold"): "this category's jailbreak threshold",
    (_CATEGORY, "pii_enabled"): "PII detection for this category",
    (_CATEGORY, "pii_threshold"): "this category's PII threshold",
    (_SCORE, "reasoning_description"): "a description of the entry's reasoning mode",
}

#: Keys only the upstream's later "decisions" format has: at the top level (v0.3 nests
#: routing under `routing`, whose keys loraroute's own `routing` table does not have).
DECISIONS_KEYS = ("decisions", "strategy", "providers", "global", "version")
_DECISIONS_ROUTING_KEYS = ("decisions", "strategy", "modelCards", "signals")
#: The section of docs/config.md that maps the decisions format onto this one.
DECISIONS_DOCS = "docs/config.md#upstream-decisions-format"


def decisions_format_key(data: Any) -> str | None:
    """The first key of `data` (parsed YAML) that only the decisions format has, or None."""
    if not isinstance(data, dict):
        return None
    for key in DECISIONS_KEYS:
        if key in data:
            return key
    routing = data.get("routing")
    if isinstance(routing, dict):
        for key in _DECISIONS_ROUTING_KEYS:
            if key in routing:
                return f"routing.{key}"
    return None


def decisions_format_message() -> str:
    """The error for a config in the upstream's decisions format."""
    return (
        "this is the upstream's later decisions format (`strategy`, `decisions[].rules`, "
        "`modelRefs[].lora_name`), which loraroute does not read; write it as `categories` "
        f"with `model_scores[].lora_name` instead: {DECISIONS_DOCS} maps each key"
    )


def _take(table: Any, kind: str, path: str, found: list[tuple[str, str]]) -> None:
    if not isinstance(table, dict):
        return
    for (where, key), meaning in UPSTREAM_IGNORED.items():
        if where == kind and key in table:
            del table[key]
            found.append((f"{path}.{key}" if path else key, meaning))


def strip_upstream_keys(data: Any) -> list[tuple[str, str]]:
    """Remove the keys of `UPSTREAM_IGNORED` from the parsed YAML `data`, in place.

    Returns `(path, what it did upstream)` for each key removed, paths spelled like the
    config's other error paths (`model_config['llama2-7b'].pii_policy`).
    """
    found: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        return found
    _take(data, _TOP, "", found)
    _take(data.get("classifier"), _CLASSIFIER, "classifier", found)
    models = data.get("model_config")
    if isinstance(models, dict):
        for name, model in models.items():
            _take(model, _MODEL, f"model_config[{name!r}]", found)
    categories = data.get("categories")
    if isinstance(categories, list):
        for ci, category in enumerate(categories):
            _take(category, _CATEGORY, f"categories[{ci}]", found)
            scores = category.get("model_scores") if isinstance(category, dict) else None
            if isinstance(scores, list):
                for si, score in enumerate(scores):
                    _take(score, _SCORE, f"categories[{ci}].model_scores[{si}]", found)
    return found
