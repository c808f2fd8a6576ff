"""Config loading: the upstream guide's file as-is, and one failing case per cross-check."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from schemas.config import (
    Config,
    ConfigError,
    ModelTarget,
    check,
    decode_config,
    load_config,
)

# The upstream LoRA-routing guide's example, key for key.
GUIDE = textwrap.dedent(
    """\
    classifier:
      category_model:
        model_id: "models/category_classifier_modernbert-base_model"
        use_modernbert: true
        threshold: 0.6
        use_cpu: true
        category_mapping_path: "models/category_classifier_modernbert-base_model/category_mapping.json"
    vllm_endpoints:
      - name: "vllm-primary"
        address: "127.0.0.1"
        port: 8000
        weight: 1
    model_config:
      "llama2-7b":
        reasoning_family: "llama2"
        preferred_endpoints: ["vllm-primary"]
        loras:
          - name: "technical-lora"
            description: "Optimized for programming and technical questions"
          - name: "medical-lora"
            description: "Specialized for medical and healthcare domain"
          - name: "legal-lora"
            description: "Fine-tuned for legal questions"
    default_model: "llama2-7b"
    categories:
      - name: "technical"
        description: "Programming, software engineering, and technical questions"
        system_prompt: "You are an expert software engineer."
        model_scores:
          - model: "llama2-7b"
            lora_name: "technical-lora"
            score: 1.0
            use_reasoning: true
            reasoning_effort: "medium"
      - name: "medical"
        description: "Medical and healthcare questions"
        system_prompt: "You are a medical expert."
        model_scores:
          - model: "llama2-7b"
            lora_name: "medical-lora"
            score: 1.0
            use_reasoning: true
            reasoning_effort: "high"
      - name: "legal"
        description: "Legal questions and law-related topics"
        system_prompt: "You are a legal expert."
        model_scores:
          - model: "llama2-7b"
            lora_name: "legal-lora"
            score: 1.0
            use_reasoning: true
            reasoning_effort: "high"
      - name: "general"
        description: "General questions"
        system_prompt: "You are a helpful assistant."
        model_scores:
          - model: "llama2-7b"
            score: 0.8
            use_reasoning: false
    """
)

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    return [str(issue) for issue in info.value.issues]


def test_guide_file_loads_unchanged(tmp_path: Path) -> None:
    config, warnings = load_config(_write(tmp_path, GUIDE))
    assert [c.name for c in config.categories] == ["technical", "medical", "legal", "general"]
    assert config.categories[0].model_scores[0].lora_name == "technical-lora"
    assert config.categories[3].model_scores[0].lora_name is None
    assert config.classifier.category_model.threshold == 0.6
    assert config.base_model_of("medical-lora") == "llama2-7b"
    assert config.base_model_of("nope") is None
    # Defaults of our own sections apply.
    assert config.routing.auto_model_names == ["MoM", "auto", "vllm-sr/auto"]
    assert config.routing.system_prompt_mode == "insert"
    assert config.nats.subject_prefix == "loraroute"
    # The guide names a reasoning family nobody defines: a warning, not an error.
    assert len(warnings) == 1 and "'llama2' is not defined" in str(warnings[0])
    assert warnings[0].line == 15


def test_shipped_config_is_the_guide_with_the_built_model(tmp_path: Path) -> None:
    shipped, _ = load_config(REPO / "config" / "config.yaml")
    guide, _ = load_config(_write(tmp_path, GUIDE))
    assert shipped.classifier.category_model.model_id == "models/loraroute-domain"
    for field in ("vllm_endpoints", "model_config", "default_model", "categories"):
        assert getattr(shipped, field) == getattr(guide, field), field


def test_lora_name_must_be_declared_under_its_model(tmp_path: Path) -> None:
    text = GUIDE.replace('lora_name: "medical-lora"', 'lora_name: "cardio-lora"')
    assert _errors(tmp_path, text) == [
        "line 40: categories[1].model_scores[0].lora_name: 'cardio-lora' is not declared in "
        "model_config['llama2-7b'].loras"
    ]


def test_model_scores_model_must_be_configured(tmp_path: Path) -> None:
    text = GUIDE.replace(
        '  - model: "llama2-7b"\n        score: 0.8', '  - model: "gpt-9"\n        score: 0.8'
    )
    (error,) = _errors(tmp_path, text)
    assert error.startswith(
        "line 57: categories[3].model_scores[0].model: 'gpt-9' is not a base model"
    )


def test_preferred_endpoints_must_exist(tmp_path: Path) -> None:
    text = GUIDE.replace('preferred_endpoints: ["vllm-primary"]', 'preferred_endpoints: ["vllm-b"]')
    (error,) = _errors(tmp_path, text)
    assert "model_config['llama2-7b'].preferred_endpoints[0]: 'vllm-b' is not an endpoint" in error
    assert error.startswith("line 16:")


def test_default_model_must_be_base_or_adapter(tmp_path: Path) -> None:
    assert load_config(
        _write(tmp_path, GUIDE.replace('default_model: "llama2-7b"', 'default_model: "legal-lora"'))
    )
    (error,) = _errors(tmp_path, GUIDE.replace('default_model: "llama2-7b"', 'default_model: "x"'))
    assert error.startswith("line 24: default_model: 'x' is neither a base model")


@pytest.mark.parametrize("threshold", ["1.5", "-0.1"])
def test_threshold_in_unit_interval(tmp_path: Path, threshold: str) -> None:
    (error,) = _errors(tmp_path, GUIDE.replace("threshold: 0.6", f"threshold: {threshold}"))
    assert error.startswith("line 5: classifier.category_model.threshold: Expected `float`")


def test_duplicate_names(tmp_path: Path) -> None:
    text = GUIDE.replace('- name: "legal-lora"', '- name: "medical-lora"')
    text = text.replace('- name: "general"', '- name: "legal"')
    text = text.replace(
        "vllm_endpoints:\n",
        'vllm_endpoints:\n  - {name: "vllm-primary", address: "127.0.0.2", port: 8000}\n',
    )
    errors = _errors(tmp_path, text)
    assert any("vllm_endpoints[1].name: duplicate endpoint 'vllm-primary'" in e for e in errors)
    assert any("loras[2].name: duplicate adapter 'medical-lora'" in e for e in errors)
    assert any("categories[3].name: duplicate category 'legal'" in e for e in errors)
    # and the legal category's adapter is now undeclared
    assert any("'legal-lora' is not declared" in e for e in errors)


def test_adapter_may_not_shadow_base_model_or_auto_name(tmp_path: Path) -> None:
    text = GUIDE.replace('- name: "legal-lora"', '- name: "llama2-7b"')
    text += "routing:\n  auto_model_names: [MoM, medical-lora]\n"
    errors = _errors(tmp_path, text)
    assert any("'llama2-7b' is also a base model name" in e for e in errors)
    assert any(
        "routing.auto_model_names[1]: 'medical-lora' is also a model name" in e for e in errors
    )


def test_unknown_key_is_an_error_with_its_line(tmp_path: Path) -> None:
    (error,) = _errors(tmp_path, GUIDE.replace("    threshold: 0.6", "    treshold: 0.6"))
    assert error == (
        "line 5: classifier.category_model.treshold: unknown key (not part of the schema; "
        "check its spelling)"
    )


def test_wrong_type_and_missing_key(tmp_path: Path) -> None:
    (error,) = _errors(tmp_path, GUIDE.replace("port: 8000", "port: eight"))
    assert error.startswith("line 11: vllm_endpoints[0].port: Expected `int`, got `str`")
    (error,) = _errors(tmp_path, GUIDE.replace('default_model: "llama2-7b"\n', ""))
    assert "missing required field `default_model`" in error


def test_not_yaml_or_not_a_mapping(tmp_path: Path) -> None:
    (error,) = _errors(tmp_path, "classifier: [\n")
    assert "not valid YAML" in error
    (error,) = _errors(tmp_path, "- just\n- a list\n")
    assert "must be a mapping" in error


def test_every_category_reachable_from_labels() -> None:
    config = decode_config(__import__("yaml").safe_load(GUIDE))
    assert check(config, labels=["technical", "medical", "legal", "general"]) == (
        check(config)[0],
        check(config)[1],
    )
    errors, _ = check(config, labels=["technical", "medical", "general"])
    assert [str(e) for e in errors] == [
        "categories[2].name: category 'legal' is reached by no classifier label (model labels: "
        "technical, medical, general); list the labels that mean it under mmlu_categories"
    ]


def test_many_labels_map_to_one_category() -> None:
    data = __import__("yaml").safe_load(GUIDE)
    mmlu = ["biology", "law", "computer science", "health", "history", "other"]
    data["categories"][0]["mmlu_categories"] = ["computer science"]
    data["categories"][1]["mmlu_categories"] = ["health", "biology"]
    data["categories"][2]["mmlu_categories"] = ["law"]
    data["categories"][3]["mmlu_categories"] = ["history", "other"]
    config = decode_config(data)
    assert config.categories[1].labels == ["health", "biology"]
    assert check(config, labels=mmlu)[0] == []
    data["categories"][3]["mmlu_categories"] = ["history", "law", "poetry"]
    errors, _ = check(decode_config(data), labels=mmlu)
    assert [e.path for e in errors] == [
        "categories[3].mmlu_categories[1]",
        "categories[3].mmlu_categories[2]",
    ]
    assert "already maps to category 'legal'" in errors[0].message
    assert "'poetry' is not a label" in errors[1].message


def test_config_is_a_typed_struct(tmp_path: Path) -> None:
    config, _ = load_config(_write(tmp_path, GUIDE))
    assert isinstance(config, Config)
    assert config.vllm_endpoints[0].base_url == "http://127.0.0.1:8000"


@pytest.fixture(scope="module")
def shipped() -> Config:
    return load_config(REPO / "config" / "config.yaml")[0]


class TestTargetOf:
    """What a requested model name means, the one rule of the ingress and the classifier."""

    def test_auto_names_classify(self, shipped: Config) -> None:
        assert shipped.routing.auto_model_names
        for name in shipped.routing.auto_model_names:
            assert shipped.target_of(name) == ModelTarget(kind="auto")

    def test_missing_model_means_the_default_model(self, shipped: Config) -> None:
        for name in [None, ""]:
            assert shipped.target_of(name) == ModelTarget(
                kind="passthrough", model=shipped.default_model, base_model="llama2-7b"
            )

    def test_base_models_and_adapters_pass_through(self, shipped: Config) -> None:
        assert shipped.target_of("llama2-7b") == ModelTarget(
            kind="passthrough", model="llama2-7b", base_model="llama2-7b"
        )
        assert shipped.target_of("medical-lora") == ModelTarget(
            kind="passthrough", model="medical-lora", base_model="llama2-7b"
        )

    def test_unknown_names_are_none(self, shipped: Config) -> None:
        assert shipped.target_of("gpt-4") is None
        assert shipped.target_of("MoM-but-not-quite") is None


def test_a_tie_needs_one_weighted_entry(tmp_path: Path) -> None:
    tie = GUIDE.replace(
        '        lora_name: "medical-lora"\n        score: 1.0',
        '        lora_name: "medical-lora"\n        score: 1.0\n        weight: 0\n'
        '      - model: "llama2-7b"\n        lora_name: "legal-lora"\n        score: 1.0\n'
        "        weight: 0",
    )
    assert "weight: 0" in tie
    assert any(
        "every entry sharing the top score has weight 0" in e for e in _errors(tmp_path, tie)
    )
    ok = tie.replace("weight: 0\n      - model", "weight: 2\n      - model", 1)
    config, _ = load_config(_write(tmp_path, ok))
    assert [s.weight for s in config.categories[1].model_scores] == [2.0, 0.0]


def test_ab_key_header_is_a_header_name(tmp_path: Path) -> None:
    good = GUIDE + "routing:\n  ab_key_header: x-user-id\n"
    assert load_config(_write(tmp_path, good))[0].routing.ab_key_header == "x-user-id"
    assert _errors(tmp_path, GUIDE + "routing:\n  ab_key_header: 'x user'\n")


def test_upstream_keys_are_ignored_with_one_warning_naming_each(tmp_path: Path) -> None:
    text = GUIDE.replace(
        'default_model: "llama2-7b"',
        'default_model: "llama2-7b"\nsemantic_cache:\n  enabled: true\n'
        "prompt_guard:\n  enabled: false",
    ).replace(
        "        score: 1.0\n", "        score: 1.0\n        reasoning_description: deep\n", 1
    )
    config, warnings = load_config(_write(tmp_path, text))
    ignored = [w for w in warnings if "upstream semantic-router" in w.message]
    assert len(ignored) == 1
    message = ignored[0].message
    assert "3 key(s)" in message
    assert "semantic_cache (line" in message and "the semantic cache of answers" in message
    assert "prompt_guard (line" in message
    assert "categories[0].model_scores[0].reasoning_description (line" in message
    assert config.default_model == "llama2-7b"


def test_the_stall_bound_must_cover_three_heartbeats() -> None:
    data = __import__("yaml").safe_load(GUIDE)
    config = decode_config(data)
    assert (config.liveness.heartbeat_s, config.liveness.stall_s) == (1.0, 5.0)
    assert check(config)[0] == []
    data["liveness"] = {"heartbeat_s": 2.0, "stall_s": 5.0}
    errors, _ = check(decode_config(data))
    assert [e.path for e in errors] == ["liveness.stall_s"]
    assert "three heartbeats" in errors[0].message
