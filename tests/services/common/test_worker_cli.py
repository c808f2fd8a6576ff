"""The workers' shared command line: start-up failures give exit status 2 and a clear message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loraroute", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("kind", ["classifier", "dispatcher"])
def test_bad_config_is_exit_2(kind: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("classifier: {}\n")
    result = _run(kind, "--nats", "nats://127.0.0.1:1", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"loraroute {kind}: ")
    assert "category_model" in result.stderr


def test_classifier_without_its_model_is_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    text = (REPO / "config" / "config.yaml").read_text()
    config.write_text(text.replace("models/loraroute-domain", "models/absent"))
    result = _run("classifier", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "models/absent" in result.stderr
