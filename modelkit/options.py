"""Typed options of a training run: what carves the split (`SplitOptions`) and what trains.

`loraroute model train` builds a `TrainOptions` from its command line; `loraroute model
average` and `memory` read one back from a run's meta.json (`modelkit.runs.saved_options`), so
they carve the split again exactly as the run did. Field names are the meta.json keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

__all__ = ["DEFAULT_MAX_LENGTH", "OptionsError", "SplitOptions", "TrainOptions"]

#: Tokens kept per text. Chat queries are 8-40 tokens; longer exam stems keep their first
#: 128 tokens, which name the subject, while training and inference stay fast on a CPU.
DEFAULT_MAX_LENGTH = 128


class OptionsError(ValueError):
    """Options that do not go together; the message names them as command-line flags."""


class SplitOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Which heads train on which files, and how each file is cut (`modelkit.plan`).

    `data` empty means the default heads on the project's data folder; `head` names the
    head (with `data`: any name, default `domain`; without: `domain`, `mmlu-pro` or None
    for all). `split` picks a class-balanced test part or whole held-out subjects;
    `test_per_class` / `val_per_class` 0 mean the defaults of `plan.split_file`.
    """

    data: tuple[Path, ...] = ()
    head: str | None = None
    split: Literal["balanced", "subject"] = "balanced"
    seed: int = 0
    test_per_class: int = 0
    val_per_class: int = 0
    borrow_subjects: bool = True


class TrainOptions(SplitOptions, frozen=True, kw_only=True):
    """Everything `modelkit.train.train` needs; see `loraroute model train --help` for each.

    `run_seed` None means `seed` (see `seed_of_run`). `out` None means the committed weights.
    """

    out: Path | None = None
    lora: bool = True
    epochs: int = 3
    lora_r: int = 8
    lora_alpha: int = 16
    lr: float = 8e-4
    batch_size: int = 32
    max_per_class: int = 500
    typo_prob: float = 0.5
    crop_prob: float = 0.0
    # meta.json records these two as the loss weights they are.
    consistency: float = msgspec.field(default=0.0, name="consistency_weight")
    mask_missing_labels: bool = False
    probe_init: bool = False
    aux_subject: float = msgspec.field(default=0.5, name="aux_subject_weight")
    memory: bool = True
    typo_copies: int = 1
    l2: float = 1e-4
    max_length: int = DEFAULT_MAX_LENGTH
    normalize: bool = True
    balance: bool = True
    cache_dir: Path | None = None
    run_seed: int | None = None
    threads: int = 0

    @property
    def seed_of_run(self) -> int:
        """The seed of init, row sampling and typos: `run_seed`, else `seed`."""
        return self.seed if self.run_seed is None else self.run_seed

    def check(self) -> None:
        """Raise `OptionsError` when two options do not go together."""
        lora_only = {
            "--crop-prob": self.crop_prob > 0,
            "--mask-missing-labels": self.mask_missing_labels,
            "--probe-init": self.probe_init,
        }
        if self.consistency < 0:
            raise OptionsError("--consistency must not be negative")
        if self.consistency > 0 and not self.lora:
            raise OptionsError("--consistency needs LoRA training (it is a loss on the encoder)")
        if self.consistency > 0 and self.typo_prob <= 0:
            raise OptionsError("--consistency needs typo'd texts (--typo-prob above 0)")
        if not 0 <= self.crop_prob <= 1:
            raise OptionsError("--crop-prob must be between 0 and 1")
        for flag, used in lora_only.items():
            if used and not self.lora:
                raise OptionsError(f"{flag} needs LoRA training")
        if self.memory and not self.normalize:
            raise OptionsError(
                "--no-normalize needs --no-memory (the memory compares unit-length vectors)"
            )
