"""loraroute/model_verbs.py: `loraroute model` hands each verb to the toolkit's command line."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from loraroute.model_verbs import VERBS, main


def test_each_verb_is_a_toolkit_command_module() -> None:
    modules = {verb: module for verb, (module, _) in VERBS.items()}
    assert modules == {
        "build": "modelkit.cli.build",
        "train": "modelkit.cli.train",
        "average": "modelkit.cli.average",
        "memory": "modelkit.cli.memory",
        "ranges": "modelkit.cli.ranges",
        "eval": "modelkit.cli.evaluate",
    }


def test_help_and_unknown_verbs_load_no_toolkit(capsys: pytest.CaptureFixture[str]) -> None:
    loaded = set(sys.modules)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: loraroute model COMMAND")
    assert all(f"  {verb} " in out for verb in VERBS)
    assert main([]) == 2
    assert main(["bake"]) == 2
    assert "loraroute model: unknown command 'bake'" in capsys.readouterr().err
    assert not [name for name in set(sys.modules) - loaded if name.startswith("modelkit")]


def test_every_verb_names_a_module_with_main() -> None:
    for verb, (module, _) in VERBS.items():
        assert callable(importlib.import_module(module).main), verb


def test_build_dispatches_and_reports_missing_heads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", "--weights", str(tmp_path)]) == 2
    assert "no heads under" in capsys.readouterr().err
