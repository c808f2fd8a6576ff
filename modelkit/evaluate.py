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

import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from modelkit.augment import typo_copy
from modelkit.data import Example, load_jsonl
from modelkit.options import OptionsError
from modelkit.plan import split_file
from modelkit.scores import Report, report
from services.classifier.engine import Engine

__all__ = [
    "EvalError",
    "EvalOptions",
    "Evaluation",
    "evaluate",
    "evaluate_texts",
    "load_rows",
    "probabilities",
]


class EvalError(ValueError):
    """The model cannot be loaded or does not know the data's labels; the message says which."""


class EvalOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What `evaluate` measures; see `loraroute model eval --help` for each."""

    data: Path
    model: Path = Path("models") / "loraroute-domain"
    onnx_file: str | None = None
    typos: bool = False
    typo_copies: int = 1
    held_out: Literal["balanced", "subject", "group"] | None = None
    part: Literal["test", "validation"] = "test"
    seed: int = 0
    threads: int = 0
    correct_spelling: bool = True

    def check(self) -> None:
        """Raise `OptionsError` when two options do not go together."""
        if self.typo_copies < 1:
            raise OptionsError("--typo-copies must be at least 1")
        if self.typo_copies > 1 and not self.typos:
            raise OptionsError("--typo-copies needs --typos")
        if self.part != "test" and not self.held_out:
            raise OptionsError("--part needs --held-out")


@dataclass(frozen=True)
class Evaluation:
    """The figures of one `evaluate`: the clean texts and each typo'd copy."""

    options: EvalOptions
    clean: Report
    typos: tuple[Report, ...] = ()

    @property
    def typo_ratios(self) -> list[float]:
        """Balanced accuracy of each typo'd copy over the clean one."""
        clean = max(self.clean.balanced_accuracy, 1e-9)
        return [noisy.balanced_accuracy / clean for noisy in self.typos]

    def figures(self) -> dict[str, Any]:
        """The figures as a JSON object (what `loraroute model eval --json` writes)."""
        o = self.options
        out: dict[str, Any] = {
            "model": str(o.model),
            "data": str(o.data),
            "correct_spelling": o.correct_spelling,
            "clean": self.clean.summary(),
        }
        if self.typos:
            ratios = self.typo_ratios
            out["typos"] = self.typos[0].summary()
            out["typo_ratio"] = round(statistics.median(ratios), 4)
            out["typo_ratios"] = [round(r, 4) for r in ratios]
        return out


def load_rows(options: EvalOptions) -> list[Example]:
    """The rows `options` asks to score: the whole file, or the part `loraroute model train`
    held out of it. Raises `DataError` for a missing or bad file."""
    rows = load_jsonl(options.data)
    if options.held_out:
        _, val, test = split_file(rows, options.held_out, options.seed)
        rows = val if options.part == "validation" else test
    return rows


def evaluate_texts(
    classify: Any, labels: Sequence[str], rows: Sequence[Example], label: str = "classifying"
) -> Report:
    """Score `classify(texts) -> probabilities [n, len(labels)]` on `rows`, with progress."""
    index = {name: i for i, name in enumerate(labels)}
    y = np.asarray([index[e.label] for e in rows], dtype=np.int64)
    return report(labels, probabilities(classify, rows, label), y)


def probabilities(
    classify: Any, rows: Sequence[Example], label: str = "classifying"
) -> npt.NDArray[np.float32]:
    """`classify(texts)` over `rows` in chunks, with progress on stderr: `[n, labels]`."""
    chunk = 256
    parts: list[npt.NDArray[np.float32]] = []
    for start in range(0, len(rows), chunk):
        parts.append(classify([e.text for e in rows[start : start + chunk]]))
        done = min(start + chunk, len(rows))
        print(f"{label}: {done}/{len(rows)}", file=sys.stderr, flush=True)
    return np.concatenate(parts)


def evaluate(options: EvalOptions) -> Evaluation:
    """Score the built model `options.model` on `options.data` with the classifier's engine.

    Raises `OptionsError` for options that do not go together, `DataError` for bad data and
    `EvalError` when the model cannot be loaded or lacks one of the data's labels. Progress
    goes to stderr.
    """
    options.check()
    rows = load_rows(options)
    try:
        engine = Engine.from_model_dir(
            options.model,
            onnx_file=options.onnx_file,
            intra_op_threads=options.threads,
            correct_spelling=options.correct_spelling,
        )
    except Exception as exc:  # the engine's own error kinds; report them and stop
        raise EvalError(f"cannot load {options.model}: {exc}") from exc
    labels = list(engine.labels)
    unknown = sorted({e.label for e in rows} - set(labels))
    if unknown:
        raise EvalError(f"labels {unknown} in {options.data} are not model labels {labels}")

    def classify(texts: list[str]) -> npt.NDArray[np.float32]:
        return np.stack([c.label_probabilities for c in engine.classify(texts)])

    clean = evaluate_texts(classify, labels, rows)
    noisy = []
    for copy in range(options.typo_copies if options.typos else 0):
        texts = typo_copy([e.text for e in rows], seed=options.seed + 7 + copy)
        typo_rows = [
            Example(t, e.label, e.subject, e.source, e.id) for t, e in zip(texts, rows, strict=True)
        ]
        noisy.append(
            evaluate_texts(classify, labels, typo_rows, f"classifying typo copy {copy + 1}")
        )
    return Evaluation(options, clean, tuple(noisy))
