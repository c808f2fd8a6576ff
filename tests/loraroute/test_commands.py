"""`loraroute`: the sub-command table and its dispatcher."""

from __future__ import annotations

import importlib

import pytest

from loraroute.commands import COMMANDS, dispatch, main


def test_every_command_names_a_module_with_main() -> None:
    for name, (module, _) in COMMANDS.items():
        assert callable(importlib.import_module(module).main), name


def test_help_none_and_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: loraroute COMMAND") and "mock-vllm" in out
    assert main([]) == 2
    assert main(["serve"]) == 2
    assert "loraroute: unknown command 'serve'" in capsys.readouterr().err


def test_dispatch_passes_the_rest_and_returns_the_status(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = {"check": ("loraroute.config_check", "check a config")}
    assert dispatch("tool", table, ["check", "check", "/nonexistent.yaml"]) == 1
    assert "cannot read" in capsys.readouterr().err
