"""`loraroute model eval --scorecard`: every held-out figure of the default models in one table.

Each row is one held-out part of the default data folder scored by a built model through the
classifier's engine (as `modelkit.evaluate` does), set against its target:

- the exam (`domain_train.jsonl`), query (`domain_queries_train.jsonl`) and 14-class MMLU-Pro
  (`mmlu_pro_train.jsonl`) balanced test parts `loraroute model train` holds out, with the
  typo/clean ratio and the calibration error; their targets are today's shipped figures
  (`BASELINE`) less one point;
- whole unseen subjects (`--split subject` test parts), scored only for models trained on that
  split (`subject_model`, `subject_mmlu_model`): the default models trained on every subject;
- conversational questions (`chat_train.jsonl`, the group split of `modelkit.heldout`): all
  of them, the length-matched subset, and each source on its own.

Rows with a target say whether it is met; the others are there to read.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from modelkit.augment import typo_copy
from modelkit.data import DOMAIN_FILES, MMLU_PRO_FILES, Example, default_data_dir, load_jsonl
from modelkit.evaluate import EvalError, evaluate_texts, probabilities
from modelkit.heldout import CHAT_FILE, length_matched, source_name
from modelkit.plan import split_file
from modelkit.scores import Report, report
from services.classifier.engine import Engine

__all__ = [
    "BASELINE",
    "CHAT_MIN_CLASS",
    "CHAT_TARGET",
    "UNSEEN_TARGET",
    "Row",
    "ScorecardOptions",
    "format_scorecard",
    "scorecard",
]

#: The shipped heads' held-out figures when the conversational targets were set
#: (docs/benchmarks.md, "Against the targets"): balanced accuracy, typo/clean, ECE.
BASELINE: dict[str, tuple[float, float, float]] = {
    "exam 4-class": (0.948, 0.992, 0.029),
    "query-style": (0.995, 0.995, 0.010),
    "MMLU-Pro 14-class": (0.863, 0.981, 0.044),
}
#: Balanced accuracy on conversational questions, and the least recall of any category.
CHAT_TARGET = 0.88
CHAT_MIN_CLASS = 0.80
#: Balanced accuracy on whole subjects never trained on.
UNSEEN_TARGET = 0.70
#: How far below a baseline figure a row may fall (one point).
_SLACK = 0.01

ProbsOf = Callable[[list[str]], npt.NDArray[np.float32]]


class ScorecardOptions(msgspec.Struct, frozen=True, kw_only=True):
    """What `scorecard` scores; see `loraroute model eval --help`."""

    model: Path = Path("models") / "loraroute-domain"
    mmlu_model: Path | None = Path("models") / "loraroute-mmlu-pro"
    subject_model: Path | None = None
    subject_mmlu_model: Path | None = None
    data_dir: Path | None = None
    onnx_file: str | None = None
    typo_copies: int = 1
    seed: int = 0
    threads: int = 0
    correct_spelling: bool = True


@dataclass(frozen=True)
class Row:
    """One line of the scorecard: a held-out part, its report and its target."""

    name: str
    report: Report | None
    """None: not measured (`note` says why)."""
    typo_ratio: float | None = None
    targets: dict[str, float] = field(default_factory=dict)
    """`balanced_accuracy`, `min_recall`, `typo_ratio` (at least) and `ece` (at most)."""
    note: str = ""

    @property
    def min_recall(self) -> tuple[str, float] | None:
        """The category with the lowest recall among those present, and that recall."""
        if self.report is None:
            return None
        present = [
            (c.recall, name)
            for name, c in zip(self.report.labels, self.report.per_class, strict=True)
            if c.support
        ]
        if not present:
            return None
        recall, name = min(present)
        return name, recall

    def met(self) -> bool | None:
        """Whether every target is met; None without targets or figures."""
        if not self.targets or self.report is None:
            return None
        checks = []
        for key, bound in self.targets.items():
            if key == "balanced_accuracy":
                checks.append(self.report.balanced_accuracy >= bound)
            elif key == "min_recall":
                low = self.min_recall
                checks.append(low is not None and low[1] >= bound)
            elif key == "typo_ratio":
                checks.append(self.typo_ratio is not None and self.typo_ratio >= bound)
            elif key == "ece":
                checks.append(self.report.ece <= bound)
        return all(checks)

    def figures(self) -> dict[str, Any]:
        """The row as a JSON object."""
        out: dict[str, Any] = {"name": self.name, "note": self.note, "targets": self.targets}
        if self.report is not None:
            out |= self.report.summary()
            low = self.min_recall
            out["min_recall"] = (
                None if low is None else {"label": low[0], "recall": round(low[1], 4)}
            )
            out["recall"] = {
                n: round(c.recall, 4)
                for n, c in zip(self.report.labels, self.report.per_class, strict=True)
                if c.support
            }
        if self.typo_ratio is not None:
            out["typo_ratio"] = round(self.typo_ratio, 4)
        out["met"] = self.met()
        return out


def _engine(path: Path, options: ScorecardOptions) -> Engine:
    try:
        return Engine.from_model_dir(
            path,
            onnx_file=options.onnx_file,
            intra_op_threads=options.threads,
            correct_spelling=options.correct_spelling,
        )
    except Exception as exc:  # the engine's own error kinds; report them and stop
        raise EvalError(f"cannot load {path}: {exc}") from exc


def _probs_of(engine: Engine) -> ProbsOf:
    def probs(texts: list[str]) -> npt.NDArray[np.float32]:
        return np.stack([c.label_probabilities for c in engine.classify(texts)])

    return probs


def _score(engine: Engine, rows: Sequence[Example], what: str) -> Report:
    labels = list(engine.labels)
    unknown = sorted({e.label for e in rows} - set(labels))
    if unknown:
        raise EvalError(f"{what}: labels {unknown} are not labels {labels} of the model")
    return evaluate_texts(_probs_of(engine), labels, rows, f"scoring {what}")


def _baseline_row(name: str, engine: Engine, rows: list[Example], options: ScorecardOptions) -> Row:
    clean = _score(engine, rows, name)
    ratios = []
    for copy in range(options.typo_copies):
        texts = typo_copy([e.text for e in rows], seed=options.seed + 7 + copy)
        noisy = [
            Example(t, e.label, e.subject, e.source, e.id) for t, e in zip(texts, rows, strict=True)
        ]
        typo_report = _score(engine, noisy, f"{name}, typo copy {copy + 1}")
        ratios.append(typo_report.balanced_accuracy / max(clean.balanced_accuracy, 1e-9))
    accuracy, typo_ratio, ece = BASELINE[name]
    targets = {
        "balanced_accuracy": accuracy - _SLACK,
        "typo_ratio": typo_ratio - _SLACK,
        "ece": ece + _SLACK,
    }
    return Row(name, clean, statistics.median(ratios), targets)


def _test_rows(path: Path, split: str, seed: int) -> list[Example]:
    return split_file(load_jsonl(path), split, seed)[2]


def _unseen_row(name: str, model: Path | None, path: Path, options: ScorecardOptions) -> Row:
    targets = {"balanced_accuracy": UNSEEN_TARGET}
    if model is None:
        note = "needs a model trained with --split subject (--subject-model)"
        return Row(name, None, targets=targets, note=note)
    rows = _test_rows(path, "subject", options.seed)
    return Row(name, _score(_engine(model, options), rows, name), targets=targets)


def _chat_rows(engine: Engine, path: Path, options: ScorecardOptions) -> list[Row]:
    rows = _test_rows(path, "group", options.seed)
    labels = list(engine.labels)
    probs = _probs_of(engine)
    every = _score_probs(labels, rows, probs)
    targets = {"balanced_accuracy": CHAT_TARGET, "min_recall": CHAT_MIN_CLASS}
    matched = length_matched(rows, options.seed)
    out = [
        Row("conversational", every(rows), targets=targets),
        Row("conversational, length-matched", every(matched), targets=targets),
    ]
    for source in sorted({source_name(e) for e in rows}):
        part = [e for e in rows if source_name(e) == source]
        out.append(Row(f"conversational: {source}", every(part)))
    return out


def _score_probs(
    labels: list[str], rows: list[Example], probs_of: ProbsOf
) -> Callable[[list[Example]], Report]:
    """Classify `rows` once; score any subset of them (by identity) from those results."""
    unknown = sorted({e.label for e in rows} - set(labels))
    if unknown:
        raise EvalError(f"conversational: labels {unknown} are not labels {labels} of the model")
    every = probabilities(probs_of, rows, "scoring conversational")
    index = {name: i for i, name in enumerate(labels)}
    position = {id(e): i for i, e in enumerate(rows)}

    def score(part: list[Example]) -> Report:
        y = np.asarray([index[e.label] for e in part], dtype=np.int64)
        return report(labels, every[[position[id(e)] for e in part]], y)

    return score


def scorecard(options: ScorecardOptions) -> list[Row]:
    """Score every held-out part (see the module docstring). Raises `DataError` for missing
    data and `EvalError` for a model that cannot be loaded or lacks a label. Progress goes
    to stderr."""
    data = options.data_dir or default_data_dir()
    exam, queries = (data / f for f in DOMAIN_FILES)
    mmlu = data / MMLU_PRO_FILES[0]
    domain = _engine(options.model, options)
    rows = [
        _baseline_row("exam 4-class", domain, _test_rows(exam, "balanced", options.seed), options),
        _baseline_row(
            "query-style", domain, _test_rows(queries, "balanced", options.seed), options
        ),
    ]
    if options.mmlu_model is not None:
        mmlu_rows = _test_rows(mmlu, "balanced", options.seed)
        rows.append(
            _baseline_row(
                "MMLU-Pro 14-class", _engine(options.mmlu_model, options), mmlu_rows, options
            )
        )
    rows.append(_unseen_row("unseen subjects, exam 4-class", options.subject_model, exam, options))
    rows.append(
        _unseen_row("unseen subjects, MMLU-Pro 14-class", options.subject_mmlu_model, mmlu, options)
    )
    rows.extend(_chat_rows(domain, data / CHAT_FILE, options))
    return rows


def format_scorecard(rows: Sequence[Row]) -> str:
    """The scorecard as a Markdown table."""
    lines = [
        "| held-out part | rows | balanced acc. % | lowest recall % | typo/clean | ECE | target | met |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        target = _format_targets(row.targets)
        if row.report is None:
            lines.append(
                f"| {row.name} | - | - | - | - | - | {target} | not measured: {row.note} |"
            )
            continue
        low = row.min_recall
        lowest = "-" if low is None else f"{100 * low[1]:.1f} ({low[0]})"
        typo = "-" if row.typo_ratio is None else f"{row.typo_ratio:.3f}"
        met = row.met()
        verdict = "-" if met is None else ("yes" if met else "**no**")
        lines.append(
            f"| {row.name} | {row.report.n} | {100 * row.report.balanced_accuracy:.1f} | "
            f"{lowest} | {typo} | {row.report.ece:.3f} | {target} | {verdict} |"
        )
    return "\n".join(lines)


def _format_targets(targets: dict[str, float]) -> str:
    parts = []
    for key, bound in targets.items():
        if key == "balanced_accuracy":
            parts.append(f">= {100 * bound:.1f} %")
        elif key == "min_recall":
            parts.append(f"each >= {100 * bound:.0f} %")
        elif key == "typo_ratio":
            parts.append(f"typo >= {bound:.3f}")
        elif key == "ece":
            parts.append(f"ECE <= {bound:.3f}")
    return ", ".join(parts) or "-"
