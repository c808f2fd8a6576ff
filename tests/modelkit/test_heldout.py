"""modelkit/heldout.py: source-aware group splits and length-matched subsets."""

from __future__ import annotations

from collections import Counter

import pytest

from modelkit.data import Example, text_key
from modelkit.heldout import (
    group_holdout_split,
    group_of,
    length_band,
    length_matched,
    source_name,
)
from modelkit.plan import split_file


def _rows() -> list[Example]:
    rows = []
    for source, label, n, words in (
        ("kqa/q", "medical", 200, 6),
        ("nl2bash/all.nl", "technical", 300, 10),
        ("expertqa/r1", "legal", 80, 20),
        ("expertqa/r1", "general", 120, 14),
        ("cooking_se/line", "general", 300, 8),
    ):
        base = 1000 if label == "general" and source.startswith("expertqa") else 0
        for i in range(n):
            text = " ".join([f"{label}{i}"] + [f"w{source[:3]}{k}" for k in range(words + i % 30)])
            rows.append(Example(text, label, source=source, id=f"{source}/{base + i}"))
    return rows


def test_groups_are_runs_of_consecutive_ids_of_one_source() -> None:
    a = Example("x", "legal", id="expertqa/r1/1448")
    b = Example("y", "legal", id="expertqa/r1/1459")
    c = Example("z", "legal", id="expertqa/r1/1460")
    assert group_of(a) == group_of(b) == "expertqa/r1/#72"
    assert group_of(c) == "expertqa/r1/#73"
    assert group_of(Example("t", "x", id="kqa/q/5")) != group_of(Example("t", "x", id="gsm/q/5"))
    assert source_name(a) == "expertqa"


def test_no_group_and_no_text_is_on_both_sides() -> None:
    rows = _rows()
    rows.append(Example(rows[0].text, "medical", id="other/9999"))  # a copy in another source
    rest, held = group_holdout_split(rows, 0.2, seed=3)
    assert {group_of(e) for e in rest}.isdisjoint({group_of(e) for e in held})
    assert {text_key(e.text) for e in rest}.isdisjoint({text_key(e.text) for e in held})
    # About a fifth of every source's rows of every label is held out.
    total = Counter((source_name(e), e.label) for e in rows)
    taken = Counter((source_name(e), e.label) for e in held)
    for key, n in total.items():
        if n >= 40:
            assert 0.2 <= taken[key] / n <= 0.45, key


def test_the_group_split_of_split_file_keeps_train_validation_and_test_apart() -> None:
    train, val, test = split_file(_rows(), "group", 0)
    groups = [{group_of(e) for e in part} for part in (train, val, test)]
    assert groups[0].isdisjoint(groups[1]) and groups[0].isdisjoint(groups[2])
    assert groups[1].isdisjoint(groups[2])
    assert val and test and len(train) > len(test) > len(val)
    assert split_file(_rows(), "group", 0)[2] == test  # deterministic


def test_length_matched_leaves_length_no_clue_to_the_label() -> None:
    rows = _rows()
    matched = length_matched(rows, seed=1)
    assert matched and set(matched) <= set(rows)
    counts = Counter((length_band(e.text), e.label) for e in matched)
    labels = {e.label for e in rows}
    for band in {b for b, _ in counts}:
        assert len({counts[(band, label)] for label in labels}) == 1  # equal per label
    # Any rule that reads only the length scores exactly chance (balanced accuracy).
    by_band = Counter(length_band(e.text) for e in matched)
    for guess in labels:
        recalls = [
            sum(1 for e in matched if e.label == label and guess == label) / by_label
            for label, by_label in Counter(e.label for e in matched).items()
        ]
        assert sum(recalls) / len(recalls) == pytest.approx(1 / len(labels))
    assert sum(by_band.values()) == len(matched)
    # A band without every label is dropped whole.
    assert all(counts[(length_band(e.text), "legal")] > 0 for e in matched)
