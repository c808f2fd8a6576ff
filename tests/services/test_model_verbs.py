"""services/model_verbs.py: the `loraroute model` verbs dispatch to the toolkit's command lines."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from services.model_verbs import VERBS, main


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


def test_every_verb_names_a_command_line_module_with_main() -> None:
    for module, _ in VERBS.values():
        assert module.startswith("modelkit.cli.")
        assert callable(importlib.import_module(module).main)
