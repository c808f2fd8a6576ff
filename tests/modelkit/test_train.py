"""End-to-end tests of `loraroute model train` on a few dozen rows written into tmp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from modelkit.data import Example, class_counts, load_jsonl, subject_key
from modelkit.train import (
    FileSplit,
    HeadPlan,
    balance_weights,
    borrow_by_subject,
    build_parser,
    main,
    plan_heads,
    split_file,
)
from modelkit.heads import ADAPTER_DIR, load_head

TOPICS = {
    "technical": ["SQL join {i} rows", "python list index error {i}", "docker container port {i}"],
    "medical": [
        "fever and headache for {i} days",
        "dose of ibuprofen {i} mg",
        "rash after vaccine {i}",
    ],
    "general": ["weather tomorrow in city {i}", "set an alarm for {i} am", "recipe with {i} eggs"],
}


def _write_data(path: Path, per_label: int = 12) -> Path:
    lines = []
    for label, templates in TOPICS.items():
        for i in range(per_label):
            text = templates[i % len(templates)].format(i=i)
            lines.append(json.dumps({"text": text, "label": label, "subject": f"{label}-{i % 3}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_linear_head_output_format(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    rc = main(
        [
            "--data",
            str(data),
            "--head",
            "mine",
            "--no-lora",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--typo-copies",
            "0",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    head = load_head(out / "mine")
    assert head.labels == ("general", "medical", "technical")  # sorted for a custom head
    assert head.weight.shape == (3, 384)
    assert head.weight.dtype == np.float32 and head.bias.shape == (3,)
    assert head.lora_dir is None
    meta = head.meta
    assert meta["pooling"] == "mean" and meta["normalize"] is True and meta["max_length"] == 128
    assert meta["training"]["mode"] == "linear-probe"
    assert meta["training"]["temperature_folded"] is True
    figures = meta["evaluation"]["mine.jsonl"]
    assert figures["clean"]["n"] == 3 * 2  # a fifth of 12 rows per label, held out
    assert 0.0 <= figures["clean"]["balanced_accuracy"] <= 1.0
    assert meta["data"]["sources"] == "user-supplied files"
    # The memory holds every training row, and the head's own figures stay on record.
    assert head.memory is not None and len(head.memory.labels) == meta["data"]["files"][0]["train"]
    assert meta["memory"]["k"] == head.memory.k <= len(head.memory.labels)
    assert "mine.jsonl" in meta["memory"]["head_only_evaluation"]


def test_default_head_keeps_its_label_order(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    assert (
        main(
            [
                "--data",
                str(data),
                "--head",
                "domain",
                "--no-lora",
                "--out",
                str(out),
                "--typo-copies",
                "0",
                "--threads",
                "1",
                "--no-memory",
            ]
        )
        == 0
    )
    head = load_head(out / "domain")
    assert head.labels == ("technical", "medical", "legal", "general")
    assert head.memory is None and "memory" not in head.meta


def test_bad_data_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n', encoding="utf-8")
    assert main(["--data", str(bad), "--no-lora", "--out", str(tmp_path / "w")]) == 2
    assert "bad.jsonl:1: field 'label'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", str(bad), "--no-lora", "--no-normalize"])
    assert "--no-normalize needs --no-memory" in capsys.readouterr().err


@pytest.mark.slow
def test_lora_run_writes_a_portable_adapter(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    rc = main(
        [
            "--data",
            str(data),
            "--head",
            "mine",
            "--lora",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(out),
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    head = load_head(out / "mine")
    assert head.lora_dir == out / "mine" / ADAPTER_DIR
    config = json.loads((head.lora_dir / "adapter_config.json").read_text(encoding="utf-8"))
    # No local path of the training machine may end up in committed files.
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert head.meta["training"]["mode"] == "lora"
    assert head.meta["encoder_lora"]["shared_by"] == ["mine"]
    assert head.memory is not None  # embedded with the trained encoder, after the last epoch


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
    monkeypatch.setenv("LORAROUTE_DATA_DIR", str(tmp_path))
    plans = plan_heads(build_parser().parse_args(["--split", "subject"]))
    held_by_file = {
        f.name: {subject_key(e.subject) for e in f.test} for p in plans for f in p.files if f.test
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


def test_run_seed_changes_the_run_but_not_the_split(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "mine.jsonl")
    argv = ["--data", str(data), "--head", "mine", "--no-lora", "--threads", "1"]
    heads = []
    for run_seed in ("0", "1"):
        out = tmp_path / f"run{run_seed}"
        assert main([*argv, "--run-seed", run_seed, "--out", str(out)]) == 0
        heads.append(load_head(out / "mine"))
    a, b = heads
    assert a.meta["data"] == b.meta["data"]  # the same train, validation and test rows
    assert a.meta["evaluation"]["mine.jsonl"]["clean"]["n"] == 3 * 2
    assert (a.meta["training"]["run_seed"], b.meta["training"]["run_seed"]) == (0, 1)
    assert not np.array_equal(a.weight, b.weight)  # other typo'd copies were trained on


@pytest.mark.slow
def test_consistency_crop_and_probe_run_records_its_settings(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    argv = ["--data", str(data), "--head", "mine", "--epochs", "1", "--batch-size", "8"]
    argv += ["--typo-prob", "1", "--consistency", "1", "--out", str(out), "--threads", "1"]
    argv += ["--crop-prob", "0.5", "--probe-init"]
    assert main(argv) == 0
    head = load_head(out / "mine")
    assert head.meta["training"]["consistency_weight"] == 1.0
    assert head.meta["training"]["crop_prob"] == 0.5
    assert head.meta["training"]["probe_init"] is True
    assert head.lora_dir is not None


@pytest.mark.slow
def test_masked_run_trains_a_file_without_a_label_and_records_it(tmp_path: Path) -> None:
    full = _write_data(tmp_path / "full.jsonl")
    partial = tmp_path / "partial.jsonl"  # no `general` rows
    partial.write_text(
        "".join(line + "\n" for line in full.read_text().splitlines() if '"general"' not in line)
    )
    out = tmp_path / "weights"
    argv = ["--data", str(full), "--data", str(partial), "--head", "mine", "--epochs", "1"]
    argv += ["--batch-size", "8", "--mask-missing-labels", "--out", str(out), "--threads", "1"]
    argv += ["--consistency", "1"]  # compares distributions over the file's labels only
    assert main(argv) == 0
    head = load_head(out / "mine")
    assert head.meta["training"]["mask_missing_labels"] is True
    assert np.isfinite(head.weight).all() and np.isfinite(head.bias).all()
    assert head.lora_dir is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--consistency", "-1"], "--consistency must not be negative"),
        (["--consistency", "1", "--no-lora"], "--consistency needs LoRA training"),
        (["--consistency", "1", "--typo-prob", "0"], "--consistency needs typo'd texts"),
        (["--mask-missing-labels", "--no-lora"], "--mask-missing-labels needs LoRA training"),
        (["--crop-prob", "1.5"], "--crop-prob must be between 0 and 1"),
        (["--crop-prob", "0.5", "--no-lora"], "--crop-prob needs LoRA training"),
        (["--probe-init", "--no-lora"], "--probe-init needs LoRA training"),
    ],
)
def test_settings_that_do_nothing_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    data = _write_data(tmp_path / "mine.jsonl")
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(data), "--head", "mine", "--out", str(tmp_path / "w"), *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_split_file_gives_the_parts_training_uses(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "mine.jsonl", per_label=20)
    args = build_parser().parse_args(["--data", str(data), "--head", "mine", "--no-lora"])
    (plan,) = plan_heads(args)
    (part,) = plan.files
    rows = load_jsonl(data)
    train, val, test = split_file(rows, "balanced", 0)
    assert (train, val, test) == (part.train, part.val, part.test)
    # 20 rows per label: a fifth of them for test, half as many for validation, the rest train.
    assert class_counts(test) == dict.fromkeys(TOPICS, 4)
    assert class_counts(val) == dict.fromkeys(TOPICS, 2)
    assert sorted(e.text for cut in (train, val, test) for e in cut) == sorted(e.text for e in rows)
