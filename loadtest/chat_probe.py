"""What training on the conversational data might give, measured cheaply: a linear probe.

The shipped domain encoder (its LoRA adapter merged) is frozen; texts are embedded once and a
logistic-regression head is fitted on the training rows of the exam and query files (their
balanced split, as `loraroute model train` cuts it), with or without the conversational
file's training rows (its group split, `modelkit.heldout`; NL2Bash and Cooking capped at
`--cap` rows each, as they dwarf the rest). Every file weighs the same and every label the
same within its file, so the 56 legal conversational rows count as much as the 2,500 cooking
titles. Scored on the test rows of each file, the conversational validation rows, the
length-matched conversational subset and each conversational source. No memory, no LoRA
training: an estimate of the direction, not of the figures a retrained model would reach.

    LORAROUTE_DATA_DIR=... python loadtest/chat_probe.py --cache embeddings.npz

Needs the `build` extra (torch) and the `bench` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from sklearn.linear_model import LogisticRegression

from modelkit.data import DOMAIN_FILES, Example, default_data_dir, load_jsonl
from modelkit.encoder import Encoder, load_encoder, print_progress
from modelkit.heads import WEIGHTS_DIR
from modelkit.heldout import CHAT_FILE, length_matched, source_name
from modelkit.plan import split_file
from modelkit.scores import Report, report

LABELS = ["technical", "medical", "legal", "general"]
Array = npt.NDArray[np.float32]


def _capped(rows: Sequence[Example], cap: int) -> list[Example]:
    by_source: dict[str, list[Example]] = {}
    for e in sorted(rows, key=lambda e: hashlib.blake2b(e.text.encode(), digest_size=8).digest()):
        by_source.setdefault(source_name(e), []).append(e)
    return [e for part in by_source.values() for e in part[:cap]]


def _weights(labels: list[npt.NDArray[np.int64]]) -> npt.NDArray[np.float64]:
    out = []
    for y in labels:
        w = np.zeros(len(y))
        present = np.unique(y)
        for c in present:
            w[y == c] = 1.0 / (len(present) * (y == c).sum())
        out.append(w / len(labels))
    return np.concatenate(out)


def _score(clf: LogisticRegression, x: Array, y: npt.NDArray[np.int64]) -> Report:
    p = clf.predict_proba(x)
    full = np.zeros((len(p), len(LABELS)))
    full[:, clf.classes_] = p
    return report(LABELS, full, y)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cap", type=int, default=2500, help="training rows per large source")
    p.add_argument("--c", type=float, default=1.0, help="inverse regularisation strength")
    p.add_argument("--cache", type=Path, default=None, help="embeddings file, reused if present")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = default_data_dir()
    exam_tr, _, exam_te = split_file(load_jsonl(data / DOMAIN_FILES[0]), "balanced", 0)
    q_tr, _, q_te = split_file(load_jsonl(data / DOMAIN_FILES[1]), "balanced", 0)
    chat_tr, chat_va, chat_te = split_file(load_jsonl(data / CHAT_FILE), "group", 0)
    parts = {
        "exam_tr": exam_tr,
        "q_tr": q_tr,
        "chat_tr": _capped(chat_tr, args.cap),
        "exam_te": exam_te,
        "q_te": q_te,
        "chat_te": chat_te,
        "chat_va": chat_va,
    }
    if args.cache is not None and args.cache.is_file():
        emb = dict(np.load(args.cache))
    else:
        encoder = Encoder()
        encoder.model = load_encoder(WEIGHTS_DIR / "domain" / "encoder_lora")
        emb = {
            k: encoder.embed([e.text for e in v], progress=print_progress(k))
            for k, v in parts.items()
        }
        if args.cache is not None:
            np.savez(args.cache, **emb)  # type: ignore[arg-type]
    y = {k: np.asarray([LABELS.index(e.label) for e in v]) for k, v in parts.items()}
    matched = {id(e) for e in length_matched(chat_te)}
    print(
        "| probe trained on | exam test | queries test | chat validation | chat test "
        "(legal recall) | chat length-matched | "
        + " | ".join(sorted({source_name(e) for e in chat_te}))
        + " |"
    )
    print("|---|" + "---|" * (5 + len({source_name(e) for e in chat_te})))
    for name, files in (
        ("exam + queries", ["exam_tr", "q_tr"]),
        ("exam + queries + chat", ["exam_tr", "q_tr", "chat_tr"]),
    ):
        labels = [y[k] for k in files]
        clf = LogisticRegression(C=args.c, max_iter=3000)
        total = sum(len(t) for t in labels)
        clf.fit(
            np.concatenate([emb[k] for k in files]),
            np.concatenate(labels),
            sample_weight=_weights(labels) * total,
        )
        cells = [
            f"{100 * _score(clf, emb[k], y[k]).balanced_accuracy:.1f}"
            for k in ("exam_te", "q_te", "chat_va")
        ]
        chat = _score(clf, emb["chat_te"], y["chat_te"])
        cells.append(f"{100 * chat.balanced_accuracy:.1f} ({100 * chat.per_class[2].recall:.0f})")
        sources = sorted({source_name(e) for e in chat_te})
        subsets = [[i for i, e in enumerate(chat_te) if id(e) in matched]] + [
            [i for i, e in enumerate(chat_te) if source_name(e) == s] for s in sources
        ]
        for rows in subsets:
            r = _score(clf, emb["chat_te"][rows], y["chat_te"][rows])
            cells.append(f"{100 * r.balanced_accuracy:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
