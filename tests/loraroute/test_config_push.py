"""`loraroute config push` and `config get` against a real nats-server."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

from tests.processes import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loraroute", "config", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _write(path: Path, prefix: str, **changes: object) -> Path:
    data = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    data["nats"] = {"subject_prefix": prefix}
    for dotted, value in changes.items():
        table, key = dotted.split("__")
        data[table][key] = value
    path.write_text("# pushed by a test\n" + yaml.safe_dump(data, sort_keys=False))
    return path


def test_push_get_and_an_unchanged_push(nats_url: str, tmp_path: Path) -> None:
    prefix = f"push{uuid.uuid4().hex[:8]}"
    first = _write(tmp_path / "a.yaml", prefix)
    pushed = _run("push", str(first), "--nats", nats_url)
    assert pushed.returncode == 0, pushed.stderr
    assert f"{first}: OK" in pushed.stdout and "pushed as revision 1" in pushed.stdout

    again = _run("push", str(first), "--nats", nats_url)
    assert again.returncode == 0
    assert "unchanged, the live config is already this file (revision 1)" in again.stdout

    got = _run("get", "--nats", nats_url, "--prefix", prefix)
    assert got.returncode == 0
    assert got.stdout == first.read_text()  # verbatim, comments kept
    assert "# revision 1" in got.stderr

    second = _write(tmp_path / "b.yaml", prefix, batching__max_batch_size=8)
    changed = _run("push", str(second), "--nats", nats_url)
    assert changed.returncode == 0 and "pushed as revision 2" in changed.stdout
    assert "warning: batching changed" in changed.stderr
    old = _run("get", "--nats", nats_url, "--prefix", prefix, "--revision", "1")
    assert old.stdout == first.read_text()


def test_an_invalid_file_is_not_pushed(nats_url: str, tmp_path: Path) -> None:
    prefix = f"push{uuid.uuid4().hex[:8]}"
    bad = _write(tmp_path / "bad.yaml", prefix, routing__history_user_turns=-1)
    refused = _run("push", str(bad), "--nats", nats_url)
    assert refused.returncode == 1
    assert "routing.history_user_turns" in refused.stderr
    assert "not pushed; the running config stays" in refused.stderr
    nothing = _run("get", "--nats", nats_url, "--prefix", prefix)
    assert nothing.returncode == 1 and "no a live config" not in nothing.stderr
    assert f"no live config stored for prefix {prefix!r}" in nothing.stderr


def test_the_docs_push_example(nats_url: str, tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    _write(tmp_path / "config" / "config.yaml", f"docs{uuid.uuid4().hex[:8]}")
    # A config of the test's own prefix where the example expects it; `get` reads the prefix
    # from it as it would from an operator's `config/config.yaml`.
    script = (REPO / "docs" / "examples" / "config-push.sh").read_text()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "LORAROUTE_NATS_URL": nats_url,
    }
    done = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pushed as revision 1" in done.stdout
    assert (tmp_path / "running.yaml").read_text() == (
        tmp_path / "config" / "config.yaml"
    ).read_text()
