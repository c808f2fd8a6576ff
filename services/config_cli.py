"""`loraroute config check FILE`: validate a config and print OK or every problem found."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from schemas.config import ConfigError, ConfigIssue, load_config

__all__ = ["main", "model_labels"]


def model_labels(model_dir: Path) -> list[str] | None:
    """The classifier's labels from `config.json` (`id2label`) in `model_dir`, or None if absent.

    Raises `ValueError` when the file exists but has no usable `id2label`.
    """
    path = model_dir / "config.json"
    if not path.is_file():
        return None
    try:
        id2label = json.loads(path.read_text(encoding="utf-8"))["id2label"]
        return [str(id2label[key]) for key in sorted(id2label, key=int)]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: no usable id2label ({error})") from error


def _check(path: Path) -> int:
    try:
        config, warnings = load_config(path)
        model_dir = Path(config.classifier.category_model.model_id)
        labels = model_labels(model_dir)
        if labels is None:
            warnings.append(
                ConfigIssue(
                    "classifier.category_model.model_id",
                    f"model directory {str(model_dir)!r} not found (build it with "
                    "`loraroute model build`); category reachability not checked",
                )
            )
        else:
            config, more = load_config(path, labels=labels)
            warnings = more
    except OSError as error:
        print(f"{path}: cannot read: {error.strerror or error}", file=sys.stderr)
        return 1
    except ConfigError as error:
        print(f"{path}: {len(error.issues)} error(s)", file=sys.stderr)
        for issue in error.issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"{path}: {error}", file=sys.stderr)
        return 1
    for issue in warnings:
        print(f"  warning: {issue}", file=sys.stderr)
    print(f"{path}: OK")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="loraroute config", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate FILE; exit 1 on any error")
    check.add_argument("file", type=Path)
    args = parser.parse_args(argv)
    return _check(args.file)
