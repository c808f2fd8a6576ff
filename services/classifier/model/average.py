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

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import DataError
from .encoder import Encoder
from .finetune import LOGIT_SCALE, calibrate_and_save, lora_meta
from .memory import add_memory_option, attach_memory
from .train import DEFAULT_HEADS, HeadPlan, plan_heads
from .train import build_parser as train_parser
from .weights import Head, default_weights_dir, head_names, load_head

__all__ = ["build_parser", "main", "plan_again", "read_runs", "split_args"]

#: What must be equal in every run's meta.json for an average to make sense.
_SAME_META = ("pooling", "normalize", "max_length")
_SAME_TRAINING = ("split", "seed", "test_per_class", "val_per_class")


class AverageError(ValueError):
    """The runs cannot be averaged; the message says why."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `loraroute model average`."""
    p = argparse.ArgumentParser(
        prog="loraroute model average",
        description="Average the weights of several `loraroute model train` runs (same data "
        "and split), recalibrate on the validation rows and evaluate on the test rows.",
    )
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="weights folder of a run")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="weights folder to write (default: the committed services/classifier/model/weights)",
    )
    p.add_argument(
        "--data",
        action="append",
        type=Path,
        default=None,
        metavar="FILE.jsonl",
        help="the labelled files the runs were trained on, when they were not the default "
        "data; repeat for several files",
    )
    add_memory_option(p)
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)"
    )
    return p


def read_runs(runs: Sequence[Path]) -> dict[str, list[Head]]:
    """Each head name -> its head in every run, after checking that the runs fit together."""
    if len(runs) < 2:
        raise AverageError("averaging needs at least two runs")
    names = [head_names(r) for r in runs]
    for run, found in zip(runs, names, strict=True):
        if not found:
            raise AverageError(f"{run}: no heads (each needs labels.json, head.npz, meta.json)")
        if found != names[0]:
            raise AverageError(f"{run}: heads {found} differ from {runs[0]}'s {names[0]}")
    heads = {name: [load_head(r / name) for r in runs] for name in names[0]}
    first = heads[names[0][0]][0]
    for name, per_run in heads.items():
        for run, head in zip(runs, per_run, strict=True):
            where = f"{run / name}"
            if head.lora_dir is None:
                raise AverageError(f"{where}: no encoder adapter; only LoRA runs are averaged")
            if head.labels != per_run[0].labels:
                raise AverageError(f"{where}: labels differ from {runs[0] / name}")
            for key in _SAME_META:
                if head.meta.get(key) != first.meta.get(key):
                    raise AverageError(f"{where}: {key} differs from {runs[0] / names[0][0]}")
            for key in _SAME_TRAINING:
                if _training(head).get(key, 0) != _training(first).get(key, 0):
                    raise AverageError(
                        f"{where}: training.{key} differs from {runs[0] / names[0][0]}; "
                        "runs must share one split"
                    )
            if head.meta.get("data", {}).get("sources") != first.meta.get("data", {}).get(
                "sources"
            ):
                raise AverageError(f"{where}: trained on other data than {runs[0] / names[0][0]}")
    return heads


def _training(head: Head) -> dict[str, Any]:
    training = head.meta.get("training", {})
    return training if isinstance(training, dict) else {}


def split_args(heads: dict[str, list[Head]], data: list[Path] | None) -> argparse.Namespace:
    """`loraroute model train` arguments that carve the same split as the runs did."""
    first = next(iter(heads.values()))[0]
    training = _training(first)
    user_data = first.meta.get("data", {}).get("sources") == "user-supplied files"
    if user_data and not data:
        raise AverageError("the runs were trained on user-supplied files: name them with --data")
    argv = [
        "--split", str(training.get("split", "balanced")),
        "--seed", str(training.get("seed", 0)),
        "--test-per-class", str(training.get("test_per_class", 0)),
        "--val-per-class", str(training.get("val_per_class", 0)),
        "--max-length", str(first.max_length),
    ]  # fmt: skip
    if not first.normalize:
        argv.append("--no-normalize")
    borrowed = any(
        f.get("borrowed_by_subject")
        for per_run in heads.values()
        for f in per_run[0].meta.get("data", {}).get("files", [])
    )
    if not borrowed:
        argv.append("--no-borrow-subjects")
    for path in data or []:
        argv += ["--data", str(path)]
    if data or set(heads) != set(DEFAULT_HEADS):
        if len(heads) != 1:
            raise AverageError(
                f"runs with heads {sorted(heads)}: only the default heads or a single head "
                "can be split again"
            )
        argv += ["--head", next(iter(heads))]
    return train_parser().parse_args(argv)


def plan_again(
    heads: dict[str, list[Head]], data: list[Path] | None, runs: Sequence[Path]
) -> tuple[argparse.Namespace, list[HeadPlan]]:
    """The split the runs in `runs` (their heads: `heads`) were trained on, carved again.

    Raises `AverageError` when the data has no rows for a head or other row counts than the
    runs recorded, and what `split_args` and `plan_heads` raise.
    """
    targs = split_args(heads, data)
    plans = [p for p in plan_heads(targs) if p.name in heads]
    missing = sorted(set(heads) - {p.name for p in plans})
    if missing:
        raise AverageError(f"no data for heads {missing}")
    _check_rows(plans, heads, runs)
    return targs, plans


def _check_rows(plans: list[HeadPlan], heads: dict[str, list[Head]], runs: Sequence[Path]) -> None:
    """Refuse runs whose recorded row counts differ from the split carved now."""
    for plan in plans:
        now = [(f.name, len(f.train), len(f.val), len(f.test)) for f in plan.files]
        for run, head in zip(runs, heads[plan.name], strict=True):
            files = head.meta.get("data", {}).get("files", [])
            then = [(f.get("file"), f.get("train"), f.get("val"), f.get("test")) for f in files]
            if then != now:
                raise AverageError(
                    f"{run / plan.name}: trained on other rows than the data gives now "
                    f"(file, train, val, test: {then} in the run, {now} here); average runs "
                    "of the same data and split"
                )


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
        training = _training(head)
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
        training = _training(head)
        summary = {k: training[k] for k in keep if k in training}
        summary["lora_r"] = (head.meta.get("encoder_lora") or {}).get("r")
        summary["val_balanced_accuracy"] = {
            name: _training(per_run[i]).get("val_balanced_accuracy")
            for name, per_run in heads.items()
        }
        summaries.append(summary)
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    """Run `loraroute model average`; return 0 on success, 2 when the runs cannot be averaged."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        heads = read_runs(args.runs)
        targs, plans = plan_again(heads, args.data, args.runs)
    except (AverageError, DataError, FileNotFoundError, ValueError) as exc:
        print(f"loraroute model average: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    out = args.out or default_weights_dir()
    enc = Encoder(max_length=targs.max_length, normalize=targs.normalize)
    lora = _average_adapter(enc, heads)
    scale = LOGIT_SCALE if targs.normalize else 1.0
    layers = [_average_head(heads[p.name], scale) for p in plans]
    note = (
        f"exact average of {len(args.runs)} runs' adapters (ranks concatenated); every head "
        "folder holds an identical copy"
    )
    calibrate_and_save(
        plans,
        enc,
        layers,
        scale,
        targs,
        out,
        lora_meta(plans, lora["r"], lora["alpha"], note),
        {"averaged_runs": _run_summaries(heads)},
    )
    if args.memory:
        for plan in plans:
            attach_memory(plan, enc, out / plan.name, targs.seed)
    print(f"done in {time.monotonic() - started:.0f} s; weights in {out}", file=sys.stderr)
    return 0
