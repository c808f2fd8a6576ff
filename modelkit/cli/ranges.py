"""`loraroute model ranges`: the command line of `modelkit.ranges.add_ranges`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelkit.cli.flags import add_data_files, add_threads, add_weights, paths
from modelkit.data import DataError
from modelkit.ranges import CALIBRATION_TEXTS, add_ranges
from modelkit.runs import RunError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `loraroute model ranges`."""
    p = argparse.ArgumentParser(
        prog="loraroute model ranges",
        description="Measure the activation ranges the static int8 build quantizes with, on "
        "training rows of the split the heads were trained on, and write them beside each head.",
    )
    add_weights(p, "weights folder of the heads")
    add_data_files(p, "the files the heads were trained on, when they were user-supplied (repeat)")
    p.add_argument(
        "--texts",
        type=int,
        default=CALIBRATION_TEXTS,
        help=f"training rows to measure on (default {CALIBRATION_TEXTS})",
    )
    add_threads(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute model ranges`; 0 on success, 2 when the heads or data do not fit."""
    args = build_parser().parse_args(argv)
    if args.texts < 1:
        print("loraroute model ranges: --texts must be at least 1", file=sys.stderr)
        return 2
    try:
        for path in add_ranges(args.weights, paths(args.data), args.threads, args.texts):
            print(f"wrote {path}")
    except (RunError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"loraroute model ranges: {exc}", file=sys.stderr)
        return 2
    return 0
