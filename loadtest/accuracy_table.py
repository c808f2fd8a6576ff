"""Collect the held-out figures of several `loraroute model train` runs into a Markdown table.

Usage: python loadtest/accuracy_table.py NAME=WEIGHTS_DIR [NAME=WEIGHTS_DIR ...]

Each WEIGHTS_DIR is an `--out` folder of a training run; the figures are the ones the run
measured on its own held-out test parts and wrote to `<head>/meta.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = ["main", "row"]

FILES = (
    ("domain", "domain_train.jsonl", "4-class exam"),
    ("domain", "domain_queries_train.jsonl", "queries"),
    ("mmlu-pro", "mmlu_pro_train.jsonl", "14-class MMLU-Pro"),
)


def row(name: str, out_dir: Path) -> str:
    """One table row: balanced accuracy, typo ratio and ECE per held-out file."""
    cells = [name]
    for head, fname, _ in FILES:
        meta_path = out_dir / head / "meta.json"
        if not meta_path.is_file():
            cells += ["-", "-", "-"]
            continue
        fig = json.loads(meta_path.read_text(encoding="utf-8"))["evaluation"].get(fname)
        if fig is None:
            cells += ["-", "-", "-"]
            continue
        cells += [
            f"{100 * fig['clean']['balanced_accuracy']:.1f}",
            f"{fig['typo_ratio']:.3f}",
            f"{fig['clean']['ece']:.3f}",
        ]
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str]) -> int:
    """Print the table for the NAME=DIR arguments; 2 on a malformed argument."""
    header = ["run"]
    for _, _, title in FILES:
        header += [f"{title} bal. acc %", "typo/clean", "ECE"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for arg in argv:
        if "=" not in arg:
            print(f"expected NAME=DIR, got {arg!r}", file=sys.stderr)
            return 2
        name, path = arg.split("=", 1)
        print(row(name, Path(path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
