"""The flags several `loraroute model` verbs share, each defined once."""

from __future__ import annotations

import argparse
from pathlib import Path

from modelkit.heads import WEIGHTS_DIR

__all__ = [
    "add_data_files",
    "add_memory",
    "add_seed",
    "add_threads",
    "add_weights",
    "add_weights_out",
    "paths",
]


def add_data_files(p: argparse.ArgumentParser, help: str) -> None:
    """`--data FILE.jsonl`, repeatable; `paths(args.data)` gives the files as a tuple."""
    p.add_argument(
        "--data", action="append", type=Path, default=None, metavar="FILE.jsonl", help=help
    )


def paths(values: list[Path] | None) -> tuple[Path, ...]:
    """A repeatable path flag's values as a tuple (empty when not given)."""
    return tuple(values or ())


def add_threads(p: argparse.ArgumentParser, runtime: str = "torch CPU threads") -> None:
    """`--threads N`: threads of `runtime`; 0 leaves its own choice."""
    p.add_argument(
        "--threads", type=int, default=0, help=f"{runtime} (default 0: the runtime's choice)"
    )


def add_weights(p: argparse.ArgumentParser, help: str) -> None:
    """`--weights DIR`: a weights folder to read, one sub-folder per head."""
    p.add_argument(
        "--weights", type=Path, default=WEIGHTS_DIR, help=f"{help} (default: the committed weights)"
    )


def add_weights_out(p: argparse.ArgumentParser) -> None:
    """`--out DIR`: the weights folder a verb writes heads to."""
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="weights folder to write, one sub-folder per head (default: the committed "
        "modelkit/weights)",
    )


def add_memory(p: argparse.ArgumentParser) -> None:
    """`--memory/--no-memory`: give the heads a nearest-neighbour memory at the end."""
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="finally give each head a nearest-neighbour memory of its training rows, mixed "
        "with the head and chosen on the validation rows (`loraroute model memory`; "
        "default on)",
    )


def add_seed(p: argparse.ArgumentParser, help: str) -> None:
    """`--seed N`: the seed the held-out split is carved with (default 0)."""
    p.add_argument("--seed", type=int, default=0, help=help)
