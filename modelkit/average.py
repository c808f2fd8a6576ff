"""`loraroute model average`: one set of heads from several LoRA runs, by averaging weights.

Runs of `loraroute model train` that start from the same encoder and share one split (same
data, `--split`, `--seed` and per-label counts) can be averaged into one model ("model soup",
Wortsman et al., ICML 2022): the encoder's LoRA deltas are averaged exactly, by concatenating
the runs' adapters with peft (`add_weighted_adapter(..., combination_type="cat")`, rank = the
sum of the runs' ranks), and each head's weights are averaged before their temperatures are
folded in. The averaged heads are then calibrated on the validation rows and evaluated on the
test rows like a trained run, and written in the same format, so `loraroute model build` and
everything after it see no difference. It costs no inference time: the delta is merged into
the encoder at build time.

Refused, with the reason: fewer than two runs, runs whose heads, labels, pooling or split
differ, runs without an adapter, and runs whose recorded row counts do not match what the
data gives now (they were trained on other rows, and their test rows would not be held out).
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch

from modelkit.encoder import Encoder
from modelkit.finetune import LOGIT_SCALE, calibrate_and_save, lora_meta
from modelkit.heads import Head, default_weights_dir, head_names, load_head
from modelkit.memory import attach_memory
from modelkit.ranges import CALIBRATION_TEXTS, attach_ranges
from modelkit.runs import RunError, plan_again, training_meta

__all__ = ["average", "read_runs"]

#: What must be equal in every run's meta.json for an average to make sense.
_SAME_META = ("pooling", "normalize", "max_length")
_SAME_TRAINING = ("split", "seed", "test_per_class", "val_per_class")


def read_runs(runs: Sequence[Path]) -> dict[str, list[Head]]:
    """Each head name -> its head in every run, after checking that the runs fit together."""
    if len(runs) < 2:
        raise RunError("averaging needs at least two runs")
    names = [head_names(r) for r in runs]
    for run, found in zip(runs, names, strict=True):
        if not found:
            raise RunError(f"{run}: no heads (each needs labels.json, head.npz, meta.json)")
        if found != names[0]:
            raise RunError(f"{run}: heads {found} differ from {runs[0]}'s {names[0]}")
    heads = {name: [load_head(r / name) for r in runs] for name in names[0]}
    first = heads[names[0][0]][0]
    for name, per_run in heads.items():
        for run, head in zip(runs, per_run, strict=True):
            where = f"{run / name}"
            if head.lora_dir is None:
                raise RunError(f"{where}: no encoder adapter; only LoRA runs are averaged")
            if head.labels != per_run[0].labels:
                raise RunError(f"{where}: labels differ from {runs[0] / name}")
            for key in _SAME_META:
                if head.meta.get(key) != first.meta.get(key):
                    raise RunError(f"{where}: {key} differs from {runs[0] / names[0][0]}")
            for key in _SAME_TRAINING:
                if training_meta(head).get(key, 0) != training_meta(first).get(key, 0):
                    raise RunError(
                        f"{where}: training.{key} differs from {runs[0] / names[0][0]}; "
                        "runs must share one split"
                    )
            if head.meta.get("data", {}).get("sources") != first.meta.get("data", {}).get(
                "sources"
            ):
                raise RunError(f"{where}: trained on other data than {runs[0] / names[0][0]}")
    return heads


def _average_adapter(enc: Encoder, heads: dict[str, list[Head]]) -> dict[str, Any]:
    """Replace `enc.model` by a peft model whose active adapter is the runs' exact average."""
    from peft import PeftModel

    per_run = next(iter(heads.values()))
    names = [f"run{i}" for i in range(len(per_run))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # see finetune.train_lora
        model = PeftModel.from_pretrained(
            enc.model, str(per_run[0].lora_dir), adapter_name=names[0]
        )
        for name, head in zip(names[1:], per_run[1:], strict=True):
            model.load_adapter(str(head.lora_dir), adapter_name=name)
        weights = [1.0 / len(names)] * len(names)
        model.add_weighted_adapter(names, weights, "default", combination_type="cat")
        model.set_adapter("default")
        # peft joins the runs' target patterns with "|"; equal ones stay one pattern.
        configs: dict[str, Any] = model.peft_config  # name -> LoraConfig
        targets = {str(configs[name].target_modules) for name in names}
        for name in names:
            model.delete_adapter(name)
    for p in model.parameters():
        p.requires_grad_(False)
    enc.model = model
    config = configs["default"]
    if len(targets) == 1:
        config.target_modules = targets.pop()
    return {"r": int(config.r), "alpha": int(config.lora_alpha)}


def _average_head(per_run: list[Head], scale: float) -> torch.nn.Linear:
    """A linear layer with the runs' mean weights, temperatures unfolded, over `scale`."""
    ws, bs = [], []
    for head in per_run:
        training = training_meta(head)
        t = float(training.get("temperature", 1.0)) if training.get("temperature_folded") else 1.0
        ws.append(head.weight.astype(np.float64) * t)
        bs.append(head.bias.astype(np.float64) * t)
    layer = torch.nn.Linear(ws[0].shape[1], ws[0].shape[0])
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.mean(ws, axis=0) / scale))
        layer.bias.copy_(torch.from_numpy(np.mean(bs, axis=0) / scale))
    return layer


