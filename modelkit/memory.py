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

import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from modelkit.calibration import fit_temperature, softmax
from modelkit.data import Example
from modelkit.encoder import Encoder, load_encoder, print_progress
from modelkit.heads import (
    MEMORY_FILE,
    MEMORY_SCALE,
    Head,
    Memory,
    head_names,
    load_head,
    save_memory,
)
from modelkit.heldout import CHAT_FILE
from modelkit.plan import FileSplit, HeadPlan, balance_weights, evaluate_plan
from modelkit.runs import RunError, plan_again, trained_together
from modelkit.scores import balanced_accuracy, confusion_matrix

__all__ = [
    "CHOICES",
    "GRID",
    "MEMORY_SKIPS",
    "MemoryVote",
    "add_memory",
    "attach_memory",
    "fit_memory",
    "memory_logits",
    "memory_rows",
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


#: Files whose training rows the memory leaves out. The vote reads every stored row for every
#: text, so its cost grows with the rows; the conversational file's 15,000 would more than
#: double them (single-text CPU +35 %) and added nothing on that file's own held-out rows,
#: where the head alone does as well (docs/benchmarks.md, "Training on the conversational
#: questions").
MEMORY_SKIPS: frozenset[str] = frozenset({CHAT_FILE})


def memory_rows(files: Sequence[FileSplit]) -> list[list[Example]]:
    """Each file's training rows that the memory stores: none of a file in `MEMORY_SKIPS`."""
    return [[] if f.name in MEMORY_SKIPS else list(f.train) for f in files]


def attach_memory(plan: HeadPlan, enc: Encoder, head_dir: Path, seed: int) -> Memory:
    """Fit a memory for the head saved in `head_dir` (trained on `plan`'s rows with `enc`),
    write it there and record it, with test figures, in the head's meta.json.

    The head's own test figures move to `memory.head_only_evaluation`; `evaluation` then
    holds those of the head with its memory, which is what `loraroute model build` exports.
    """
    head = load_head(head_dir)
    if not head.normalize:
        raise ValueError(f"{head_dir}: a memory needs normalised embeddings")
    enc.eval()
    parts = memory_rows(plan.files)
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

    figures = evaluate_plan(plan, probs_of, seed)
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
        "files": [f.name for f, part in zip(plan.files, parts, strict=True) if part],
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


def add_memory(weights: Path, data: Sequence[Path] = (), threads: int = 0) -> list[Memory]:
    """Give every head under `weights` a memory (or recompute it), chosen on the validation
    rows of the split the heads were trained on; return the memories, one per head.

    `data` names the files of heads trained on user-supplied files. Raises `RunError` when
    there are no heads or the data does not give the recorded split, `DataError` for bad
    data, and `FileNotFoundError` / `ValueError` for a bad head. `threads` 0 leaves torch's
    choice.
    """
    if threads:
        torch.set_num_threads(threads)
    names = head_names(weights)
    if not names:
        raise RunError(f"no heads under {weights}")
    heads: dict[str, list[Head]] = {n: [load_head(weights / n)] for n in names}
    memories = []
    for group in trained_together(heads):
        options, plans = plan_again(group, data, [weights])
        enc = Encoder(max_length=options.max_length, normalize=options.normalize)
        for p in enc.parameters():
            p.requires_grad_(False)
        for plan in plans:
            enc.model = load_encoder(heads[plan.name][0].lora_dir)  # each head's own copy
            memories.append(attach_memory(plan, enc, weights / plan.name, options.seed))
    return memories
