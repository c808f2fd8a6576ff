"""Classification scores in plain numpy: accuracy, balanced accuracy, per-class P/R/F1,
confusion matrix and expected calibration error.

Labels are integer indices `0..num_classes-1`; `probs` rows are probability vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "ClassReport",
    "Report",
    "accuracy",
    "balanced_accuracy",
    "confusion_matrix",
    "expected_calibration_error",
    "format_report",
    "per_class",
    "report",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def confusion_matrix(
    y_true: Sequence[int] | IntArray, y_pred: Sequence[int] | IntArray, num_classes: int
) -> IntArray:
    """Counts [num_classes, num_classes]: row = true class, column = predicted class."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {t.shape} vs {p.shape}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(cm: IntArray) -> float:
    """Fraction of examples on the diagonal (0.0 for an empty matrix)."""
    total = int(cm.sum())
    return float(np.trace(cm)) / total if total else 0.0


def balanced_accuracy(cm: IntArray) -> float:
    """Mean recall over the classes that occur in the true labels.

    Classes with no true examples are left out rather than counted as zero, so a held-out set
    that lacks a class is not penalised for it.
    """
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    recall = np.diag(cm)[present] / support[present]
    return float(recall.mean())


@dataclass(frozen=True, slots=True)
class ClassReport:
    """Precision, recall, F1 and support (true count) of one class."""

    precision: float
    recall: float
    f1: float
    support: int


def per_class(cm: IntArray) -> list[ClassReport]:
    """One `ClassReport` per class; a ratio with a zero denominator is 0.0."""
    out = []
    for k in range(cm.shape[0]):
        tp = float(cm[k, k])
        predicted = float(cm[:, k].sum())
        support = int(cm[k, :].sum())
        p = tp / predicted if predicted else 0.0
        r = tp / support if support else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out.append(ClassReport(p, r, f1, support))
    return out


def expected_calibration_error(
    probs: npt.ArrayLike, y_true: Sequence[int] | IntArray, n_bins: int = 15
) -> float:
    """ECE of the top-1 confidence: sum over equal-width bins of |accuracy - confidence|,
    weighted by the fraction of examples in the bin.

    A confidence of exactly 0 goes to the first bin, of exactly 1 to the last.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.int64)
    if len(t) == 0:
        return 0.0
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == t).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


@dataclass(frozen=True, slots=True)
class Report:
    """Everything `loraroute model eval` prints, for one labelled set."""

    labels: list[str]
    n: int
    accuracy: float
    balanced_accuracy: float
    ece: float
    per_class: list[ClassReport]
    confusion: IntArray

    def summary(self) -> dict[str, float]:
        """The headline figures, rounded for a JSON file."""
        return {
            "n": self.n,
            "accuracy": round(self.accuracy, 4),
            "balanced_accuracy": round(self.balanced_accuracy, 4),
            "ece": round(self.ece, 4),
        }


def report(
    labels: Sequence[str], probs: npt.ArrayLike, y_true: Sequence[int] | IntArray, n_bins: int = 15
) -> Report:
    """All scores for predictions `probs` [n, len(labels)] against `y_true` [n]."""
    p = np.asarray(probs, dtype=np.float64)
    cm = confusion_matrix(y_true, p.argmax(axis=1), len(labels))
    return Report(
        labels=list(labels),
        n=int(cm.sum()),
        accuracy=accuracy(cm),
        balanced_accuracy=balanced_accuracy(cm),
        ece=expected_calibration_error(p, y_true, n_bins),
        per_class=per_class(cm),
        confusion=cm,
    )


def format_report(r: Report) -> str:
    """A plain-text rendering: headline figures, per-class table, confusion matrix."""
    width = max(12, *(len(x) for x in r.labels))
    lines = [
        f"examples           {r.n}",
        f"accuracy           {r.accuracy:.4f}",
        f"balanced accuracy  {r.balanced_accuracy:.4f}",
        f"ECE (15 bins)      {r.ece:.4f}",
        "",
        f"{'class':<{width}}  precision  recall     f1  support",
    ]
    for name, c in zip(r.labels, r.per_class, strict=True):
        lines.append(
            f"{name:<{width}}  {c.precision:9.4f}  {c.recall:6.4f}  {c.f1:5.4f}  {c.support:7d}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    short = [x[:6] for x in r.labels]
    lines.append(" " * width + "  " + " ".join(f"{s:>6}" for s in short))
    for name, row in zip(r.labels, r.confusion, strict=True):
        lines.append(f"{name:<{width}}  " + " ".join(f"{int(v):6d}" for v in row))
    return "\n".join(lines)
