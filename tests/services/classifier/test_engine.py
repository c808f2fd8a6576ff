"""services/classifier/engine.py against the built models: what routing relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.classifier.engine import Engine
from services.classifier.errors import LabelMappingError

from .conftest import DOMAIN_LABELS

#: Queries no reasonable domain classifier gets wrong, three per label.
UNMISTAKABLE = {
    "technical": [
        "How do I fix a segmentation fault in my C program when I free a pointer twice?",
        "Write a SQL query that joins the orders and customers tables and groups by country.",
        "My Python script raises KeyError when I read a missing key from a dict, how do I avoid it?",
    ],
    "medical": [
        "What are the common side effects of metformin for type 2 diabetes?",
        "I have had a fever and a sore throat for five days, should I see a doctor?",
        "What is the recommended dose of ibuprofen for an adult with back pain?",
    ],
    "legal": [
        "What is the statute of limitations for suing over a breach of contract?",
        "Is a verbal agreement legally binding in court if there were no witnesses?",
        "What is the difference between a misdemeanor and a felony?",
    ],
    "general": [
        "What's the weather going to be like in Paris tomorrow?",
        "Set an alarm for seven in the morning.",
        "Recommend a good movie to watch with my family tonight.",
    ],
}

#: Long enough to exceed any max_length the model may use (at most 512 tokens).
LONG_TEXT = "The tenant and the landlord disagree about the deposit. " * 120


def test_model_labels_are_the_domain_labels(domain_engine: Engine) -> None:
    assert set(domain_engine.labels) == set(DOMAIN_LABELS)


@pytest.mark.parametrize("label", DOMAIN_LABELS)
def test_unmistakable_queries_get_their_class(domain_engine: Engine, label: str) -> None:
    results = domain_engine.classify(UNMISTAKABLE[label])
    assert [r.category for r in results] == [label] * len(results), [
        (r.category, round(r.confidence, 3)) for r in results
    ]


#: Everyday legal questions in chat style, which the default model once read as general before
#: it trained on conversational questions (docs/benchmarks.md, "Conversational questions";
#: loadtest/legal_chat.jsonl has 24 such questions).
@pytest.mark.parametrize(
    "text",
    [
        "Can I sue my employer for wrongful termination?",
        "Can my landlord keep my security deposit if I break the lease early?",
    ],
)
def test_conversational_legal_queries(domain_engine: Engine, text: str) -> None:
    (result,) = domain_engine.classify([text])
    assert result.category == "legal", (result.category, round(result.confidence, 3))


def test_probabilities_sum_to_one(domain_engine: Engine) -> None:
    texts = [t for ts in UNMISTAKABLE.values() for t in ts] + ["", "ok", LONG_TEXT]
    for r in domain_engine.classify(texts):
        assert float(r.label_probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert r.confidence == pytest.approx(max(r.probabilities.values()), abs=1e-6)
        assert 0.0 <= r.confidence <= 1.0


def _texts() -> list[str]:
    # Mixed lengths, so batches carry real padding.
    texts = [t for ts in UNMISTAKABLE.values() for t in ts]
    return [*texts, "hi", "ok thanks", LONG_TEXT[:300], *texts[:5]]


def test_fp32_batched_equals_one_by_one(domain_engine_fp32: Engine) -> None:
    texts = _texts()
    batched = domain_engine_fp32.classify(texts)
    for text, b in zip(texts, batched, strict=True):
        (single,) = domain_engine_fp32.classify([text])
        assert single.label == b.label
        np.testing.assert_allclose(single.label_probabilities, b.label_probabilities, atol=1e-5)


def test_default_variant_batched_equals_one_by_one(domain_engine: Engine) -> None:
    # The default graph (static int8, or fp32 for a head without activation ranges) has no
    # scale computed per batch: a text's probabilities alone and among texts of other lengths
    # differ by float rounding only (tolerance: tests/e2e/test_route_agreement.py).
    texts = _texts()
    batched = domain_engine.classify(texts)
    for text, b in zip(texts, batched, strict=True):
        (single,) = domain_engine.classify([text])
        assert single.category == b.category
        np.testing.assert_allclose(single.label_probabilities, b.label_probabilities, atol=1e-4)


def test_sorting_by_length_keeps_input_order(domain_model_dir: Path) -> None:
    texts = _texts()
    sorted_engine = Engine.from_model_dir(
        domain_model_dir, onnx_file="onnx/model_fp32.onnx", intra_op_threads=1, max_batch_size=4
    )
    plain = Engine.from_model_dir(
        domain_model_dir,
        onnx_file="onnx/model_fp32.onnx",
        intra_op_threads=1,
        max_batch_size=64,
        sort_by_length=False,
    )
    a, b = sorted_engine.classify(texts), plain.classify(texts)
    assert [r.label for r in a] == [r.label for r in b]
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert sorted_engine.counters.batches == -(-len(texts) // 4)


def test_truncation_is_counted(domain_model_dir: Path) -> None:
    engine = Engine.from_model_dir(domain_model_dir, intra_op_threads=1)
    results = engine.classify(["short question", LONG_TEXT, LONG_TEXT + "more"])
    assert [r.truncated for r in results] == [False, True, True]
    assert results[1].tokens == engine.tokenizer.max_length
    assert engine.counters.texts == 3 and engine.counters.truncations == 2
    engine.classify(["another short one"])
    assert engine.counters.texts == 4 and engine.counters.truncations == 2


def test_labels_fold_many_to_one(domain_model_dir: Path) -> None:
    engine = Engine.from_model_dir(
        domain_model_dir,
        category_labels={"specialist": ["technical", "medical", "legal"], "general": None},
        intra_op_threads=1,
    )
    assert engine.categories == ("specialist", "general")
    texts = [UNMISTAKABLE["medical"][0], UNMISTAKABLE["general"][0]]
    results = engine.classify(texts)
    assert [r.category for r in results] == ["specialist", "general"]
    for r in results:
        lp = dict(zip(engine.labels, r.label_probabilities.tolist(), strict=True))
        spec = lp["technical"] + lp["medical"] + lp["legal"]
        assert r.probabilities["specialist"] == pytest.approx(spec, abs=1e-5)
        assert r.probabilities["general"] == pytest.approx(lp["general"], abs=1e-5)


def test_unmapped_labels_can_win_as_no_category(domain_model_dir: Path) -> None:
    engine = Engine.from_model_dir(
        domain_model_dir, category_labels={"legal": None}, intra_op_threads=1
    )
    (tech,) = engine.classify([UNMISTAKABLE["technical"][0]])
    assert tech.category is None and tech.label == "technical"
    assert tech.confidence == pytest.approx(1.0 - tech.probabilities["legal"], abs=1e-5)
    (law,) = engine.classify([UNMISTAKABLE["legal"][1]])
    assert law.category == "legal"


def test_misspelt_text_is_classified_as_its_correct_spelling(
    domain_model_dir: Path, domain_engine_fp32: Engine
) -> None:
    typo = "Explian the diffrence between a procses and a thraed"
    clean = "Explain the difference between a process and a thread"
    mended, correct = domain_engine_fp32.classify([typo, clean])
    assert mended.category == "technical"
    np.testing.assert_array_equal(mended.label_probabilities, correct.label_probabilities)
    as_written = Engine.from_model_dir(
        domain_model_dir, onnx_file="onnx/model_fp32.onnx", correct_spelling=False
    )
    assert as_written.tokenizer.corrector is None
    assert as_written.classify([typo])[0].tokens > correct.tokens


def test_bad_mapping_and_bad_input(domain_model_dir: Path, domain_engine: Engine) -> None:
    with pytest.raises(LabelMappingError, match=r"categories\[0\]\.mmlu_categories\[0\]"):
        Engine.from_model_dir(domain_model_dir, category_labels={"x": ["no such label"]})
    with pytest.raises(TypeError, match="not one str"):
        domain_engine.classify("a plain string")
    with pytest.raises(TypeError, match=r"texts\[0\] must be str"):
        domain_engine.classify([b"bytes"])  # type: ignore[list-item]
    assert domain_engine.classify([]) == []


def test_mmlu_pro_model_drives_the_four_categories(mmlu_model_dir: Path) -> None:
    mapping = {
        "technical": ["computer science", "engineering"],
        "medical": ["health"],
        "legal": ["law"],
        "general": ["business", "economics", "history", "other", "philosophy"],
    }
    engine = Engine.from_model_dir(mmlu_model_dir, category_labels=mapping, intra_op_threads=1)
    assert len(engine.labels) == 14
    results = engine.classify(
        [UNMISTAKABLE["technical"][0], UNMISTAKABLE["medical"][0], UNMISTAKABLE["legal"][0]]
    )
    assert [r.category for r in results] == ["technical", "medical", "legal"]


def test_runtime_modules_import_no_build_library() -> None:
    # torch, transformers and onnx come with the `build` extra only; a runtime install
    # (engine, worker, `loraroute classify`) must work without them.
    code = (
        "import sys, services.classifier.engine, services.classifier.cli, loraroute.classify;"
        "print(sorted({'torch', 'transformers', 'onnx', 'peft'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
