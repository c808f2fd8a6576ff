"""modelkit/cli/evaluate.py: `loraroute model eval` against the built default model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelkit.cli.evaluate import build_parser, main, options_from
from modelkit.evaluate import EvalOptions

ROWS = [
    ("How do I write a SQL query that joins three tables?", "technical"),
    ("Python raises KeyError when I read a dict, why?", "technical"),
    ("What are the side effects of metformin?", "medical"),
    ("My child has had a fever for three days, should I see a doctor?", "medical"),
    # Plainly legal: the default model reads this one legal at 0.96 (fp32 and int8). A vaguer
    # tenancy question ("Can my landlord keep the deposit if the lease says nothing about it?")
    # sits near 0.5 between legal and general, below any sane threshold in either variant.
    ("What rights does a tenant have under a written lease?", "legal"),
    ("Is a verbal contract enforceable in court?", "legal"),
    ("Set an alarm for seven tomorrow morning", "general"),
    ("What is the capital of Australia?", "general"),
]


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Write `(text, label)` rows as labelled JSONL to `path`."""
    path.write_text(
        "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8"
    )
    return path


def test_eval_prints_every_figure_and_writes_json(
    domain_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "figures.json"
    rc = main(
        [
            "--data",
            str(write_rows(tmp_path / "d.jsonl", ROWS)),
            "--model",
            str(domain_model_dir),
            "--typos",
            "--typo-copies",
            "3",
            "--json",
            str(out),
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    for needle in ("balanced accuracy", "ECE", "precision", "confusion matrix", "typo copy"):
        assert needle in text
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["clean"]["n"] == len(ROWS)
    assert figures["clean"]["balanced_accuracy"] == 1.0  # eight plain questions, all right
    ratios = figures["typo_ratios"]
    assert len(ratios) == 3
    assert figures["typo_ratio"] == sorted(ratios)[1]
    assert "median of 3 copies" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--typos", "--typo-copies", "0"], "--typo-copies must be at least 1"),
        (["--typo-copies", "5"], "--typo-copies needs --typos"),
        (["--part", "validation"], "--part needs --held-out"),
    ],
)
def test_eval_refuses_settings_that_do_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(SystemExit) as exc:
        main(["--data", str(data), *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_eval_rejects_labels_the_model_lacks(
    domain_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_rows(tmp_path / "d.jsonl", [("hello", "astrology")])
    assert main(["--data", str(data), "--model", str(domain_model_dir)]) == 2
    assert "astrology" in capsys.readouterr().err


def test_eval_reports_a_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    assert main(["--data", str(data), "--model", str(tmp_path / "nothing")]) == 2
    assert "cannot load" in capsys.readouterr().err


def test_held_out_validation_part_scores_the_calibration_rows(
    domain_model_dir: Path, tmp_path: Path
) -> None:
    rows = [(f"{text} ({i})", label) for i in range(10) for text, label in ROWS]
    data = write_rows(tmp_path / "d.jsonl", rows)
    out = tmp_path / "figures.json"
    argv = ["--data", str(data), "--model", str(domain_model_dir), "--held-out", "balanced"]
    assert main([*argv, "--part", "validation", "--json", str(out), "--threads", "1"]) == 0
    # 20 rows per label: 4 test rows per label, and half as many validation rows.
    assert json.loads(out.read_text(encoding="utf-8"))["clean"]["n"] == 4 * 2
    assert main([*argv, "--json", str(out), "--threads", "1"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["clean"]["n"] == 4 * 4


def test_spelling_is_corrected_unless_asked_not_to(
    domain_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_rows(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "figures.json"
    argv = ["--data", str(data), "--model", str(domain_model_dir), "--json", str(out)]
    assert main([*argv, "--threads", "1"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["correct_spelling"] is True
    assert "spelling not corrected" not in capsys.readouterr().out
    assert main([*argv, "--threads", "1", "--no-correct-spelling"]) == 0
    assert json.loads(out.read_text(encoding="utf-8"))["correct_spelling"] is False
    assert "spelling not corrected" in capsys.readouterr().out


def test_flags_become_options() -> None:
    parse = build_parser().parse_args
    assert options_from(parse(["--data", "d.jsonl"])) == EvalOptions(data=Path("d.jsonl"))
    argv = ["--data", "d.jsonl", "--model", "m", "--typos", "--typo-copies", "3", "--seed", "2"]
    argv += ["--held-out", "subject", "--part", "validation", "--no-correct-spelling"]
    assert options_from(parse(argv)) == EvalOptions(
        data=Path("d.jsonl"),
        model=Path("m"),
        typos=True,
        typo_copies=3,
        seed=2,
        held_out="subject",
        part="validation",
        correct_spelling=False,
    )
