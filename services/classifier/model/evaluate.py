"""`loraroute model eval`: measure a built model on labelled JSONL.

The model is the BUILT directory (`models/loraroute-<head>/`, ONNX), run through the same
engine the classifier service uses, so the figures include export and quantization effects
and, unless `--no-correct-spelling`, the spelling correction the default config applies.
Prints accuracy, balanced accuracy, per-class precision/recall/F1, the confusion matrix and
the expected calibration error; `--typos` repeats all of it on a typo'd copy of the texts.
`--held-out` scores only the rows that `loraroute model train` kept out of training, so the
training files themselves can be used for an honest figure; `--part validation` scores the
rows training calibrated on instead, for choosing between runs without the test rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .augment import DEFAULT_TYPO_RATE, typo_copy
from .data import DataError, Example, load_jsonl
from .metrics import Report, format_report, report

__all__ = ["build_parser", "evaluate_texts", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `loraroute model eval`."""
    p = argparse.ArgumentParser(
        prog="loraroute model eval",
        description="Measure a built classifier model on labelled JSONL (text, label).",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="FILE.jsonl",
        help="labelled JSONL; every label must be one of the model's labels",
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
        choices=("balanced", "subject"),
        default=None,
        help="score only the test rows `loraroute model train` held out of this "
        "file with that --split (and the same --seed)",
    )
    p.add_argument(
        "--part",
        choices=("test", "validation"),
        default="test",
        help="with --held-out: the test rows (default) or the validation rows training "
        "calibrated on, for choosing between runs without looking at the test rows",
    )
    p.add_argument("--seed", type=int, default=0, help="split seed used in training (default 0)")
    p.add_argument(
        "--json", type=Path, default=None, help="also write the figures as JSON to this file"
    )
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    p.add_argument(
        "--no-correct-spelling",
        dest="correct_spelling",
        action="store_false",
        help="classify the texts as written; by default misspelt words are mended first, "
        "as the classifier does with the default config",
    )
    return p


def evaluate_texts(
    classify: Any, labels: Sequence[str], rows: Sequence[Example], label: str = "classifying"
) -> Report:
    """Score `classify(texts) -> probabilities [n, len(labels)]` on `rows`, with progress."""
    index = {name: i for i, name in enumerate(labels)}
    y = np.asarray([index[e.label] for e in rows], dtype=np.int64)
    chunk = 256
    parts: list[npt.NDArray[np.float32]] = []
    for start in range(0, len(rows), chunk):
        parts.append(classify([e.text for e in rows[start : start + chunk]]))
        done = min(start + chunk, len(rows))
        print(f"{label}: {done}/{len(rows)}", file=sys.stderr, flush=True)
    return report(labels, np.concatenate(parts), y)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute model eval`; 0 on success, 2 on bad data, a missing model or labels."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.typo_copies < 1:
        parser.error("--typo-copies must be at least 1")
    if args.typo_copies > 1 and not args.typos:
        parser.error("--typo-copies needs --typos")
    if args.part != "test" and not args.held_out:
        parser.error("--part needs --held-out")
    try:
        rows = load_jsonl(args.data)
    except DataError as exc:
        print(f"loraroute model eval: {exc}", file=sys.stderr)
        return 2
    if args.held_out:
        from .train import split_file

        _, val, test = split_file(rows, args.held_out, args.seed)
        rows = val if args.part == "validation" else test
    from services.classifier.engine import Engine

    try:
        engine = Engine.from_model_dir(
            args.model,
            onnx_file=args.onnx_file,
            intra_op_threads=args.threads,
            correct_spelling=args.correct_spelling,
        )
    except Exception as exc:  # the engine's own error kinds; report them and stop
        print(f"loraroute model eval: cannot load {args.model}: {exc}", file=sys.stderr)
        return 2
    labels = list(engine.labels)
    unknown = sorted({e.label for e in rows} - set(labels))
    if unknown:
        print(
            f"loraroute model eval: labels {unknown} in {args.data} are not model labels {labels}",
            file=sys.stderr,
        )
        return 2

    def classify(texts: list[str]) -> npt.NDArray[np.float32]:
        return np.stack([c.label_probabilities for c in engine.classify(texts)])

    results: dict[str, Any] = {
        "model": str(args.model),
        "data": str(args.data),
        "correct_spelling": args.correct_spelling,
    }
    clean = evaluate_texts(classify, labels, rows)
    print(
        f"== {args.data.name} on {args.model.name}"
        + (f" (held-out {args.held_out}, {args.part} rows)" if args.held_out else "")
        + ("" if args.correct_spelling else ", spelling not corrected")
    )
    print(format_report(clean))
    results["clean"] = clean.summary()
    if args.typos:
        ratios = []
        for copy in range(args.typo_copies):
            noisy_rows = [
                Example(t, e.label, e.subject, e.source, e.id)
                for t, e in zip(
                    typo_copy([e.text for e in rows], seed=args.seed + 7 + copy), rows, strict=True
                )
            ]
            noisy = evaluate_texts(
                classify, labels, noisy_rows, f"classifying typo copy {copy + 1}"
            )
            ratios.append(noisy.balanced_accuracy / max(clean.balanced_accuracy, 1e-9))
            if copy == 0:
                print(f"\n== typo copy (rate {DEFAULT_TYPO_RATE:.2f} edits per character)")
                print(format_report(noisy))
                results["typos"] = noisy.summary()
        ratio = statistics.median(ratios)
        print(f"\nbalanced accuracy with typos / clean: {ratio:.4f}", end="")
        if len(ratios) > 1:
            print(f" (median of {len(ratios)} copies, {min(ratios):.4f}-{max(ratios):.4f})", end="")
        print()
        results["typo_ratio"] = round(ratio, 4)
        results["typo_ratios"] = [round(r, 4) for r in ratios]
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0
