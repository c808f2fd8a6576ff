"""`services.classifier.route`: the text classified and the route decided (DESIGN section 4)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from schemas.config import Config, decode_config
from schemas.openai import ChatMessage, ChatRequestView
from services.classifier.route import (
    TRUNCATION_MARK,
    ClassifyText,
    Router,
    UnknownModelError,
    bound_text,
    message_text,
    pick_variant,
)


@pytest.fixture(scope="module")
def shipped(repo_root: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((repo_root / "config" / "config.yaml").read_text())
    return data


def _config(data: dict[str, Any], **changes: Any) -> Config:
    data = copy.deepcopy(data)
    for key, value in changes.items():
        data[key] = value
    return decode_config(data)


def _view(*messages: tuple[str, Any], model: str = "MoM") -> ChatRequestView:
    return ChatRequestView(
        model=model, messages=[ChatMessage(role=r, content=c) for r, c in messages]
    )


# ---------------------------------------------------------------------------- text


class TestText:
    def test_last_user_message_first_then_earlier_turns_weighted(
        self, shipped: dict[str, Any]
    ) -> None:
        router = Router(_config(shipped, routing={"history_user_turns": 2}))  # weight 0.5
        view = _view(
            ("system", "be brief"),
            ("user", "first question"),
            ("assistant", "an answer"),
            ("user", "second question"),
            ("user", "third question"),
            ("user", "fourth question"),
        )
        turns = router.turns_of(view)
        assert [t.text for t in turns] == ["fourth question", "third question", "second question"]
        assert [t.weight for t in turns] == [1.0, 0.5, 0.25]

    def test_last_user_message_only_without_history(self, shipped: dict[str, Any]) -> None:
        router = Router(_config(shipped, routing={"history_user_turns": 0}))
        view = _view(("user", "one"), ("assistant", "x"), ("user", "two"))
        assert router.turns_of(view) == [ClassifyText("two")]

    def test_history_weight_is_configurable(self, shipped: dict[str, Any]) -> None:
        routing = {"history_user_turns": 1, "history_weight": 0.8}
        router = Router(_config(shipped, routing=routing))
        view = _view(("user", "one"), ("assistant", "x"), ("user", "two"), ("user", "three"))
        assert router.turns_of(view) == [ClassifyText("three"), ClassifyText("two", weight=0.8)]

    def test_a_weight_of_zero_classifies_the_last_turn_only(self, shipped: dict[str, Any]) -> None:
        router = Router(_config(shipped, routing={"history_weight": 0.0}))
        view = _view(("user", "one"), ("user", "two"))
        assert router.turns_of(view) == [ClassifyText("two")]

    def test_content_parts(self) -> None:
        parts: list[dict[str, Any]] = [
            {"type": "text", "text": "What is"},
            {"type": "image_url", "image_url": {"url": "http://x"}},
            {"type": "input_text", "text": "a tort?"},
        ]
        assert message_text(ChatMessage(role="user", content=parts)) == "What is\na tort?"
        assert message_text(ChatMessage(role="user", content=None)) == ""

    def test_no_user_turn_uses_the_last_text(self, shipped: dict[str, Any]) -> None:
        router = Router(_config(shipped))
        assert router.turns_of(_view(("system", "sys text"))) == [ClassifyText("sys text")]
        assert router.turns_of(_view()) == [ClassifyText("")]
        assert router.turns_of(_view(("user", ""), ("user", []))) == [ClassifyText("")]

    def test_bound_keeps_head_and_tail_and_flags_it(self) -> None:
        text = "H" * 100 + "M" * 1000 + "T" * 100
        bounded = bound_text(text, 64)
        assert bounded.truncated and len(bounded.text) == 64
        assert bounded.text.startswith("H") and bounded.text.endswith("T")
        assert TRUNCATION_MARK in bounded.text
        assert not bound_text("short", 64).truncated

    def test_every_turn_is_bounded_on_its_own(self, shipped: dict[str, Any]) -> None:
        router = Router(_config(shipped, routing={"history_user_turns": 3, "max_text_chars": 40}))
        view = _view(("user", "a" * 50), ("user", "b" * 10), ("user", "c" * 10))
        turns = router.turns_of(view)
        assert [t.text for t in turns[:2]] == ["c" * 10, "b" * 10]
        assert turns[2].truncated and len(turns[2].text) == 40
        assert not turns[0].truncated

    def test_history_is_bounded(self, shipped: dict[str, Any]) -> None:
        from schemas.config import ConfigError

        with pytest.raises(ConfigError, match="history_user_turns"):
            _config(shipped, routing={"history_user_turns": 9})

    def test_same_window_for_the_api(self, shipped: dict[str, Any]) -> None:
        router = Router(_config(shipped, routing={"max_text_chars": 32}))
        long = "x" * 100
        assert [router.bound(long)] == router.turns_of(_view(("user", long)))


# ---------------------------------------------------------------------------- decisions


class TestDecide:
    def test_category_routes_to_its_adapter_with_prompt_and_endpoints(
        self, shipped: dict[str, Any]
    ) -> None:
        route = Router(_config(shipped)).decide("technical", 0.9)
        assert route.model == "technical-lora" and route.adapter == "technical-lora"
        assert route.base_model == "llama2-7b"
        assert route.category == "technical" and route.confidence == 0.9
        assert route.reason == "classified"
        assert route.system_prompt == "You are an expert software engineer."
        assert route.system_prompt_mode == "insert"
        assert route.endpoints == ["vllm-primary"]
        # The shipped family "llama2" is not defined: on/off is recorded, no field is chosen.
        assert route.use_reasoning is True and route.reasoning_type is None

    def test_below_threshold_goes_to_default_model(self, shipped: dict[str, Any]) -> None:
        route = Router(_config(shipped)).decide("medical", 0.59)
        assert route.model == "llama2-7b" and route.adapter is None
        assert route.reason == "below_threshold" and route.category is None
        assert route.confidence == 0.59 and route.system_prompt is None
        assert route.use_reasoning is None

    def test_threshold_is_inclusive(self, shipped: dict[str, Any]) -> None:
        assert Router(_config(shipped)).decide("medical", 0.6).reason == "classified"

    def test_no_category_goes_to_default_model(self, shipped: dict[str, Any]) -> None:
        assert Router(_config(shipped)).decide(None, 0.99).reason == "below_threshold"

    def test_empty_text(self, shipped: dict[str, Any]) -> None:
        route = Router(_config(shipped)).decide(None, 0.0, empty=True)
        assert route.reason == "empty" and route.model == "llama2-7b"

    def test_base_model_candidate(self, shipped: dict[str, Any]) -> None:
        route = Router(_config(shipped)).decide("general", 0.95)
        assert route.model == "llama2-7b" and route.adapter is None
        assert route.system_prompt == "You are a helpful assistant."
        assert route.use_reasoning is False

    def test_truncation_is_carried(self, shipped: dict[str, Any]) -> None:
        assert Router(_config(shipped)).decide("legal", 0.9, truncated=True).truncated

    def test_highest_score_wins_and_the_rest_are_fallbacks(self, shipped: dict[str, Any]) -> None:
        data = copy.deepcopy(shipped)
        data["categories"][1]["model_scores"] = [
            {"model": "llama2-7b", "lora_name": "legal-lora", "score": 0.5},
            {"model": "llama2-7b", "lora_name": "medical-lora", "score": 0.9},
            # A tie with weight 0 takes no traffic: it is the first fallback.
            {"model": "llama2-7b", "score": 0.9, "weight": 0},
        ]
        route = Router(decode_config(data)).decide("medical", 0.9)
        assert route.model == "medical-lora"
        # The other candidates follow as fallbacks, next-best first, each fully routed.
        assert [(f.model, f.adapter) for f in route.fallbacks] == [
            ("llama2-7b", None),
            ("legal-lora", "legal-lora"),
        ]
        assert all(f.category == "medical" and f.endpoints for f in route.fallbacks)
        assert all(f.fallbacks == [] for f in route.fallbacks)

    def test_single_candidate_has_no_fallbacks(self, shipped: dict[str, Any]) -> None:
        assert Router(_config(shipped)).decide("legal", 0.9).fallbacks == []

    def test_category_without_candidates_falls_back(self, shipped: dict[str, Any]) -> None:
        data = copy.deepcopy(shipped)
        data["categories"][2]["model_scores"] = []
        route = Router(decode_config(data)).decide("legal", 0.9)
        assert route.reason == "fallback" and route.model == "llama2-7b"
        assert route.category == "legal"

    def test_replace_mode_is_carried(self, shipped: dict[str, Any]) -> None:
        router = Router(_config(shipped, routing={"system_prompt_mode": "replace"}))
        assert router.decide("legal", 0.9).system_prompt_mode == "replace"

    def test_default_model_may_be_an_adapter(self, shipped: dict[str, Any]) -> None:
        route = Router(_config(shipped, default_model="legal-lora")).decide(None, 0.1)
        assert route.model == "legal-lora" and route.adapter == "legal-lora"
        assert route.base_model == "llama2-7b"


class TestReasoning:
    def _with_family(self, shipped: dict[str, Any], family: str) -> Router:
        data = copy.deepcopy(shipped)
        data["model_config"]["llama2-7b"]["reasoning_family"] = family
        return Router(decode_config(data))

    def test_chat_template_kwargs_family_and_the_entrys_own_effort(
        self, shipped: dict[str, Any]
    ) -> None:
        router = self._with_family(shipped, "qwen3")
        route = router.decide("medical", 0.9)
        assert route.use_reasoning is True
        assert route.reasoning_type == "chat_template_kwargs"
        assert route.reasoning_parameter == "enable_thinking"
        # The adapter's own entry says "high"; the global default is "medium".
        assert route.reasoning_effort == "high"

    def test_explicit_off(self, shipped: dict[str, Any]) -> None:
        route = self._with_family(shipped, "qwen3").decide("general", 0.9)
        assert route.use_reasoning is False and route.reasoning_type == "chat_template_kwargs"
        assert route.reasoning_effort is None

    def test_effort_falls_back_to_the_default(self, shipped: dict[str, Any]) -> None:
        data = copy.deepcopy(shipped)
        data["model_config"]["llama2-7b"]["reasoning_family"] = "gpt-oss"
        del data["categories"][0]["model_scores"][0]["reasoning_effort"]
        data["routing"]["default_reasoning_effort"] = "low"
        route = Router(decode_config(data)).decide("technical", 0.9)
        assert route.reasoning_type == "reasoning_effort" and route.reasoning_effort == "low"

    def test_unset_use_reasoning_sends_nothing(self, shipped: dict[str, Any]) -> None:
        data = copy.deepcopy(shipped)
        data["model_config"]["llama2-7b"]["reasoning_family"] = "qwen3"
        del data["categories"][3]["model_scores"][0]["use_reasoning"]
        route = Router(decode_config(data)).decide("general", 0.9)
        assert route.use_reasoning is None and route.reasoning_type is None


class TestPassthroughAndEndpoints:
    def test_auto_names_ask_for_classification(self, shipped: dict[str, Any]) -> None:
        router = Router(_config(shipped))
        assert router.passthrough("MoM") is None and router.passthrough("auto") is None

    def test_configured_models_pass_through(self, shipped: dict[str, Any]) -> None:
        router = Router(_config(shipped))
        route = router.passthrough("medical-lora")
        assert route is not None and route.reason == "passthrough"
        assert route.model == "medical-lora" and route.base_model == "llama2-7b"
        assert route.adapter == "medical-lora" and route.system_prompt is None
        base = router.passthrough("llama2-7b")
        assert base is not None and base.adapter is None

    def test_missing_model_means_the_default(self, shipped: dict[str, Any]) -> None:
        route = Router(_config(shipped)).passthrough(None)
        assert route is not None and route.model == "llama2-7b"

    def test_unknown_model(self, shipped: dict[str, Any]) -> None:
        with pytest.raises(UnknownModelError, match="gpt-4"):
            Router(_config(shipped)).passthrough("gpt-4")

    def test_endpoints_ordered_by_weight_and_limited_to_preferred(
        self, shipped: dict[str, Any]
    ) -> None:
        data = copy.deepcopy(shipped)
        data["vllm_endpoints"] = [
            {"name": "a", "address": "127.0.0.1", "port": 1, "weight": 1},
            {"name": "b", "address": "127.0.0.1", "port": 2, "weight": 3},
            {"name": "c", "address": "127.0.0.1", "port": 3, "weight": 1},
            {"name": "d", "address": "127.0.0.1", "port": 4, "weight": 9},
        ]
        data["model_config"]["llama2-7b"]["preferred_endpoints"] = ["a", "b", "c"]
        router = Router(decode_config(data))
        assert router.decide("legal", 0.9).endpoints == ["b", "a", "c"]
        data["model_config"]["llama2-7b"]["preferred_endpoints"] = []
        assert Router(decode_config(data)).endpoints_of("llama2-7b") == ["d", "b", "a", "c"]


def test_route_encodes_on_the_wire(shipped: dict[str, Any]) -> None:
    route = Router(_config(shipped)).decide("technical", 0.9)
    assert msgspec.json.decode(msgspec.json.encode(route), type=type(route)) == route


class TestVariants:
    """A/B between adapter versions: entries sharing a category's top score split by weight."""

    @staticmethod
    def _ab(shipped: dict[str, Any], weights: tuple[float | None, float | None]) -> Router:
        data = copy.deepcopy(shipped)
        data["model_config"]["llama2-7b"]["loras"].append({"name": "medical-lora-v2"})
        entries = []
        for name, weight in zip(("medical-lora", "medical-lora-v2"), weights, strict=True):
            entry: dict[str, Any] = {"model": "llama2-7b", "lora_name": name, "score": 1.0}
            if weight is not None:
                entry["weight"] = weight
            entries.append(entry)
        data["categories"][1]["model_scores"] = [
            *entries,
            {"model": "llama2-7b", "score": 0.5},
        ]
        return Router(decode_config(data))

    def test_weights_set_the_split(self, shipped: dict[str, Any]) -> None:
        router = self._ab(shipped, (1.0, 3.0))
        picks = [router.decide("medical", 0.9, key=f"req-{i}").model for i in range(4000)]
        share = picks.count("medical-lora-v2") / len(picks)
        # Binomial(4000, 0.75): the standard deviation is 0.7 %, so 3 points is > 4 sigma.
        assert 0.72 < share < 0.78
        assert set(picks) == {"medical-lora", "medical-lora-v2"}

    def test_unset_weights_split_evenly(self, shipped: dict[str, Any]) -> None:
        router = self._ab(shipped, (None, None))
        picks = [router.decide("medical", 0.9, key=f"user-{i}").model for i in range(4000)]
        assert 0.46 < picks.count("medical-lora") / len(picks) < 0.54

    def test_a_key_always_gets_the_same_variant_and_the_rest_follow(
        self, shipped: dict[str, Any]
    ) -> None:
        router = self._ab(shipped, (1.0, 1.0))
        again = self._ab(shipped, (1.0, 1.0))  # another replica: the same answer
        for i in range(50):
            first = router.decide("medical", 0.9, key=f"user-{i}")
            assert again.decide("medical", 0.9, key=f"user-{i}").model == first.model
            other = {"medical-lora", "medical-lora-v2"} - {first.model}
            assert [f.model for f in first.fallbacks] == [*other, "llama2-7b"]

    def test_weight_zero_drains_a_variant(self, shipped: dict[str, Any]) -> None:
        router = self._ab(shipped, (0.0, 1.0))
        assert {router.decide("medical", 0.9, key=str(i)).model for i in range(200)} == {
            "medical-lora-v2"
        }

    def test_a_higher_score_still_takes_everything(self, shipped: dict[str, Any]) -> None:
        data = copy.deepcopy(shipped)
        data["categories"][1]["model_scores"] = [
            {"model": "llama2-7b", "lora_name": "medical-lora", "score": 0.9, "weight": 5},
            {"model": "llama2-7b", "lora_name": "legal-lora", "score": 1.0},
        ]
        router = Router(decode_config(data))
        assert {router.decide("medical", 0.9, key=str(i)).model for i in range(200)} == {
            "legal-lora"
        }

    def test_pick_variant_is_a_stable_hash(self) -> None:
        # Pinned answers: every replica and every release must agree on them, so a change of
        # hash (which would move users between variants) fails here.
        medical = [pick_variant("medical", f"k{i}", [1.0, 1.0]) for i in range(12)]
        assert medical == [1, 1, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1]
        # The category is part of the hash: the same keys split independently elsewhere.
        legal = [pick_variant("legal", f"k{i}", [1.0, 1.0]) for i in range(12)]
        assert legal == [1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0]
        assert pick_variant("medical", "k", [0.0, 2.0]) == 1
        assert pick_variant("medical", "k", [2.0, 0.0]) == 0
