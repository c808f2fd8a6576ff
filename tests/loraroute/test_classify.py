"""loraroute/classify.py: `loraroute classify` against the built default model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loraroute.classify import main

MEDICAL = "What are the common side effects of metformin for type 2 diabetes?"


def test_prints_category_confidence_and_top(
    domain_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([MEDICAL, "--model", str(domain_model_dir), "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"category: medical  confidence: (0\.\d{3}|1\.000)", out[1])
    assert out[2].lstrip().startswith("medical")
    assert len([line for line in out if line.startswith("  ")]) == 2
    assert out[-1].startswith("tokens: ")


def test_config_supplies_model_categories_and_threshold(
    domain_model_dir: Path, tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = (repo_root / "config" / "config.yaml").read_text()
    path = tmp_path / "config.yaml"
    path.write_text(config.replace("models/loraroute-domain", str(domain_model_dir)))
    assert main(["--config", str(path), "--json", MEDICAL, "hello"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == [MEDICAL, "hello"]
    assert lines[0]["category"] == "medical" and lines[0]["threshold"] == 0.6
    assert len(lines[0]["top"]) == 3
    for r in lines:
        assert (r["category"] is None) == (r["confidence"] < 0.6)


def test_missing_model_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hi", "--model", str(tmp_path / "none")]) == 2
    assert "loraroute model build" in capsys.readouterr().err
    assert main(["hi", "--top", "0"]) == 2


def test_spelling_correction_follows_the_flag_then_the_config(
    domain_model_dir: Path, tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    typo, clean = (
        "Explian the diffrence between a procses and a thraed",
        ("Explain the difference between a process and a thread"),
    )

    def tokens(*args: str) -> list[int]:
        assert main(["--json", *args]) == 0
        return [json.loads(line)["tokens"] for line in capsys.readouterr().out.splitlines()]

    model = ["--model", str(domain_model_dir)]
    mended, correct = tokens(*model, typo, clean)
    assert mended == correct
    (as_written,) = tokens(*model, "--no-correct-spelling", typo)
    assert as_written > correct
    config = (repo_root / "config" / "config.yaml").read_text()
    path = tmp_path / "config.yaml"
    path.write_text(
        config.replace("models/loraroute-domain", str(domain_model_dir))
        + "\ninference:\n  correct_spelling: false\n"
    )
    assert tokens("--config", str(path), typo) == [as_written]
    assert tokens("--config", str(path), "--correct-spelling", typo) == [correct]