def _run_summaries(heads: dict[str, list[Head]]) -> list[dict[str, Any]]:
    """What each run was: its training settings and every head's validation figure."""
    keep = (
        "run_seed",
        "epochs_done",
        "lr",
        "max_per_class",
        "typo_prob",
        "crop_prob",
        "aux_subject_weight",
        "consistency_weight",
        "mask_missing_labels",
        "probe_init",
    )
    summaries = []
    for i, head in enumerate(next(iter(heads.values()))):
        training = training_meta(head)
        summary = {k: training[k] for k in keep if k in training}
        summary["lora_r"] = (head.meta.get("encoder_lora") or {}).get("r")
        summary["val_balanced_accuracy"] = {
            name: training_meta(per_run[i]).get("val_balanced_accuracy")
            for name, per_run in heads.items()
        }
        summaries.append(summary)
    return summaries


def average(
    runs: Sequence[Path],
    *,
    out: Path | None = None,
    data: Sequence[Path] = (),
    memory: bool = True,
    threads: int = 0,
) -> Path:
    """Average the runs in `runs` into one set of heads written to `out` (default: the
    committed weights); return `out`.

    `data` names the files of runs trained on user-supplied files; `memory` gives each
    averaged head a nearest-neighbour memory; `threads` 0 leaves torch's choice. Raises
    `RunError` when the runs cannot be averaged, `DataError` for bad data and
    `FileNotFoundError` / `ValueError` for a bad head, all before any training work.
    """
    if threads:
        torch.set_num_threads(threads)
    heads = read_runs(runs)
    options, plans = plan_again(heads, data, runs)
    # The average is no single run: it has no run seed of its own.
    options = msgspec.structs.replace(options, run_seed=None)
    started = time.monotonic()
    out = out or default_weights_dir()
    enc = Encoder(max_length=options.max_length, normalize=options.normalize)
    lora = _average_adapter(enc, heads)
    scale = LOGIT_SCALE if options.normalize else 1.0
    layers = [_average_head(heads[p.name], scale) for p in plans]
    note = (
        f"exact average of {len(runs)} runs' adapters (ranks concatenated); every head "
        "folder holds an identical copy"
    )
    calibrate_and_save(
        plans,
        enc,
        layers,
        scale,
        options,
        out,
        lora_meta(plans, lora["r"], lora["alpha"], note),
        {"averaged_runs": _run_summaries(heads)},
    )
    if memory:
        for plan in plans:
            attach_memory(plan, enc, out / plan.name, options.seed)
    for plan in plans:  # last: the ranges of the encoder as saved, for the static int8 build
        attach_ranges(plan, out / plan.name, options.seed, enc.tokenize, CALIBRATION_TEXTS)
    print(f"done in {time.monotonic() - started:.0f} s; weights in {out}", file=sys.stderr)
    return out
