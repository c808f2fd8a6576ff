"""`loraroute config check FILE`: validate a config and print OK or every problem found."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schemas.config import ConfigError, ConfigIssue, load_config
from services.classifier.errors import ModelDirError
from services.classifier.model_dir import load_model_dir

__all__ = ["main"]


def _check(path: Path) -> int:
    try:
        config, warnings = load_config(path)
        model = config.classifier.category_model
        model_dir = Path(model.model_id)
        if not model_dir.is_dir():
            warnings.append(
                ConfigIssue(
                    "classifier.category_model.model_id",
                    f"model directory {str(model_dir)!r} not found (build it with "
                    "`loraroute model build`); category reachability not checked",
                )
            )
        else:
            # The classifier's own start-up reading: a broken directory fails here as it would
            # there, and every category must be reachable from the model's labels.
            labels = load_model_dir(
                model_dir,
                onnx_file=config.inference.onnx_file,
                category_mapping_path=model.category_mapping_path,
            ).labels
            _, warnings = load_config(path, labels=labels)
    except OSError as error:
        print(f"{path}: cannot read: {error.strerror or error}", file=sys.stderr)
        return 1
    except ConfigError as error:
        print(f"{path}: {len(error.issues)} error(s)", file=sys.stderr)
        for issue in error.issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    except ModelDirError as error:
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
