"""`loraroute model eval`: the command line of `modelkit.evaluate`."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from modelkit.augment import DEFAULT_TYPO_RATE
from modelkit.cli.flags import add_seed, add_threads
from modelkit.data import DataError
from modelkit.evaluate import EvalError, EvalOptions, Evaluation, evaluate
from modelkit.options import OptionsError
from modelkit.scorecard import ScorecardOptions, format_scorecard, scorecard
from modelkit.scores import format_report

__all__ = [
    "build_parser",
    "main",
    "options_from",
    "print_evaluation",
    "scorecard_options_from",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `loraroute model eval`."""
    p = argparse.ArgumentParser(
        prog="loraroute model eval",
        description="Measure a built classifier model on labelled JSONL (text, label).",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="FILE.jsonl",
        help="labelled JSONL; every label must be one of the model's labels (required "
        "unless --scorecard)",
    )
    p.add_argument(
        "--scorecard",
        action="store_true",
        help="score every held-out part of the default data folder in one table against "
        "its target: exam, query-style and MMLU-Pro test rows (with typo/clean and ECE), "
        "unseen subjects, and conversational questions (all, length-matched, per source)",
    )
    p.add_argument(
        "--mmlu-model",
        type=Path,
        default=Path("models") / "loraroute-mmlu-pro",
        help="with --scorecard: the built 14-class model (default: models/loraroute-mmlu-pro)",
    )
    p.add_argument(
        "--subject-model",
        type=Path,
        default=None,
        help="with --scorecard: a built domain model trained with --split subject, for the "
        "unseen-subjects row (not measured without it)",
    )
    p.add_argument(
        "--subject-mmlu-model",
        type=Path,
        default=None,
        help="with --scorecard: the same for the 14-class head",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=Path("models") / "loraroute-domain",
        help="built model directory (default: models/loraroute-domain)",
    )
    p.add_argument(
        "--onnx-file",
        default=None,
        help="ONNX file inside the model directory (default: the engine's choice, model.onnx)",
    )
    p.add_argument(
        "--typos",
        action="store_true",
        help="also evaluate a copy with about one typo per 25 characters",
    )
    p.add_argument(
        "--typo-copies",
        type=int,
        default=1,
        metavar="N",
        help="with --typos, score N differently typo'd copies and report the median "
        "typo/clean ratio with its range; one copy's ratio varies by several points "
        "(default 1)",
    )
    p.add_argument(
        "--held-out",
        choices=("balanced", "subject", "group"),
        default=None,
        help="score only the test rows `loraroute model train` held out of this "
        "file with that --split (and the same --seed); group: whole groups of consecutive "
        "ids of every source, the conversational file's split",
    )
    p.add_argument(
        "--part",
        choices=("test", "validation"),
        default="test",
        help="with --held-out: the test rows (default) or the validation rows training "
        "calibrated on, for choosing between runs without looking at the test rows",
    )
    add_seed(p, "split seed used in training (default 0)")
    p.add_argument(
        "--json", type=Path, default=None, help="also write the figures as JSON to this file"
    )
    add_threads(p, "onnxruntime intra-op threads")
    p.add_argument(
        "--no-correct-spelling",
        dest="correct_spelling",
        action="store_false",
        help="classify the texts as written; by default misspelt words are mended first, "
        "as the classifier does with the default config",
    )
    return p


def options_from(args: argparse.Namespace) -> EvalOptions:
    """The `EvalOptions` a parsed `loraroute model eval` command line asks for."""
    return EvalOptions(**{name: getattr(args, name) for name in EvalOptions.__struct_fields__})


def print_evaluation(result: Evaluation) -> None:
    """Print the reports of `result` to stdout, as `loraroute model eval` shows them."""
    o = result.options
    print(
        f"== {o.data.name} on {o.model.name}"
        + (f" (held-out {o.held_out}, {o.part} rows)" if o.held_out else "")
        + ("" if o.correct_spelling else ", spelling not corrected")
    )
    print(format_report(result.clean))
    if not result.typos:
        return
    print(f"\n== typo copy (rate {DEFAULT_TYPO_RATE:.2f} edits per character)")
    print(format_report(result.typos[0]))
    ratios = result.typo_ratios
    print(f"\nbalanced accuracy with typos / clean: {statistics.median(ratios):.4f}", end="")
    if len(ratios) > 1:
        print(f" (median of {len(ratios)} copies, {min(ratios):.4f}-{max(ratios):.4f})", end="")
    print()


def scorecard_options_from(args: argparse.Namespace) -> ScorecardOptions:
    """The `ScorecardOptions` of a `loraroute model eval --scorecard` command line."""
    return ScorecardOptions(
        model=args.model,
        mmlu_model=args.mmlu_model,
        subject_model=args.subject_model,
        subject_mmlu_model=args.subject_mmlu_model,
        onnx_file=args.onnx_file,
        typo_copies=args.typo_copies,
        seed=args.seed,
        threads=args.threads,
        correct_spelling=args.correct_spelling,
    )


def _run_scorecard(args: argparse.Namespace) -> int:
    try:
        rows = scorecard(scorecard_options_from(args))
    except (DataError, EvalError) as exc:
        print(f"loraroute model eval: {exc}", file=sys.stderr)
        return 2
    print(format_scorecard(rows))
    if args.json:
        figures = [row.figures() for row in rows]
        args.json.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute model eval`; 0 on success, 2 on bad data, a missing model or labels."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scorecard:
        if args.data is not None or args.held_out or args.typos:
            parser.error(
                "--scorecard scores the default data folder: leave out --data, "
                "--held-out and --typos (--typo-copies sets its typo copies)"
            )
        if args.typo_copies < 1:
            parser.error("--typo-copies must be at least 1")
        return _run_scorecard(args)
    if args.data is None:
        parser.error("--data is required (or --scorecard)")
    options = options_from(args)
    try:
        options.check()
    except OptionsError as exc:
        parser.error(str(exc))
    try:
        result = evaluate(options)
    except (DataError, EvalError) as exc:
        print(f"loraroute model eval: {exc}", file=sys.stderr)
        return 2
    print_evaluation(result)
    if args.json:
        args.json.write_text(json.dumps(result.figures(), indent=1) + "\n", encoding="utf-8")
    return 0
