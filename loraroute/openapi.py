"""`loraroute openapi [-o FILE]`: print the ingress's OpenAPI 3.1 document (`schemas.openapi`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from schemas.openapi import document

__all__ = ["main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="loraroute openapi", description=__doc__)
    parser.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")
    args = parser.parse_args(argv)
    text = json.dumps(document(), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0
