"""`loraroute model train`: the command line of `modelkit.train`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from modelkit.cli.flags import (
    add_data_files,
    add_memory,
    add_seed,
    add_threads,
    add_weights_out,
    paths,
)
from modelkit.data import DataError
from modelkit.options import DEFAULT_MAX_LENGTH, OptionsError, TrainOptions
from modelkit.train import train

__all__ = ["build_parser", "main", "options_from"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `loraroute model train`."""
    p = argparse.ArgumentParser(
        prog="loraroute model train",
        description="Train the classifier heads (and optionally a LoRA delta on the encoder).",
    )
    add_data_files(
        p,
        "labelled JSONL (text, label); repeat for several files. Default: the project's data "
        "folder ($LORAROUTE_DATA_DIR or ../shared/data)",
    )
    p.add_argument(
        "--head",
        default=None,
        help="head to train: domain, mmlu-pro or all (default all); with --data, "
        "any name (default domain)",
    )
    add_weights_out(p)
    p.add_argument(
        "--lora",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fine-tune the encoder with a LoRA delta shared by all heads "
        "(--no-lora: frozen encoder, linear heads only)",
    )
    p.add_argument("--epochs", type=int, default=3, help="LoRA epochs (default 3)")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha (default 16)")
    p.add_argument("--lr", type=float, default=8e-4, help="LoRA learning rate (default 8e-4)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch (default 32)")
    p.add_argument(
        "--max-per-class",
        type=int,
        default=500,
        help="per epoch, at most this many rows of one label of one file are "
        "drawn (default 500); caps the largest classes",
    )
    p.add_argument(
        "--typo-prob",
        type=float,
        default=0.5,
        help="chance that a training text is given typos (LoRA; default 0.5)",
    )
    p.add_argument(
        "--crop-prob",
        type=float,
        default=0.0,
        help="LoRA: chance that a training text of several sentences is cut down to a run of "
        "one or two of them (at least 8 words), before any typos; 0 turns it off (default 0)",
    )
    p.add_argument(
        "--consistency",
        type=float,
        default=0.0,
        help="LoRA: weight of a loss that pulls each typo'd text's predicted distribution "
        "towards its clean original's (KL); 0 turns it off (default 0)",
    )
    p.add_argument(
        "--mask-missing-labels",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="LoRA: a row of a file that uses only some of its head's labels competes only "
        "among those (the query file has no `legal`: its rows then do not teach that "
        "chat-style text is never legal); default off",
    )
    p.add_argument(
        "--probe-init",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="LoRA: start every head from a linear probe fitted on the frozen encoder "
        "instead of zeros (linear probing, then fine-tuning); default off",
    )
    p.add_argument(
        "--aux-subject",
        type=float,
        default=0.5,
        help="LoRA: weight of an auxiliary loss that predicts each row's subject "
        "(MMLU subject, MMLU-Pro source, CLINC intent); 0 turns it off (default 0.5)",
    )
    p.add_argument(
        "--borrow-subjects",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with several heads, also train each head on the other heads' rows whose "
        "subject always has one label in its own data (MMLU questions in the exam file "
        "teach the 14-label head; default on)",
    )
    add_memory(p)
    p.add_argument(
        "--typo-copies",
        type=int,
        default=1,
        help="typo'd copies of the training rows added to a linear head's "
        "training set (--no-lora; default 1)",
    )
    p.add_argument(
        "--l2", type=float, default=1e-4, help="linear head L2 penalty (--no-lora, --probe-init)"
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=DEFAULT_MAX_LENGTH,
        help=f"tokens kept per text (default {DEFAULT_MAX_LENGTH})",
    )
    p.add_argument(
        "--no-normalize",
        dest="normalize",
        action="store_false",
        help="do not L2-normalise the pooled embedding before the head",
    )
    p.add_argument(
        "--split",
        choices=("balanced", "subject"),
        default="balanced",
        help="test part: class-balanced rows (default) or whole held-out subjects",
    )
    p.add_argument(
        "--test-per-class",
        type=int,
        default=0,
        help="test rows per label and file (default: a fifth of the smallest label, at most 150)",
    )
    p.add_argument(
        "--val-per-class",
        type=int,
        default=0,
        help="calibration rows per label and file (default: half the test count)",
    )
    p.add_argument(
        "--no-balance",
        dest="balance",
        action="store_false",
        help="linear heads: plain loss, no class weights (for comparison only)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="linear heads: keep frozen-encoder embeddings here between runs",
    )
    add_seed(p, "seed for splits, sampling and init (default 0)")
    p.add_argument(
        "--run-seed",
        type=int,
        default=None,
        help="seed for init, row sampling and typos only (default: --seed); runs that differ "
        "only in it share one split and can be averaged (`loraroute model average`)",
    )
    add_threads(p)
    return p


def options_from(args: argparse.Namespace) -> TrainOptions:
    """The `TrainOptions` a parsed `loraroute model train` command line asks for."""
    given = {name: getattr(args, name) for name in TrainOptions.__struct_fields__}
    return TrainOptions(**given | {"data": paths(args.data)})


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute model train`; return 0 on success, 2 on bad data or arguments."""
    parser = build_parser()
    options = options_from(parser.parse_args(argv))
    try:
        options.check()
    except OptionsError as exc:
        parser.error(str(exc))
    try:
        train(options)
    except DataError as exc:
        print(f"loraroute model train: {exc}", file=sys.stderr)
        return 2
    return 0
