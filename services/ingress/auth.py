"""API keys at the ingress: who is asking (401 without a known key), and which models they may name
(403 otherwise).

The keys come from `ingress.auth.keys_file` and `LORAROUTE_API_KEYS` together (`schemas.apikeys`);
with none, the keyring is off and every request is let in. A presented key is hashed (SHA-256)
and compared with every stored hash by `hmac.compare_digest`, so neither the comparison's time
nor its outcome on one entry tells anything about another. Keys are never stored, logged or
echoed; logs and metrics name the entry (`name`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.apikeys import ApiKeyEntry, KeysError, load_keys_file, parse_env_keys
from schemas.config import Config
from schemas.errors import ErrorKind, ErrorResponse, error_response

__all__ = ["NO_KEY", "WRONG_KEY", "Keyring", "api_key", "forbidden_model", "load_keyring"]

#: OpenAI's answers, in this project's error shape (`code` is the HTTP status, as vLLM's).
NO_KEY = error_response(
    ErrorKind.AUTHENTICATION,
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
)
WRONG_KEY = error_response(ErrorKind.AUTHENTICATION, "Incorrect API key provided.")


def api_key(scope: Mapping[str, Any]) -> ApiKeyEntry | None:
    """The key the door let the ASGI request `scope` in with (`door.Door` puts it in the
    request's state); None when keys are off."""
    entry = scope.get("state", {}).get("api_key")
    return entry if isinstance(entry, ApiKeyEntry) else None


def forbidden_model(model: str) -> ErrorResponse:
    """The 403 for a key that may not use `model`."""
    return error_response(
        ErrorKind.PERMISSION_DENIED, f"This API key may not use the model `{model}`.", "model"
    )


@dataclass(frozen=True, slots=True)
class _Stored:
    entry: ApiKeyEntry
    digest: bytes
    models: frozenset[str] | None


class Keyring:
    """The configured keys; `enabled` is False when there are none (every request passes)."""

    def __init__(self, entries: Sequence[ApiKeyEntry]) -> None:
        self._stored = [
            _Stored(
                entry,
                bytes.fromhex(entry.sha256),
                None if entry.models is None else frozenset(entry.models),
            )
            for entry in entries
        ]

    @property
    def enabled(self) -> bool:
        return bool(self._stored)

    @property
    def names(self) -> list[str]:
        return [stored.entry.name for stored in self._stored]

    def identify(self, authorization: str | None) -> ApiKeyEntry | ErrorResponse:
        """The entry of the `Authorization: Bearer KEY` header's key, or the 401 to answer."""
        if not authorization:
            return NO_KEY
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return NO_KEY
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: ApiKeyEntry | None = None
        for stored in self._stored:  # every entry, no early exit
            if hmac.compare_digest(digest, stored.digest):
                found = stored.entry
        return WRONG_KEY if found is None else found

    @staticmethod
    def allows(entry: ApiKeyEntry | None, model: str) -> bool:
        """Whether the key `entry` (None: keys are off) may name `model`."""
        return entry is None or entry.models is None or model in entry.models


def load_keyring(config: Config, env_keys: str | None) -> Keyring:
    """The keys of `ingress.auth.keys_file` and of `env_keys` (`LORAROUTE_API_KEYS`).

    Raises `KeysError` for a malformed file or list, a name or key listed twice, or a key
    allowed a model the config does not know; `OSError` when the file cannot be read.
    """
    entries: list[ApiKeyEntry] = []
    if config.ingress.auth.keys_file is not None:
        entries += load_keys_file(config.ingress.auth.keys_file)
    if env_keys:
        entries += parse_env_keys(env_keys)
    for entry in entries:
        unknown = [m for m in entry.models or [] if config.target_of(m) is None]
        if unknown:
            raise KeysError(
                f"API key {entry.name!r} names models the config does not know: "
                f"{', '.join(unknown)}"
            )
    repeated = sorted(n for n, c in Counter(e.name for e in entries).items() if c > 1)
    if repeated:
        raise KeysError(f"API key names used twice: {', '.join(repeated)}")
    if len({e.sha256 for e in entries}) != len(entries):
        raise KeysError("the same API key is configured twice")
    return Keyring(entries)
