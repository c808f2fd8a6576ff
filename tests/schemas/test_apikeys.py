"""The keys file and `LORAROUTE_API_KEYS`: parsed, hashed, and refused with the key kept out of
every message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from schemas.apikeys import KeysError, hash_key, load_keys_file, parse_env_keys

KEY = "sk-test-0123456789abcdef"


def test_hash_is_the_hex_sha256_of_the_key() -> None:
    assert hash_key(KEY) == hashlib.sha256(KEY.encode()).hexdigest()


def test_env_keys_are_hashed_named_by_position_and_limited_by_model() -> None:
    entries = parse_env_keys(f" {KEY} , sk-other-0123456789abcdef:MoM|medical-lora ,")
    assert [e.name for e in entries] == ["env-1", "env-2"]
    assert entries[0].sha256 == hash_key(KEY) and entries[0].models is None
    assert entries[1].models == ["MoM", "medical-lora"]
    assert KEY not in repr(entries)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("short", "key 1 is not 16 to 512 characters"),
        (f"{KEY},sk has space 0123456789", "key 2 is not"),
        (f"{KEY}:", "key 1 names no model"),
        (f"{KEY}:MoM,{KEY}", "the same key is listed twice"),
    ],
)
def test_env_keys_refused_without_repeating_the_key(text: str, message: str) -> None:
    with pytest.raises(KeysError, match=message) as raised:
        parse_env_keys(text)
    assert KEY not in str(raised.value)


def test_keys_file_reads_names_hashes_and_models(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - {{name: team-a, sha256: {hash_key(KEY)}}}\n"
        f"  - {{name: team-b, sha256: {hash_key(KEY + 'b')}, models: [MoM]}}\n"
    )
    entries = load_keys_file(path)
    assert [(e.name, e.models) for e in entries] == [("team-a", None), ("team-b", ["MoM"])]
    path.write_text("")
    assert load_keys_file(path) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keys:\n  - {name: a, sha256: nothex}\n", "sha256"),
        ("keys:\n  - {name: a, key: x}\n", "unknown field"),
        (f"keys:\n  - {{name: a, sha256: {'a' * 64}}}\n  - {{name: a, sha256: {'b' * 64}}}\n",
         "key names repeated: a"),
        ("keys: [", "not valid YAML"),
    ],
)  # fmt: skip
def test_malformed_keys_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(KeysError, match=message):
        load_keys_file(path)
