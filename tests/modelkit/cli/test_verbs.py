"""The command lines of `loraroute model average` and `memory`: refusals are messages and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelkit.cli import average, memory


def test_average_of_one_run_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert average.main([str(tmp_path)]) == 2
    assert "loraroute model average: averaging needs at least two runs" in capsys.readouterr().err


def test_memory_without_heads_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert memory.main(["--weights", str(tmp_path)]) == 2
    assert "loraroute model memory: no heads under" in capsys.readouterr().err
