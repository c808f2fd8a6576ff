"""Tests for modelkit/data.py: loading errors and split properties."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from modelkit.data import (
    DATA_DIR_ENV,
    DataError,
    Example,
    balanced_split,
    default_data_dir,
    load_jsonl,
    subject_holdout_split,
    subject_key,
    text_key,
)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(text: str, label: str, subject: str = "") -> str:
    return json.dumps({"text": text, "label": label, "subject": subject})


def test_loads_rows_and_optional_fields(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "d.jsonl", [_row("a b", "x", "s1"), "", json.dumps({"text": "c", "label": "y"})]
    )
    rows = load_jsonl(f)
    assert rows == [Example("a b", "x", "s1"), Example("c", "y")]


def test_unicode_line_separator_inside_a_text_is_not_a_line_break(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "one\u2028two", "label": "x"}\n', encoding="utf-8")
    assert load_jsonl(f)[0].text == "one\u2028two"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "d.jsonl:2: not valid JSON"),
        ("[1, 2]", "d.jsonl:2: expected a JSON object, got list"),
        (json.dumps({"label": "x"}), "d.jsonl:2: field 'text' must be a non-empty string"),
        (json.dumps({"text": "t", "label": "  "}), "d.jsonl:2: field 'label' must be a non-empty"),
        (json.dumps({"text": "t", "label": "x", "subject": 3}), "d.jsonl:2: field 'subject'"),
    ],
)
def test_bad_lines_are_reported_with_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    f = _write(tmp_path / "d.jsonl", [_row("fine", "x"), line])
    with pytest.raises(DataError, match=message.replace("[", r"\[")):
        load_jsonl(f)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_jsonl(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="no examples"):
        load_jsonl(_write(tmp_path / "empty.jsonl", [""]))


def _corpus() -> list[Example]:
    rows = []
    for label, n, subjects in (("a", 60, 3), ("b", 30, 2), ("c", 20, 1)):
        rows += [
            Example(f"{label} question {i}", label, f"{label}-s{i % subjects}") for i in range(n)
        ]
    return rows


def test_balanced_split_holds_the_same_count_of_every_label() -> None:
    rest, held = balanced_split(_corpus(), per_class=5, seed=0)
    assert Counter(e.label for e in held) == {"a": 5, "b": 5, "c": 5}
    assert len(rest) + len(held) == len(_corpus())
    assert not {text_key(e.text) for e in rest} & {text_key(e.text) for e in held}


def test_balanced_split_is_deterministic_and_seeded() -> None:
    assert balanced_split(_corpus(), 5, seed=0) == balanced_split(_corpus(), 5, seed=0)
    assert balanced_split(_corpus(), 5, seed=0)[1] != balanced_split(_corpus(), 5, seed=1)[1]


def test_balanced_split_keeps_duplicates_on_one_side() -> None:
    rows = [*_corpus(), Example("A question 3!", "a")]  # same normalised text as "a question 3"
    rest, held = balanced_split(rows, 10, seed=0)
    keys_rest = {text_key(e.text) for e in rest}
    assert not keys_rest & {text_key(e.text) for e in held}


def test_balanced_split_refuses_too_small_a_label() -> None:
    with pytest.raises(DataError, match="label 'c' has 20 examples"):
        balanced_split(_corpus(), per_class=11)


def test_subject_split_never_shares_a_subject() -> None:
    rest, held = subject_holdout_split(_corpus(), fraction=0.3, seed=0)
    assert held
    assert not {e.subject for e in rest} & {e.subject for e in held}
    # A one-subject label cannot be held out by subject and stays in training.
    assert "c" not in {e.label for e in held}
    assert {"a", "b"} <= {e.label for e in held}


def test_subject_key_names_an_mmlu_subject_alike_in_both_files() -> None:
    assert subject_key("ori_mmlu-professional_law") == "professional_law"
    assert subject_key("professional_law") == "professional_law"
    assert subject_key("stemez-ComputerScience") == "stemez-ComputerScience"
    assert subject_key("") == ""


def test_subject_split_rejects_a_bad_fraction() -> None:
    with pytest.raises(ValueError, match="fraction"):
        subject_holdout_split(_corpus(), fraction=1.0)


def _shared_file(name: str) -> Path:
    path = default_data_dir() / name
    if not path.is_file():
        pytest.skip(
            f"training data {name} not found (set LORAROUTE_DATA_DIR or add ../shared/data)"
        )
    return path


@pytest.mark.parametrize(
    "name", ["domain_train.jsonl", "domain_queries_train.jsonl", "mmlu_pro_train.jsonl"]
)
def test_shared_data_loads(name: str) -> None:
    rows = load_jsonl(_shared_file(name))
    assert len(rows) > 1000
    assert all(e.text and e.label for e in rows)


@pytest.mark.parametrize("name", ["domain_train.jsonl", "mmlu_pro_train.jsonl"])
def test_subject_split_of_shared_data_has_no_leak(name: str) -> None:
    rows = load_jsonl(_shared_file(name))
    rest, held = subject_holdout_split(rows, 0.2, seed=0)
    assert not {e.subject for e in rest} & {e.subject for e in held}
    assert not {text_key(e.text) for e in rest} & {text_key(e.text) for e in held}
    # Every label of these files has several subjects, so every label is represented.
    assert {e.label for e in held} == {e.label for e in rows}


def test_default_data_dir_is_beside_the_repository(
    repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert default_data_dir() == repo_root.parent / "shared" / "data"
    monkeypatch.setenv(DATA_DIR_ENV, "elsewhere")
    assert default_data_dir() == Path("elsewhere")
