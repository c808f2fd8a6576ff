"""`loraroute keys add`: a new key printed once, only its hash in the file, which the ingress
then reads."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest

from loraroute.keys import main
from schemas.apikeys import hash_key, load_keys_file


def test_add_prints_a_new_key_and_stores_only_its_hash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "keys.yaml"
    assert main(["add", str(path), "--name", "team-a", "--model", "MoM"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("lr-") and len(key) >= 40
    assert key not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["add", str(path), "--name", "team-b"]) == 0
    other = capsys.readouterr().out.strip()
    entries = load_keys_file(path)
    assert [(e.name, e.sha256, e.models) for e in entries] == [
        ("team-a", hash_key(key), ["MoM"]),
        ("team-b", hash_key(other), None),
    ]


def test_add_reads_a_given_key_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.yaml"
    given = "sk-given-0123456789abcdef"
    monkeypatch.setattr("sys.stdin", io.StringIO(given + "\n"))
    assert main(["add", str(path), "--name", "ops", "--stdin"]) == 0
    assert given not in capsys.readouterr().out
    assert load_keys_file(path)[0].sha256 == hash_key(given)


def test_add_refuses_a_name_or_key_already_there_and_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys.yaml"
    given = "sk-given-0123456789abcdef"
    monkeypatch.setattr("sys.stdin", io.StringIO(given))
    assert main(["add", str(path), "--name", "ops", "--stdin"]) == 0
    assert main(["add", str(path), "--name", "ops"]) == 1
    assert "a key named 'ops' is already there" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(given))
    assert main(["add", str(path), "--name", "ops-2", "--stdin"]) == 1
    assert "this key is already there" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short"))
    assert main(["add", str(path), "--name", "ops-3", "--stdin"]) == 1
    assert main(["add", str(path), "--name", "bad name"]) == 1
    assert "invalid name" in capsys.readouterr().err
    assert [e.name for e in load_keys_file(path)] == ["ops"]
