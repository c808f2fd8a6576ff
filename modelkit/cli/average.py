"""`loraroute model average`: the command line of `modelkit.average`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from modelkit.average import average
from modelkit.cli.flags import add_data_files, add_memory, add_threads, add_weights_out, paths
from modelkit.data import DataError
from modelkit.runs import RunError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `loraroute model average`."""
    p = argparse.ArgumentParser(
        prog="loraroute model average",
        description="Average the weights of several `loraroute model train` runs (same data "
        "and split), recalibrate on the validation rows and evaluate on the test rows.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="weights folder of a run")
    add_weights_out(p)
    add_data_files(
        p,
        "the labelled files the runs were trained on, when they were not the default data; "
        "repeat for several files",
    )
    add_memory(p)
    add_threads(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute model average`; return 0 on success, 2 when the runs cannot be averaged."""
    args = build_parser().parse_args(argv)
    try:
        average(
            args.runs,
            out=args.out,
            data=paths(args.data),
            memory=args.memory,
            threads=args.threads,
        )
    except (RunError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"loraroute model average: {exc}", file=sys.stderr)
        return 2
    return 0
