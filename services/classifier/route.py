"""From a chat body to a route: the text to classify, and the decision once it is classified.

Plain logic (DESIGN section 4): no NATS, no model. `Router` is built once from the config and
answers three questions for each request:

- `turns_of(view)`: which texts to classify: the last user message and up to
  `routing.history_user_turns` earlier user turns, each a text of its own with its weight
  (`history_weight` to the power of how far back it is; the last turn weighs 1), each bounded
  to `routing.max_text_chars` with head and tail kept; a cut is flagged, never silent. The
  classification API uses the same window (`bound_text`), so both paths agree. How the turns'
  results combine: `route_chat.combine`.
- `passthrough(model)`: a request naming a configured base model or adapter goes through
  unchanged (no classification); an unknown name is an error; an auto name returns None. What
  a name means is `Config.target_of`'s decision, the same the ingress makes.
- `decide(...)`: the route for a classification: below the threshold (or no category) ->
  `default_model`; otherwise the category's highest-scoring candidate, whose `lora_name`
  becomes the model name and which inherits its base model's endpoints and reasoning family.
  When several candidates share the top score (A/B between adapter versions), `pick_variant`
  chooses one by their `weight`s from a stable hash of the request's key (its id, or the
  header `routing.ab_key_header` names), the same on every classifier replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from msgspec import UnsetType

from schemas.config import Category, Config, ModelScore
from schemas.openai import ChatMessage, ChatRequestView
from schemas.wire import Route

__all__ = [
    "TRUNCATION_MARK",
    "ClassifyText",
    "Router",
    "UnknownModelError",
    "bound_text",
    "message_text",
    "pick_variant",
]

#: Joins the head and the tail of a text cut to `routing.max_text_chars`.
TRUNCATION_MARK = " … "
#: Content-part types that carry text (chat completions and the Responses API spelling).
_TEXT_PARTS = frozenset({"text", "input_text"})


class UnknownModelError(LookupError):
    """The request names a model that is neither an auto name nor a configured model/adapter."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.")
        self.model = model


@dataclass(frozen=True, slots=True)
class ClassifyText:
    """A text to classify for one request; `truncated` when it was cut to the window;
    `weight`: its share when several turns of a conversation are combined."""

    text: str
    truncated: bool = False
    weight: float = 1.0


def message_text(message: ChatMessage) -> str:
    """The text of one message: its string content, or its text parts joined by newlines.

    Non-text parts (images, audio) are skipped; a message without text gives "".
    """
    content = message.content
    if isinstance(content, str):
        return content
    if not content:
        return ""
    texts: list[str] = []
    for part in content:
        text: Any = part.get("text")
        if part.get("type", "text") in _TEXT_PARTS and isinstance(text, str) and text:
            texts.append(text)
    return "\n".join(texts)


def bound_text(text: str, max_chars: int) -> ClassifyText:
    """`text` cut to at most `max_chars` characters, keeping its head and its tail.

    The beginning of a prompt usually states the task and the end the question, so both are
    kept; the middle is replaced by `TRUNCATION_MARK`.
    """
    if len(text) <= max_chars:
        return ClassifyText(text)
    room = max_chars - len(TRUNCATION_MARK)
    if room < 2:
        return ClassifyText(text[:max_chars], truncated=True)
    head = (room + 1) // 2
    tail = room - head
    return ClassifyText(text[:head] + TRUNCATION_MARK + text[len(text) - tail :], truncated=True)


