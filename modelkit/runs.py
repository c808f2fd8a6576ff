"""A saved training run read back: its options from meta.json, and its split carved again.

`loraroute model average` and `loraroute model memory` work on heads a run wrote; both need the
training, validation and test rows that run used, which `plan_again` rebuilds from the run's
recorded `TrainOptions` and checks against the row counts the run recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from modelkit.heads import Head
from modelkit.options import TrainOptions
from modelkit.plan import DEFAULT_HEADS, HeadPlan, plan_heads

__all__ = ["RunError", "plan_again", "saved_options", "trained_together", "training_meta"]


class RunError(ValueError):
    """Runs that cannot be used together or with this data; the message says why."""


def training_meta(head: Head) -> dict[str, Any]:
    """The `training` entry of `head`'s meta.json ({} when absent)."""
    training = head.meta.get("training", {})
    return training if isinstance(training, dict) else {}


def trained_together(heads: dict[str, list[Head]]) -> list[dict[str, list[Head]]]:
    """`heads` grouped by the run that trained them: heads sharing one encoder adapter
    (`encoder_lora.shared_by` in meta.json) were split and trained together and are carved
    again together; a head trained alone (or without an adapter) forms a group of its own.
    The default weights hold such a mix when one head was retrained on new data."""
    groups: list[dict[str, list[Head]]] = []
    placed: set[str] = set()
    for name, per_run in heads.items():
        if name in placed:
            continue
        lora = per_run[0].meta.get("encoder_lora") or {}
        together = [n for n in lora.get("shared_by", [name]) if n in heads] or [name]
        if name not in together:
            together.append(name)
        groups.append({n: heads[n] for n in together if n not in placed})
        placed.update(together)
    return groups


def saved_options(heads: dict[str, list[Head]], data: Sequence[Path]) -> TrainOptions:
    """The options the runs of `heads` (head name -> that head in every run) were trained with.

    Read from the first run's meta.json: its `training` entry, `max_length` and `normalize`;
    whether heads borrowed rows by subject from the recorded files; the head name when the
    runs are not the default heads. `data` names the files of runs trained on user-supplied
    files (their paths are not recorded). Raises `RunError` when they are needed and missing,
    or when the recorded options are malformed.
    """
    first = next(iter(heads.values()))[0]
    user_data = first.meta.get("data", {}).get("sources") == "user-supplied files"
    if user_data and not data:
        raise RunError("the runs were trained on user-supplied files: name them with --data")
    borrowed = any(
        f.get("borrowed_by_subject")
        for per_run in heads.values()
        for f in per_run[0].meta.get("data", {}).get("files", [])
    )
    head = None
    # The heads carved together are those the run trained together (the adapter's
    # `shared_by`), which may be more than the ones asked for (see `trained_together`).
    trained = set((first.meta.get("encoder_lora") or {}).get("shared_by") or heads)
    if data or trained != set(DEFAULT_HEADS):
        if len(trained) != 1:
            raise RunError(
                f"runs with heads {sorted(trained)}: only the default heads or a single head "
                "can be split again"
            )
        head = next(iter(trained))
    recorded = training_meta(first) | {
        "max_length": first.max_length,
        "normalize": first.normalize,
    }
    try:
        options = msgspec.convert(recorded, TrainOptions)
    except msgspec.ValidationError as exc:
        raise RunError(f"{first.path / 'meta.json'}: training options: {exc}") from exc
    return msgspec.structs.replace(options, data=tuple(data), head=head, borrow_subjects=borrowed)


def plan_again(
    heads: dict[str, list[Head]], data: Sequence[Path], runs: Sequence[Path]
) -> tuple[TrainOptions, list[HeadPlan]]:
    """The options and the split the runs in `runs` (their heads: `heads`) were trained on.

    Raises `RunError` when the data has no rows for a head or other row counts than the
    runs recorded, and what `saved_options` and `plan.plan_heads` raise.
    """
    options = saved_options(heads, data)
    plans = [p for p in plan_heads(options) if p.name in heads]
    missing = sorted(set(heads) - {p.name for p in plans})
    if missing:
        raise RunError(f"no data for heads {missing}")
    _check_rows(plans, heads, runs)
    return options, plans


def _check_rows(plans: list[HeadPlan], heads: dict[str, list[Head]], runs: Sequence[Path]) -> None:
    """Refuse runs whose recorded row counts differ from the split carved now."""
    for plan in plans:
        now = [(f.name, len(f.train), len(f.val), len(f.test)) for f in plan.files]
        for run, head in zip(runs, heads[plan.name], strict=True):
            files = head.meta.get("data", {}).get("files", [])
            then = [(f.get("file"), f.get("train"), f.get("val"), f.get("test")) for f in files]
            if then != now:
                raise RunError(
                    f"{run / plan.name}: trained on other rows than the data gives now "
                    f"(file, train, val, test: {then} in the run, {now} here); average runs "
                    "of the same data and split"
                )
