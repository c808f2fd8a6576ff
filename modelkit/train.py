"""`loraroute model train`: train the classifier heads (and optionally a LoRA delta on the encoder).

Defaults train both heads, `domain` (technical, medical, legal, general) from
`domain_train.jsonl` + `domain_queries_train.jsonl` and `mmlu-pro` (14 labels) from
`mmlu_pro_train.jsonl`, read from `../shared/data` or `$LORAROUTE_DATA_DIR`; the committed
weights are the average (`loraroute model average`) of such a run and one with `--epochs 4
--max-per-class 800`. Users train on their own JSONL (`text`, `label`) with `--data FILE
--head NAME`. How the rows are split and weighted: `modelkit.plan`; the LoRA training:
`modelkit.finetune`; the command line: `modelkit.cli.train`.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import torch

from modelkit.augment import typo_copy
from modelkit.calibration import fit_linear_head, fit_temperature, softmax
from modelkit.encoder import Encoder, print_progress
from modelkit.finetune import train_lora
from modelkit.heads import ADAPTER_DIR, default_weights_dir, save_head
from modelkit.memory import attach_memory
from modelkit.options import TrainOptions
from modelkit.plan import HeadPlan, balance_weights, evaluate_plan, head_meta, plan_heads
from modelkit.ranges import CALIBRATION_TEXTS, attach_ranges

__all__ = ["train"]


def _train_linear(plans: list[HeadPlan], enc: Encoder, options: TrainOptions, out: Path) -> None:
    cache: dict[str, npt.NDArray[np.float32]] = {}
    cache_file = None
    if options.cache_dir is not None:
        # Frozen-encoder embeddings depend only on the text and the pooling settings, so
        # repeated linear runs (other splits, other head settings) reuse them.
        tag = f"minilm-l6-len{options.max_length}-norm{int(options.normalize)}"
        cache_file = options.cache_dir / f"embeddings-{tag}.npz"
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
            if options.balance
            else np.ones(len(y), dtype=np.float32)
        )
        xs, ys, ws = [embed(texts, f"{plan.name} train")], [y], [w]
        for c in range(options.typo_copies):
            xs.append(
                embed(typo_copy(texts, seed=options.seed_of_run + 100 + c), f"{plan.name} typos")
            )
            ys.append(y)
            ws.append(w)
        print(f"fitting {plan.name} head on {sum(len(a) for a in ys)} rows", file=sys.stderr)
        weight, bias = fit_linear_head(
            np.concatenate(xs),
            np.concatenate(ys),
            np.concatenate(ws),
            len(plan.labels),
            l2=options.l2,
        )
        val = [e for f in plan.files for e in f.val]
        xv = embed([e.text for e in val], f"{plan.name} val")
        yv = np.asarray([plan.index(e.label) for e in val], dtype=np.int64)
        temperature = fit_temperature(xv @ weight.T + bias, yv)
        weight, bias = weight / temperature, bias / temperature

        def probs_of(batch: list[str], wt: Any = weight, bs: Any = bias) -> Any:
            return softmax(embed(batch, "test") @ wt.T + bs)

        figures = evaluate_plan(plan, probs_of, options.seed)
        extra = {"typo_copies": options.typo_copies, "l2": options.l2}
        save_head(
            out / plan.name,
            plan.labels,
            weight,
            bias,
            head_meta(plan, options, temperature, figures, None, extra),
        )
        print(json.dumps({plan.name: figures}, indent=1), file=sys.stderr)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        texts = list(cache)
        np.savez(cache_file, texts=np.asarray(texts), vectors=np.stack([cache[t] for t in texts]))


def train(options: TrainOptions) -> Path:
    """Train the heads `options` asks for and write them (see `modelkit.heads`); return the
    weights folder.

    Raises `OptionsError` when options do not go together (before any work) and `DataError`
    when the data is missing or does not fit the heads. Progress goes to stderr.
    """
    options.check()
    # Recorded in meta.json as the seed this run used.
    options = msgspec.structs.replace(options, run_seed=options.seed_of_run)
    random.seed(options.seed_of_run)
    np.random.seed(options.seed_of_run)
    torch.manual_seed(options.seed_of_run)
    if options.threads:
        torch.set_num_threads(options.threads)
    plans = plan_heads(options)
    out = options.out or default_weights_dir()
    for plan in plans:
        for f in plan.files:
            print(
                f"{plan.name}/{f.name}: train {len(f.train)}, val {len(f.val)}, test {len(f.test)}",
                file=sys.stderr,
            )
    started = time.monotonic()
    enc = Encoder(max_length=options.max_length, normalize=options.normalize)
    if options.lora:
        train_lora(plans, enc, options, out)
    else:
        for p in enc.parameters():
            p.requires_grad_(False)
        # A linear head alone must not leave a stale adapter beside it.
        for plan in plans:
            stale = out / plan.name / ADAPTER_DIR
            if stale.exists():
                shutil.rmtree(stale)
        _train_linear(plans, enc, options, out)
    if options.memory:
        for plan in plans:
            attach_memory(plan, enc, out / plan.name, options.seed)
    for plan in plans:  # last: the ranges of the encoder as saved, for the static int8 build
        attach_ranges(plan, out / plan.name, options.seed, enc.tokenize, CALIBRATION_TEXTS)
    print(f"done in {time.monotonic() - started:.0f} s; weights in {out}", file=sys.stderr)
    return out
