"""services/classifier/labels.py: many-to-one folding, unmapped labels, config errors."""

from __future__ import annotations

import numpy as np
import pytest

from services.classifier.errors import LabelMappingError
from services.classifier.labels import LabelMap

MMLU = (
    "biology", "business", "chemistry", "computer science", "economics", "engineering",
    "health", "history", "law", "math", "other", "philosophy", "physics", "psychology",
)  # fmt: skip


def test_many_labels_fold_into_one_category_by_summing() -> None:
    lm = LabelMap.build(
        MMLU,
        {
            "technical": ["computer science", "engineering"],
            "medical": ["health"],
            "legal": ["law"],
            "general": ["business", "economics", "history", "other", "philosophy", "math"],
        },
    )
    probs = np.full((2, len(MMLU)), 1.0 / len(MMLU), dtype=np.float32)
    probs[1] = 0.0
    probs[1, MMLU.index("computer science")] = 0.5
    probs[1, MMLU.index("engineering")] = 0.3
    probs[1, MMLU.index("biology")] = 0.2
    folded = lm.category_probabilities(probs)
    assert folded.shape == (2, 5)
    np.testing.assert_allclose(folded.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(folded[0, :4], np.array([2, 1, 1, 6]) / 14, rtol=1e-6)
    np.testing.assert_allclose(folded[1], [0.8, 0.0, 0.0, 0.0, 0.2], rtol=1e-6)
    # biology, chemistry, physics, psychology belong to no category.
    assert lm.unmapped_labels == ("biology", "chemistry", "physics", "psychology")


def test_a_category_without_a_list_covers_the_label_of_its_name() -> None:
    lm = LabelMap.build(
        ("technical", "medical", "legal", "general"), {"medical": None, "legal": None}
    )
    assert lm.category_of == (-1, 0, 1, -1)
    assert lm.categories == ("medical", "legal")


def test_identity_makes_each_label_a_category() -> None:
    lm = LabelMap.identity(("a", "b"))
    probs = np.array([[0.25, 0.75]], dtype=np.float32)
    np.testing.assert_allclose(lm.category_probabilities(probs), [[0.25, 0.75, 0.0]])


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (
            {"tech": ["computer sci"]},
            r"categories\[0\]\.mmlu_categories\[0\]: 'computer sci' is not",
        ),
        ({"technical": None}, r"categories\[0\]\.name: 'technical' is not a label"),
        ({"a": ["law"], "b": ["math", "law"]}, r"categories\[1\]\.mmlu_categories\[1\]: .*'a'"),
        ({"a": []}, r"categories\[0\]\.mmlu_categories: must list at least one label"),
    ],
)
def test_bad_mappings_name_the_config_path(
    mapping: dict[str, list[str] | None], message: str
) -> None:
    with pytest.raises(LabelMappingError, match=message):
        LabelMap.build(MMLU, mapping)


def test_wrong_probability_width_is_refused() -> None:
    with pytest.raises(ValueError, match=r"shape \[n, 2\]"):
        LabelMap.identity(("a", "b")).category_probabilities(np.zeros((1, 3), dtype=np.float32))
