"""The keyring: who a bearer key is, which models it may name, and what it refuses to load."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from schemas.apikeys import ApiKeyEntry, KeysError, hash_key
from schemas.config import Config
from schemas.errors import ErrorResponse
from services.ingress.auth import NO_KEY, WRONG_KEY, Keyring, api_key, load_keyring

KEY_A = "sk-a-0123456789abcdef"
KEY_B = "sk-b-0123456789abcdef"


def _ring() -> Keyring:
    return Keyring(
        [
            ApiKeyEntry(name="a", sha256=hash_key(KEY_A)),
            ApiKeyEntry(name="b", sha256=hash_key(KEY_B), models=["MoM"]),
        ]
    )


def test_a_bearer_key_is_identified_by_its_hash() -> None:
    ring = _ring()
    found = ring.identify(f"Bearer {KEY_B}")
    assert isinstance(found, ApiKeyEntry) and found.name == "b"
    found = ring.identify(f"bearer   {KEY_A} ")
    assert isinstance(found, ApiKeyEntry) and found.name == "a"


@pytest.mark.parametrize(
    ("header", "answer"),
    [
        (None, NO_KEY),
        ("", NO_KEY),
        ("Bearer", NO_KEY),
        (f"Basic {KEY_A}", NO_KEY),
        (KEY_A, NO_KEY),
        ("Bearer sk-unknown-0123456789", WRONG_KEY),
        (f"Bearer {KEY_A}x", WRONG_KEY),
    ],
)
def test_no_key_or_an_unknown_one_is_401(header: str | None, answer: ErrorResponse) -> None:
    assert _ring().identify(header) is answer
    assert answer.status == 401 and answer.error.type == "AuthenticationError"


def test_models_allowed_per_key() -> None:
    a, b = (e for e in (_ring().identify(f"Bearer {k}") for k in (KEY_A, KEY_B)))
    assert isinstance(a, ApiKeyEntry) and isinstance(b, ApiKeyEntry)
    assert Keyring.allows(a, "legal-lora") and Keyring.allows(None, "legal-lora")
    assert Keyring.allows(b, "MoM") and not Keyring.allows(b, "legal-lora")


def test_the_door_hands_the_key_to_the_routes_in_the_scope() -> None:
    entry = ApiKeyEntry(name="a", sha256=hash_key(KEY_A))
    assert api_key({"state": {"api_key": entry}}) is entry
    assert api_key({"state": {}}) is None and api_key({}) is None


def _config(config: Config, keys_file: Path | None) -> Config:
    auth = {"keys_file": str(keys_file) if keys_file else None}
    data = msgspec.to_builtins(config)
    data["ingress"]["auth"] = auth
    return msgspec.convert(data, Config)


def test_keyring_joins_the_file_and_the_environment(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - {{name: team, sha256: {hash_key(KEY_A)}, models: [MoM]}}\n")
    ring = load_keyring(_config(config, path), f"{KEY_B}:medical-lora")
    assert ring.enabled and ring.names == ["team", "env-1"]
    assert not load_keyring(_config(config, None), None).enabled


def test_keyring_refuses_unknown_models_and_repeats(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"keys:\n  - {{name: env-1, sha256: {hash_key(KEY_A)}}}\n")
    other = tmp_path / "other.yaml"
    other.write_text(f"keys:\n  - {{name: file, sha256: {hash_key(KEY_A)}}}\n")
    with pytest.raises(KeysError, match="names models the config does not know: gpt-4"):
        load_keyring(_config(config, None), f"{KEY_B}:MoM|gpt-4")
    with pytest.raises(KeysError, match="names used twice: env-1"):
        load_keyring(_config(config, path), KEY_B)
    with pytest.raises(KeysError, match="the same API key is configured twice"):
        load_keyring(_config(config, other), KEY_A)
