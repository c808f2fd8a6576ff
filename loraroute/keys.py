"""`loraroute keys add FILE --name NAME [--model M ...] [--stdin]`: add an API key to a keys file.

Makes a new key (`lr-` and 43 random URL-safe characters; with `--stdin`, the key, of at least
16 characters, read from standard input instead), adds its entry (name, SHA-256, allowed models)
to FILE, creating the file when missing (it is rewritten whole, mode 0600, so comments in it are
not kept), and prints the key once on stdout: the file never holds it. Refuses a name or a key
already in the file. The ingress reads the file named by `ingress.auth.keys_file` at start-up
(`schemas.apikeys` describes the format).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

import msgspec
import yaml

from schemas.apikeys import ApiKeyEntry, KeysError, hash_key, load_keys_file

__all__ = ["main", "new_key"]


def new_key() -> str:
    """A fresh key: `lr-` and 32 random bytes, URL-safe base64."""
    return "lr-" + secrets.token_urlsafe(32)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraroute keys", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", help="add a key to a keys file and print the key")
    add.add_argument("file", help="the keys file (YAML; created when missing)")
    add.add_argument("--name", required=True, help="the key's name in logs and metrics")
    add.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="MODEL",
        help="a model name the key may use (repeat for several; default: every model)",
    )
    add.add_argument(
        "--stdin", action="store_true", help="read the key from standard input instead"
    )
    return parser


_HEADER = "# API keys of the loraroute ingress: a name, the key's sha256, its models if limited.\n"


def _add(path: Path, entry: ApiKeyEntry) -> None:
    entries = load_keys_file(path) if path.exists() else []
    if any(e.name == entry.name for e in entries):
        raise KeysError(f"{path}: a key named {entry.name!r} is already there")
    if any(e.sha256 == entry.sha256 for e in entries):
        raise KeysError(f"{path}: this key is already there")
    data = {"keys": msgspec.to_builtins([*entries, entry])}
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(_HEADER + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    os.chmod(temporary, 0o600)
    load_keys_file(temporary)  # what was written reads back
    temporary.replace(path)


def main(argv: list[str]) -> int:
    """Run `loraroute keys`; 0 on success, 1 when the key cannot be added."""
    args = _parser().parse_args(argv)
    key = sys.stdin.readline().strip() if args.stdin else new_key()
    try:
        if len(key) < 16:
            raise KeysError("the key on standard input has fewer than 16 characters")
        entry = msgspec.convert(
            {"name": args.name, "sha256": hash_key(key), "models": args.models}, ApiKeyEntry
        )
        _add(Path(args.file), entry)
    except (KeysError, OSError) as error:
        print(f"loraroute keys: {error}", file=sys.stderr)
        return 1
    except msgspec.ValidationError as error:
        print(f"loraroute keys: invalid name {args.name!r} ({error})", file=sys.stderr)
        return 1
    if not args.stdin:
        print(key)
    print(f"loraroute keys: added {args.name!r} to {args.file}", file=sys.stderr)
    return 0
