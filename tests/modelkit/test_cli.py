"""modelkit/cli.py: verb dispatch."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelkit.cli import main


def test_help_and_unknown_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "build" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["bake"]) == 2
    assert "unknown command 'bake'" in capsys.readouterr().err


def test_build_dispatches_and_reports_missing_heads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", "--weights", str(tmp_path)]) == 2
    assert "no heads under" in capsys.readouterr().err
