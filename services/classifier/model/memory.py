"""The nearest-neighbour memory: the training rows' embeddings, voting beside the head.

A linear head draws one boundary per label; the labels of these files are unions of many
subjects (MMLU-Pro's `other`, the exam file's `general`), and a vote of the most similar
training rows follows such a union more closely. Mixed with the head's probabilities it
raised held-out balanced accuracy by 2-3 points on exam stems and MMLU-Pro and did not lower
it on held-out subjects (docs/benchmarks.md). At run time the vote is part of the exported
graph: one matrix product against the stored rows, a top-k and a weighted sum, so the model
directory and the engine stay as they are.

`attach_memory` embeds a head's training rows with the final encoder, chooses `k`, the vote's
sharpness `tau` and the mixing weight on the validation rows (balanced accuracy, ties broken
by log loss), fits a temperature on them, evaluates on the test rows and writes
`memory.npz`; `loraroute model train` and `average` call it last, and `loraroute model
memory` adds a memory to heads that have none (or recomputes it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from .calibration import fit_temperature, softmax
from .data import DataError
from .encoder import Encoder, print_progress
from .metrics import balanced_accuracy, confusion_matrix
from .weights import (
    MEMORY_FILE,
    MEMORY_SCALE,
    Head,
    Memory,
    default_weights_dir,
    head_names,
    load_head,
    save_memory,
)

if TYPE_CHECKING:
    from .train import HeadPlan

__all__ = [
    "CHOICES",
    "GRID",
    "MemoryVote",
    "add_memory_option",
    "attach_memory",
    "build_parser",
    "fit_memory",
    "main",
]

#: Candidates for (k, tau, mix). The head always keeps a share: votes alone jump between
#: near-certainties, which would leave `threshold` little to act on. Sharper votes
#: (tau 0.02) won on near-copies of training rows but lost accuracy and calibration on whole
#: subjects never trained on (docs/benchmarks.md), so they are not offered.
CHOICES: dict[str, tuple[float, ...]] = {
    "k": (10, 20, 30),
    "tau": (0.05, 0.1),
    "mix": (0.3, 0.5, 0.7),
}
GRID: tuple[tuple[int, float, float], ...] = tuple(
    (int(k), tau, mix) for k, tau, mix in itertools.product(*CHOICES.values())
)

#: Probabilities are clamped here before the logarithm (a label no neighbour has).
_FLOOR = 1e-12


class MemoryVote(torch.nn.Module):
    """Logits from a pooled, unit-length embedding and the head's logits (see `Memory`)."""

    vectors: torch.Tensor  # int8 [rows, hidden]
    votes: torch.Tensor  # float32 [rows, labels]: each row's weight at its label

    def __init__(self, memory: Memory, num_labels: int) -> None:
        super().__init__()
        # Stored int8 and scaled in the graph, so the file stays a quarter of the size;
        # onnxruntime folds the constant once when the session starts.
        self.register_buffer("vectors", torch.from_numpy(memory.vectors.astype(np.int8)))
        one_hot = np.zeros((len(memory.labels), num_labels), dtype=np.float32)
        one_hot[np.arange(len(memory.labels)), memory.labels] = 1.0
        self.register_buffer("votes", torch.from_numpy(one_hot * memory.weights[:, None]))
        self.k, self.tau, self.mix = memory.k, memory.tau, memory.mix
        self.temperature = memory.temperature

    def forward(self, pooled: torch.Tensor, head_logits: torch.Tensor) -> torch.Tensor:
        sims = pooled @ (self.vectors.float() * (1.0 / MEMORY_SCALE)).T
        top, idx = torch.topk(sims, self.k, dim=1)
        strength = torch.exp((top - top[:, :1]) / self.tau)
        votes = (strength.unsqueeze(-1) * self.votes[idx]).sum(dim=1)
        votes = votes / votes.sum(dim=1, keepdim=True)
        mixed = (1.0 - self.mix) * torch.softmax(head_logits, dim=1) + self.mix * votes
        logits: torch.Tensor = torch.log(mixed.clamp(min=_FLOOR)) / self.temperature
        return logits


def memory_logits(
    memory: Memory,
    num_labels: int,
    x: npt.NDArray[np.float32],
    head_logits: npt.NDArray[np.floating[Any]],
) -> npt.NDArray[np.float32]:
    """`MemoryVote` on arrays: logits [n, num_labels] for embeddings `x` [n, hidden]."""
    vote = MemoryVote(memory, num_labels)
    with torch.inference_mode():
        out = vote(
            torch.from_numpy(np.asarray(x, dtype=np.float32)),
            torch.from_numpy(np.asarray(head_logits, dtype=np.float32)),
        )
    return np.asarray(out.numpy(), dtype=np.float32)


