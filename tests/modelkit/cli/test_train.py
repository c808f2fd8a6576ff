"""modelkit/cli/train.py: the flags of `loraroute model train` and what they become."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelkit.cli.train import build_parser, main, options_from
from modelkit.heads import load_head
from modelkit.options import TrainOptions
from tests.modelkit.toydata import write_data


def test_no_flags_give_the_default_options() -> None:
    assert options_from(build_parser().parse_args([])) == TrainOptions()


def test_flags_become_options() -> None:
    argv = ["--data", "a.jsonl", "--data", "b.jsonl", "--head", "mine", "--out", "w"]
    argv += ["--no-lora", "--epochs", "2", "--lr", "0.01", "--no-memory", "--no-normalize"]
    argv += ["--split", "subject", "--seed", "4", "--run-seed", "5", "--threads", "1"]
    argv += ["--consistency", "0.5", "--aux-subject", "0", "--no-borrow-subjects"]
    options = options_from(build_parser().parse_args(argv))
    assert options == TrainOptions(
        data=(Path("a.jsonl"), Path("b.jsonl")),
        head="mine",
        out=Path("w"),
        lora=False,
        epochs=2,
        lr=0.01,
        memory=False,
        normalize=False,
        split="subject",
        seed=4,
        run_seed=5,
        threads=1,
        consistency=0.5,
        aux_subject=0.0,
        borrow_subjects=False,
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--consistency", "-1"], "--consistency must not be negative"),
        (["--probe-init", "--no-lora"], "--probe-init needs LoRA training"),
        (["--no-normalize"], "--no-normalize needs --no-memory"),
    ],
)
def test_options_that_do_not_go_together_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--data", "nothing.jsonl", "--out", str(tmp_path / "w"), *extra])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_bad_data_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n', encoding="utf-8")
    assert main(["--data", str(bad), "--no-lora", "--out", str(tmp_path / "w")]) == 2
    assert "loraroute model train: " in (err := capsys.readouterr().err)
    assert "bad.jsonl:1: field 'label'" in err


def test_a_run_from_the_command_line(tmp_path: Path) -> None:
    data = write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    argv = ["--data", str(data), "--head", "mine", "--no-lora", "--no-memory", "--out", str(out)]
    assert main([*argv, "--typo-copies", "0", "--threads", "1"]) == 0
    assert load_head(out / "mine").labels == ("general", "medical", "technical")
