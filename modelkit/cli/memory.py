"""`loraroute model memory`: the command line of `modelkit.memory.add_memory`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from modelkit.cli.flags import add_data_files, add_threads, add_weights, paths
from modelkit.data import DataError
from modelkit.memory import add_memory
from modelkit.runs import RunError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `loraroute model memory`."""
    p = argparse.ArgumentParser(
        prog="loraroute model memory",
        description="Give trained heads a nearest-neighbour memory of their training rows "
        "(or recompute it), chosen on the validation rows of the split they were trained on.",
    )
    add_weights(p, "weights folder of the heads")
    add_data_files(p, "the files the heads were trained on, when they were user-supplied (repeat)")
    add_threads(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute model memory`; 0 on success, 2 when the heads or data do not fit."""
    args = build_parser().parse_args(argv)
    try:
        add_memory(args.weights, paths(args.data), args.threads)
    except (RunError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"loraroute model memory: {exc}", file=sys.stderr)
        return 2
    return 0
