"""modelkit/plan.py: the split, borrowing by subject, class weights and held-out figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelkit.augment import typo_copy
from modelkit.data import Example, class_counts, load_jsonl, subject_key
from modelkit.options import SplitOptions
from modelkit.plan import (
    FileSplit,
    HeadPlan,
    balance_weights,
    borrow_by_subject,
    evaluate_plan,
    plan_heads,
    split_file,
)
from tests.modelkit.toydata import TOPICS, write_data


def _plans(**kwargs: object) -> list[HeadPlan]:
    """Two heads like the defaults: a coarse one on MMLU subjects, a fine one on MMLU-Pro."""
    coarse = [
        Example("q1 law", "legal", "professional_law"),
        Example("q2 law", "legal", "professional_law"),
        Example("q3 algebra", "general", "abstract_algebra"),
        Example("q4 shared stem", "general", "abstract_algebra"),
        Example("q5 virology", "medical", "virology"),
    ]
    fine = [
        Example("p1 law", "law", "ori_mmlu-professional_law"),
        Example("p2 algebra", "math", "ori_mmlu-abstract_algebra"),
        Example("q4 shared stem", "math", "ori_mmlu-abstract_algebra"),
        Example("p3 circuits", "engineering", "stemez-ElectricCircuits"),
        Example("p4 mixed", "physics", "mixed"),
        Example("p5 mixed", "chemistry", "mixed"),
    ]
    return [
        HeadPlan("domain", ["technical", "medical", "legal", "general"], [FileSplit("exam", coarse, [], [])]),
        HeadPlan("mmlu-pro", ["law", "math", "engineering", "physics", "chemistry"], [FileSplit("pro", fine, [], [])]),
    ]  # fmt: skip


def test_borrowing_labels_other_heads_rows_through_their_subject() -> None:
    plans = _plans()
    borrow_by_subject(plans)
    domain, pro = plans
    borrowed = pro.files[1]
    assert borrowed.borrowed and borrowed.name == "exam by subject"
    assert not borrowed.val and not borrowed.test
    # MMLU subjects carry over; a text the head already has and a subject it lacks do not.
    assert sorted((e.text, e.label) for e in borrowed.train) == [
        ("q1 law", "law"),
        ("q2 law", "law"),
        ("q3 algebra", "math"),
    ]
    # The other way: MMLU-Pro's law and algebra rows become domain rows; the stemez subject
    # has no domain label and a subject with two labels ("mixed") maps nowhere.
    assert sorted((e.text, e.label) for e in domain.files[1].train) == [
        ("p1 law", "legal"),
        ("p2 algebra", "general"),
    ]


def test_borrowed_part_weighs_by_its_size_and_own_files_equally() -> None:
    rows = [Example(f"t{i}", "a") for i in range(10)]
    plan = HeadPlan(
        "h",
        ["a"],
        [
            FileSplit("one", rows, [], []),
            FileSplit("two", rows[:6], [], []),
            FileSplit("few", rows[:2], [], [], borrowed=True),
            FileSplit("many", rows * 3, [], [], borrowed=True),
        ],
    )
    # Own files 1 each; "few" 2/8 of the own mean; "many" capped at one file's weight.
    assert plan.file_weights() == pytest.approx([1 / 3.25, 1 / 3.25, 0.25 / 3.25, 1 / 3.25])
    w = balance_weights([f.train for f in plan.files], plan.file_weights())
    assert float(w.sum()) == pytest.approx(1.0)
    assert float(w[10:16].sum()) == pytest.approx(1 / 3.25)


def test_subject_split_keeps_a_held_out_subject_out_of_every_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MMLU subjects s0..s5 sit in the exam file and (as ori_mmlu-sN) in the MMLU-Pro file.
    # A subject held out of either file must leave both heads' training rows, or the shared
    # encoder would have seen the "unseen" material through the other head.
    def write(name: str, rows: list[tuple[str, str, str]]) -> None:
        lines = [json.dumps({"text": t, "label": lab, "subject": sub}) for t, lab, sub in rows]
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")

    write(
        "domain_train.jsonl",
        [
            (f"exam {s} {i}", ("legal", "general")[s % 2], f"s{s}")
            for s in range(6)
            for i in range(10)
        ],
    )
    write(
        "domain_queries_train.jsonl",
        [
            (f"query {lab} {i}", lab, f"q{i % 3}")
            for lab in ("technical", "medical", "general")
            for i in range(12)
        ],
    )
    write(
        "mmlu_pro_train.jsonl",
        [(f"pro {s} {i}", ("law", "math")[s % 2], f"ori_mmlu-s{s}") for s in range(6) for i in range(10)],
    )  # fmt: skip
    chat = [
        {"text": f"chat {lab} {i}", "label": lab, "id": f"{lab}src/{i}"}
        for lab in ("technical", "medical", "legal", "general")
        for i in range(60)
    ]
    (tmp_path / "chat_train.jsonl").write_text(
        "\n".join(json.dumps(r) for r in chat) + "\n", encoding="utf-8"
    )
    monkeypatch.setenv("LORAROUTE_DATA_DIR", str(tmp_path))
    plans = plan_heads(SplitOptions(split="subject"))
    # The conversational file has no subjects: it is cut by groups whatever the split.
    (chat_part,) = [f for p in plans for f in p.files if f.name == "chat_train.jsonl"]
    assert [e.text for e in chat_part.test] == [
        e.text for e in split_file([Example(**r) for r in chat], "group", 0)[2]
    ]
    held_by_file = {
        f.name: {subject_key(e.subject) for e in f.test if e.subject}
        for p in plans
        for f in p.files
        if f.test
    }
    held = set().union(*held_by_file.values())
    # The files hold out different subjects, so the rule is what keeps them apart.
    assert held_by_file["domain_train.jsonl"] != held_by_file["mmlu_pro_train.jsonl"]
    for p in plans:
        for f in p.files:
            assert held.isdisjoint(subject_key(e.subject) for e in f.train), (p.name, f.name)
    # Borrowing still happens, only from subjects that stayed in training.
    borrowed = [f for p in plans for f in p.files if f.borrowed]
    assert borrowed and all(f.train for f in borrowed)


def test_split_file_gives_the_parts_training_uses(tmp_path: Path) -> None:
    data = write_data(tmp_path / "mine.jsonl", per_label=20)
    (plan,) = plan_heads(SplitOptions(data=(data,), head="mine"))
    (part,) = plan.files
    rows = load_jsonl(data)
    train, val, test = split_file(rows, "balanced", 0)
    assert (train, val, test) == (part.train, part.val, part.test)
    # 20 rows per label: a fifth of them for test, half as many for validation, the rest train.
    assert class_counts(test) == dict.fromkeys(TOPICS, 4)
    assert class_counts(val) == dict.fromkeys(TOPICS, 2)
    assert sorted(e.text for cut in (train, val, test) for e in cut) == sorted(e.text for e in rows)


def test_evaluate_plan_scores_each_files_test_rows_clean_and_with_typos() -> None:
    test = [Example(f"{label} text {i}", label) for label in "abc" for i in range(2)]
    plan = HeadPlan(
        "h",
        ["a", "b", "c"],
        [FileSplit("f", [], [], test), FileSplit("train only", test, test, [])],
    )
    # Clean: both `a` rows right, one `b` row right, no `c` row right. A typo'd text is not
    # in the table and gets equal probabilities, whose argmax is the first label, `a`.
    picks = {"a text 0": 0, "a text 1": 0, "b text 0": 1, "b text 1": 0, "c text 0": 1}

    def probs_of(texts: list[str]) -> np.ndarray:
        out = np.full((len(texts), 3), 1 / 3)
        for row, text in enumerate(texts):
            if text in picks:
                out[row] = np.eye(3)[picks[text]]
        return out

    figures = evaluate_plan(plan, probs_of, seed=0)
    assert list(figures) == ["f"]  # a part without test rows has no figures
    f = figures["f"]
    assert f["clean"]["n"] == 6
    assert f["clean"]["accuracy"] == pytest.approx(3 / 6, abs=1e-4)
    assert f["clean"]["balanced_accuracy"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-4)
    assert f["per_class_recall"] == {"a": 1.0, "b": 0.5, "c": 0.0}
    # The typo'd copy is the one seeded `seed + 7`; score it here by hand.
    noisy = typo_copy([e.text for e in test], seed=7)
    assert noisy != [e.text for e in test]
    right = [picks.get(t, 0) == "abc".index(e.label) for t, e in zip(noisy, test, strict=True)]
    recall = [np.mean(right[2 * k : 2 * k + 2]) for k in range(3)]
    assert f["typos"]["balanced_accuracy"] == pytest.approx(np.mean(recall), abs=1e-4)
    assert f["typo_ratio"] == pytest.approx(np.mean(recall) / 0.5, abs=1e-4)