def pick_variant(category: str, key: str, weights: Sequence[float]) -> int:
    """The index of the variant `key` gets among `weights` (not all 0) in `category`.

    A point in [0, 1) from a hash of the category and the key (BLAKE2b, so every process and
    every run agree) falls into one variant's share of the weights' sum. The category is part
    of the hash, so a key's variants in different categories are independent.
    """
    digest = hashlib.blake2b(f"{category}\0{key}".encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2.0**64 * sum(weights)
    for index, weight in enumerate(weights):
        if point < weight:
            return index
        point -= weight
    return max(i for i, w in enumerate(weights) if w > 0)  # rounding at the very end


@dataclass(frozen=True, slots=True)
class _Choice:
    """A category's candidates, best first, resolved once per config revision; `tied` holds
    the top-score entries' weights (unset counts as 1) when there are several."""

    category: Category
    scores: list[ModelScore]
    tied: list[float]


class Router:
    """Routing decisions for one config. Immutable; build it once and share it."""

    def __init__(self, config: Config, revision: int = 0) -> None:
        self.config = config
        self.revision = revision
        """The live config revision `config` is (0: a local file)."""
        self.threshold = config.classifier.category_model.threshold
        self._choices: dict[str, _Choice] = {}
        for category in config.categories:
            if category.model_scores:
                # Highest score wins; entries sharing it split the traffic by weight. The rest
                # are the fallbacks, best first; equal scores keep the file's order (stable).
                ranked = sorted(category.model_scores, key=lambda s: -s.score)
                top = [s for s in ranked if s.score == ranked[0].score]
                tied = [1.0 if s.weight is None else s.weight for s in top] if len(top) > 1 else []
                self._choices[category.name] = _Choice(category, ranked, tied)
        self._endpoints: dict[str, list[str]] = {
            base: self._ordered_endpoints(base) for base in config.model_config
        }
        default_base = config.base_model_of(config.default_model)
        if default_base is None:  # `check` refuses such a config; be explicit if it slipped by
            raise ValueError(f"default_model {config.default_model!r} is not a configured model")
        self._default_base = default_base

    # ------------------------------------------------------------------ text

    def turns_of(self, view: ChatRequestView) -> list[ClassifyText]:
        """The texts to classify for a chat request, the last user turn first.

        The last user message, then up to `routing.history_user_turns` earlier user turns,
        newest first, each cut to the window on its own and weighted `history_weight ** k`
        (k turns before the last; none with a weight of 0). Without any user turn, the last
        message with text alone; without any text, one empty text.
        """
        routing = self.config.routing
        messages = [] if isinstance(view.messages, UnsetType) else view.messages
        user_texts = [t for m in messages if m.role == "user" and (t := message_text(m))]
        if not user_texts:
            other = [t for m in messages if (t := message_text(m))]
            return [self.bound(other[-1]) if other else ClassifyText("")]
        earlier = routing.history_user_turns if routing.history_weight > 0 else 0
        recent = user_texts[::-1][: earlier + 1]
        turns = []
        for back, text in enumerate(recent):
            bounded = self.bound(text)
            turns.append(
                ClassifyText(bounded.text, bounded.truncated, routing.history_weight**back)
            )
        return turns

    def bound(self, text: str) -> ClassifyText:
        """The classification API's window: the same bound as the routing path."""
        return bound_text(text, self.config.routing.max_text_chars)

    # ------------------------------------------------------------------ decisions

    def passthrough(self, model: str | None) -> Route | None:
        """The route for an explicit model, or None when `model` is an auto name.

        A missing or empty `model` means the default model, as vLLM takes it to mean its base
        model. Raises `UnknownModelError` for a name the config does not know.
        """
        target = self.config.target_of(model)
        if target is None:
            raise UnknownModelError(model or self.config.default_model)
        if target.kind == "auto":
            return None
        name, base = target.model, target.base_model
        return Route(
            model=name,
            base_model=base,
            adapter=name if name != base else None,
            reason="passthrough",
            endpoints=list(self._endpoints[base]),
        )

    def decide(
        self,
        category: str | None,
        confidence: float,
        *,
        truncated: bool = False,
        empty: bool = False,
        key: str = "",
    ) -> Route:
        """The route for a classification result.

        `empty`: there was no text to classify -> `default_model`, reason "empty". A category
        None or below the threshold -> `default_model`, reason "below_threshold" (the
        confidence is kept for headers and logs). Otherwise the category's winning candidate;
        among entries sharing the top score, the one `key` picks (`pick_variant`), the others
        then being the first fallbacks.
        """
        if empty:
            return self._default("empty", None, truncated)
        if category is None or confidence < self.threshold:
            return self._default("below_threshold", confidence, truncated)
        choice = self._choices.get(category)
        if choice is None:
            # A category without candidates routes like no category at all.
            return self._default("fallback", confidence, truncated, category=category)
        scores = choice.scores
        if choice.tied:
            chosen = pick_variant(category, key, choice.tied)
            scores = [scores[chosen], *scores[:chosen], *scores[chosen + 1 :]]
        best, *rest = (
            self._candidate(choice.category, score, confidence, truncated) for score in scores
        )
        best.fallbacks = rest
        return best

    def _candidate(
        self, category: Category, score: ModelScore, confidence: float, truncated: bool
    ) -> Route:
        base = score.model
        route = Route(
            model=score.lora_name or base,
            base_model=base,
            category=category.name,
            confidence=confidence,
            adapter=score.lora_name,
            reason="classified",
            system_prompt=category.system_prompt or None,
            system_prompt_mode=self.config.routing.system_prompt_mode,
            endpoints=list(self._endpoints[base]),
            truncated=truncated,
        )
        return self._with_reasoning(route, score)

    def _default(
        self, reason: Any, confidence: float | None, truncated: bool, category: str | None = None
    ) -> Route:
        name = self.config.default_model
        base = self._default_base
        return Route(
            model=name,
            base_model=base,
            category=category,
            confidence=confidence,
            adapter=name if name != base else None,
            reason=reason,
            endpoints=list(self._endpoints[base]),
            truncated=truncated,
        )

    def _with_reasoning(self, route: Route, score: ModelScore) -> Route:
        """Fill the reasoning fields from the candidate and its base model's family.

        Nothing is set when the candidate leaves `use_reasoning` unset or the family is not
        defined. The effort is the candidate's own `reasoning_effort` (never looked up by
        the rewritten model name, which would miss adapters), else the configured default.
        """
        if score.use_reasoning is None:
            return route
        route.use_reasoning = score.use_reasoning
        family_name = self.config.model_config[route.base_model].reasoning_family
        family = self.config.reasoning_families.get(family_name) if family_name else None
        if family is not None:
            route.reasoning_type = family.type
            route.reasoning_parameter = family.parameter
            if score.use_reasoning:
                route.reasoning_effort = (
                    score.reasoning_effort or self.config.routing.default_reasoning_effort
                )
        return route

    def _ordered_endpoints(self, base: str) -> list[str]:
        """The base model's endpoints (every endpoint when it lists none), heaviest first."""
        preferred = self.config.model_config[base].preferred_endpoints
        endpoints = [e for e in self.config.vllm_endpoints if not preferred or e.name in preferred]
        # Stable sort: equal weights keep the configured order.
        return [e.name for e in sorted(endpoints, key=lambda e: -e.weight)]

    def endpoints_of(self, base: str) -> Sequence[str]:
        """The endpoint names of `base`, heaviest first."""
        return self._endpoints[base]