def _log_loss(logits: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_memory(
    num_labels: int,
    train: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32]],
    val: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.floating[Any]]],
    val_groups: Sequence[npt.NDArray[np.bool_]],
) -> tuple[Memory, dict[str, Any]]:
    """Choose a memory on the validation rows.

    `train` is (embeddings, label ids, loss weights) of the training rows; `val` is
    (embeddings, label ids, head logits) of the validation rows, and `val_groups` marks the
    rows of each file, whose balanced accuracies are averaged. Returns the memory and what
    was measured on the validation rows for it and for the head alone.
    """
    xt, yt, wt = train
    xv, yv, head_v = val
    vectors = np.clip(np.rint(xt * MEMORY_SCALE), -127, 127).astype(np.int8)

    def score(logits: npt.NDArray[np.float32]) -> float:
        pred = logits.argmax(axis=1)
        accs = [balanced_accuracy(confusion_matrix(yv[g], pred[g], num_labels)) for g in val_groups]
        return float(np.mean(accs))

    best: tuple[float, float, Memory] | None = None
    for k, tau, mix in GRID:
        k = min(k, len(yt))
        plain = Memory(vectors, yt, wt, k, tau, mix, 1.0)
        logits = memory_logits(plain, num_labels, xv, head_v)
        temperature = fit_temperature(logits, yv)
        candidate = Memory(vectors, yt, wt, k, tau, mix, temperature)
        key = (score(logits), -_log_loss(logits / temperature, yv))
        if best is None or key > best[:2]:
            best = (*key, candidate)
    assert best is not None
    chosen = best[2]
    measured = {
        "val_balanced_accuracy": round(best[0], 4),
        "val_balanced_accuracy_head_only": round(score(np.asarray(head_v, np.float32)), 4),
    }
    return chosen, measured


def attach_memory(plan: HeadPlan, enc: Encoder, head_dir: Path, seed: int) -> Memory:
    """Fit a memory for the head saved in `head_dir` (trained on `plan`'s rows with `enc`),
    write it there and record it, with test figures, in the head's meta.json.

    The head's own test figures move to `memory.head_only_evaluation`; `evaluation` then
    holds those of the head with its memory, which is what `loraroute model build` exports.
    """
    from .train import _evaluate, balance_weights

    head = load_head(head_dir)
    if not head.normalize:
        raise ValueError(f"{head_dir}: a memory needs normalised embeddings")
    enc.eval()
    parts = [f.train for f in plan.files]
    rows = [e for part in parts for e in part]
    xt = enc.embed([e.text for e in rows], progress=print_progress(f"memory {plan.name}"))
    yt = np.asarray([plan.index(e.label) for e in rows], dtype=np.int64)
    wt = balance_weights(parts, plan.file_weights())
    wt = (wt / wt.mean()).astype(np.float32)
    val = [e for f in plan.files for e in f.val]
    owner = np.repeat(np.arange(len(plan.files)), [len(f.val) for f in plan.files])
    groups = [owner == i for i, f in enumerate(plan.files) if f.val]  # each file's val rows
    xv = enc.embed([e.text for e in val])
    yv = np.asarray([plan.index(e.label) for e in val], dtype=np.int64)
    memory, measured = fit_memory(
        len(plan.labels), (xt, yt, wt), (xv, yv, xv @ head.weight.T + head.bias), groups
    )

    def probs_of(texts: list[str]) -> Any:
        x = enc.embed(texts)
        return softmax(memory_logits(memory, len(plan.labels), x, x @ head.weight.T + head.bias))

    figures = _evaluate(plan, probs_of, seed)
    save_memory(head_dir, memory)
    meta = dict(head.meta)
    # Recomputing a memory: the head's own figures are the ones recorded with the last one.
    previous = meta.get("memory")
    head_only = (
        previous["head_only_evaluation"]
        if isinstance(previous, dict) and "head_only_evaluation" in previous
        else meta.get("evaluation", {})
    )
    meta["memory"] = {
        "file": MEMORY_FILE,
        "rows": len(yt),
        "k": memory.k,
        "tau": memory.tau,
        "mix": memory.mix,
        "temperature": memory.temperature,
        "chosen_from": {name: list(values) for name, values in CHOICES.items()},
        **measured,
        "head_only_evaluation": head_only,
    }
    meta["evaluation"] = {
        "note": "held-out test part of each file, never used for training or tuning; the "
        "head with its memory, measured with the torch encoder before ONNX export",
        **figures,
    }
    (head_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({f"{plan.name} with memory": figures | measured}), file=sys.stderr)
    return memory


def add_memory_option(p: argparse.ArgumentParser) -> None:
    """The `--memory/--no-memory` option of `loraroute model train` and `average`."""
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="finally give each head a nearest-neighbour memory of its training rows, mixed "
        "with the head and chosen on the validation rows (`loraroute model memory`; "
        "default on)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `loraroute model memory`."""
    p = argparse.ArgumentParser(
        prog="loraroute model memory",
        description="Give trained heads a nearest-neighbour memory of their training rows "
        "(or recompute it), chosen on the validation rows of the split they were trained on.",
    )
    p.add_argument(
        "--weights",
        type=Path,
        default=default_weights_dir(),
        help="weights folder of the heads (default: the committed weights)",
    )
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        default=None,
        metavar="FILE.jsonl",
        help="the files the heads were trained on, when they were user-supplied (repeat)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute model memory`; 0 on success, 2 when the heads or data do not fit."""
    from .average import AverageError, plan_again
    from .export import load_encoder

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = args.weights
    try:
        names = head_names(weights)
        if not names:
            raise AverageError(f"no heads under {weights}")
        heads: dict[str, list[Head]] = {n: [load_head(weights / n)] for n in names}
        targs, plans = plan_again(heads, args.data, [weights])
    except (AverageError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"loraroute model memory: {exc}", file=sys.stderr)
        return 2
    enc = Encoder(max_length=targs.max_length, normalize=targs.normalize)
    for p in enc.parameters():
        p.requires_grad_(False)
    for plan in plans:
        enc.model = load_encoder(heads[plan.name][0].lora_dir)  # each head's own copy
        attach_memory(plan, enc, weights / plan.name, targs.seed)
    return 0
