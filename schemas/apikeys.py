"""API keys for the ingress: the keys file (hashed at rest) and the `LORAROUTE_API_KEYS` list.

A keys file is YAML with one entry per key; only the key's SHA-256 is stored, never the key:

    keys:
      - name: team-a            # what logs and metrics show instead of the key
        sha256: 9f86d081884c...  # 64 hex digits: sha256 of the key's UTF-8 bytes
        models: [MoM]           # optional: the only `model` names this key may ask for

`LORAROUTE_API_KEYS` carries plain keys for simple set-ups: comma-separated, each `KEY` (every
model) or `KEY:MODEL|MODEL` (only those models); they are hashed as they are read and named
`env-1`, `env-2`, ... in the order given. A key has no `,`, `:`, `|` or whitespace.
`loraroute keys add FILE` writes a new key's entry (see `loraroute.keys`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated

import msgspec
import yaml

__all__ = [
    "ApiKeyEntry",
    "KeysError",
    "KeysFile",
    "hash_key",
    "load_keys_file",
    "parse_env_keys",
]

#: What a key may contain (OpenAI's `sk-...` keys and `secrets.token_urlsafe` output fit).
_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")


class KeysError(ValueError):
    """The keys file or `LORAROUTE_API_KEYS` is malformed; the message says where and why."""


class ApiKeyEntry(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, omit_defaults=True
):
    """One key: its name (safe to log), the SHA-256 of the key, and the models it may name."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    models: list[Annotated[str, msgspec.Meta(min_length=1)]] | None = None
    """`model` names this key may send (auto names, base models, adapters); None: any."""


class KeysFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The keys file as a whole."""

    keys: list[ApiKeyEntry] = msgspec.field(default_factory=list)


def hash_key(key: str) -> str:
    """The hex SHA-256 of `key`, as the keys file stores it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _checked(entries: list[ApiKeyEntry], source: str) -> list[ApiKeyEntry]:
    names = [entry.name for entry in entries]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise KeysError(f"{source}: key names repeated: {', '.join(repeated)}")
    hashes = [entry.sha256 for entry in entries]
    if len(set(hashes)) != len(hashes):
        raise KeysError(f"{source}: the same key is listed twice")
    return entries


def load_keys_file(path: str | Path) -> list[ApiKeyEntry]:
    """The entries of the keys file at `path`; `KeysError` when it is malformed, `OSError` when
    it cannot be read. An empty file (or `keys: []`) has no keys."""
    source = str(path)
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise KeysError(f"{source}: not valid YAML: {error}") from error
    try:
        parsed = msgspec.convert(data or {}, KeysFile)
    except msgspec.ValidationError as error:
        raise KeysError(f"{source}: {error}") from error
    return _checked(parsed.keys, source)


def parse_env_keys(text: str) -> list[ApiKeyEntry]:
    """The entries of a `LORAROUTE_API_KEYS` value (see the module docstring). The error never
    repeats a key, only its position."""
    entries: list[ApiKeyEntry] = []
    for number, item in enumerate((part.strip() for part in text.split(",")), start=1):
        if not item:
            continue
        key, colon, models = item.partition(":")
        if not _KEY.match(key):
            raise KeysError(
                f"LORAROUTE_API_KEYS: key {number} is not 16 to 512 characters of "
                "letters, digits and ._~+/=-"
            )
        allowed = None
        if colon:
            allowed = [model.strip() for model in models.split("|") if model.strip()]
            if not allowed:
                raise KeysError(f"LORAROUTE_API_KEYS: key {number} names no model after ':'")
        entries.append(ApiKeyEntry(name=f"env-{number}", sha256=hash_key(key), models=allowed))
    return _checked(entries, "LORAROUTE_API_KEYS")
