"""modelkit/cli/build.py: `loraroute model build` without building anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelkit.build import build_hash
from modelkit.cli.build import main
from modelkit.heads import WEIGHTS_DIR, head_names


def test_a_folder_without_heads_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--weights", str(tmp_path)]) == 2
    assert f"no heads under {tmp_path}" in capsys.readouterr().err


def test_print_hash_names_each_committed_head_and_its_hash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--print-hash"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{name} {build_hash(WEIGHTS_DIR / name)}" for name in head_names()]
    assert main(["--print-hash", "--head", "domain", "--default-variant", "int8"]) == 0
    assert capsys.readouterr().out.split() == ["domain", build_hash(WEIGHTS_DIR / "domain", "int8")]
