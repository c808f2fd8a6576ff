"""Accuracy against coverage on the held-out splits: how to choose `threshold`.

A text whose top category's probability is below `classifier.category_model.threshold` goes to
the default model. Raising the threshold sends more texts there (less *coverage*: the share
routed to a category) and leaves the routed ones right more often (*accuracy* on the covered
texts). For each held-out split this script classifies the test rows with the built model
(as `loraroute model eval` does), sweeps the threshold from 0 to 1 and draws, per split, the
accuracy of the routed texts against their share, marking the shipped threshold; it also
prints a table at a few thresholds. Splits: the exam and query-style balanced test rows and
the conversational group split (`modelkit.heldout`).

    LORAROUTE_DATA_DIR=... python loadtest/threshold_coverage.py --out coverage.png

Needs the `bench` extra (matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from modelkit.data import DOMAIN_FILES, default_data_dir, load_jsonl
from modelkit.evaluate import probabilities
from modelkit.heldout import CHAT_FILE
from modelkit.plan import split_file
from services.classifier.engine import Engine

SPLITS = (
    ("exam 4-class", DOMAIN_FILES[0], "balanced"),
    ("query-style", DOMAIN_FILES[1], "balanced"),
    ("conversational", CHAT_FILE, "group"),
)
TABLE_AT = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def curve(
    probs: npt.NDArray[np.float32],
    truth: npt.NDArray[np.int64],
    thresholds: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Coverage and accuracy of the covered texts at each threshold (NaN when none covered)."""
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == truth
    coverage = np.array([np.mean(confidence >= t) for t in thresholds])
    accuracy = np.array(
        [right[confidence >= t].mean() if np.any(confidence >= t) else np.nan for t in thresholds]
    )
    return coverage, accuracy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=Path("models") / "loraroute-domain")
    p.add_argument("--threshold", type=float, default=0.6, help="the configured threshold")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("threshold_coverage.png"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    engine = Engine.from_model_dir(args.model, intra_op_threads=args.threads)
    labels = list(engine.labels)

    def classify(texts: list[str]) -> npt.NDArray[np.float32]:
        return np.stack([c.label_probabilities for c in engine.classify(texts)])

    thresholds = np.linspace(0.0, 1.0, 101)
    figures: dict[str, dict[str, list[float]]] = {}
    fig, ax = plt.subplots(figsize=(7, 5))
    print("| split | " + " | ".join(f"t={t:.1f}" for t in TABLE_AT) + " |")
    print("|---|" + "---|" * len(TABLE_AT))
    for name, fname, split in SPLITS:
        rows = split_file(load_jsonl(default_data_dir() / fname), split, 0)[2]
        probs = probabilities(classify, rows, f"classifying {name}")
        truth = np.asarray([labels.index(e.label) for e in rows], dtype=np.int64)
        coverage, accuracy = curve(probs, truth, thresholds)
        figures[name] = {"coverage": coverage.tolist(), "accuracy": accuracy.tolist()}
        (line,) = ax.plot(100 * coverage, 100 * accuracy, label=f"{name} ({len(rows)} texts)")
        at = curve(probs, truth, np.asarray([args.threshold]))
        ax.plot(100 * at[0], 100 * at[1], "o", color=line.get_color())
        table = curve(probs, truth, np.asarray(TABLE_AT))
        cells = [f"{100 * a:.1f} % / {100 * c:.0f} %" for c, a in zip(*table, strict=True)]
        print(f"| {name} (accuracy / coverage) | " + " | ".join(cells) + " |", flush=True)
    ax.set_xlabel("coverage: texts routed to a category (%)")
    ax.set_ylabel("accuracy of the routed texts (%)")
    ax.set_title(f"{args.model.name}: threshold 0 (right) to 1 (left); dot: {args.threshold}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps({"thresholds": thresholds.tolist(), **figures}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
