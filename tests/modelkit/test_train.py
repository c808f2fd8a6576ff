"""modelkit/train.py: training runs on a few dozen rows written into tmp."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from modelkit.data import DataError, load_jsonl
from modelkit.encoder import Encoder
from modelkit.heads import ADAPTER_DIR, load_head
from modelkit.options import OptionsError, TrainOptions
from modelkit.plan import split_file
from modelkit.train import train
from tests.modelkit.toydata import write_data


def _options(data: Path, out: Path, **kwargs: object) -> TrainOptions:
    base = TrainOptions(data=(data,), head="mine", out=out, threads=1)
    return msgspec.structs.replace(base, **kwargs)


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the labels present in `y`, computed here independently of `scores`."""
    return float(np.mean([(pred[y == label] == label).mean() for label in np.unique(y)]))


def test_linear_head_output_format_and_its_figures(tmp_path: Path) -> None:
    data = write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    assert train(_options(data, out, lora=False, typo_copies=0)) == out
    head = load_head(out / "mine")
    assert head.labels == ("general", "medical", "technical")  # sorted for a custom head
    assert head.weight.shape == (3, 384)
    assert head.weight.dtype == np.float32 and head.bias.shape == (3,)
    assert head.lora_dir is None
    meta = head.meta
    assert meta["pooling"] == "mean" and meta["normalize"] is True and meta["max_length"] == 128
    assert meta["training"]["mode"] == "linear-probe"
    assert meta["training"]["temperature_folded"] is True
    assert meta["data"]["sources"] == "user-supplied files"
    figures = meta["evaluation"]["mine.jsonl"]
    assert figures["clean"]["n"] == 3 * 2  # a fifth of 12 rows per label, held out
    # The three topics are far apart: the head with its memory gets every held-out row right.
    assert figures["clean"]["balanced_accuracy"] == 1.0
    # The head's own figure, recomputed from the saved weights on the held-out rows.
    _, _, test = split_file(load_jsonl(data), "balanced", 0)
    x = Encoder().embed([e.text for e in test])
    pred = (x @ head.weight.T + head.bias).argmax(axis=1)
    y = np.asarray([head.labels.index(e.label) for e in test])
    head_only = meta["memory"]["head_only_evaluation"]["mine.jsonl"]["clean"]
    assert head_only["balanced_accuracy"] == pytest.approx(_balanced_accuracy(y, pred), abs=1e-4)
    assert head_only["balanced_accuracy"] >= 2 / 3  # a linear probe separates most of them
    # The memory holds every training row, and the head's own figures stay on record.
    assert head.memory is not None and len(head.memory.labels) == meta["data"]["files"][0]["train"]
    assert meta["memory"]["k"] == head.memory.k <= len(head.memory.labels)


def test_default_head_keeps_its_label_order(tmp_path: Path) -> None:
    data = write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    train(_options(data, out, head="domain", lora=False, typo_copies=0, memory=False))
    head = load_head(out / "domain")
    assert head.labels == ("technical", "medical", "legal", "general")
    assert head.memory is None and "memory" not in head.meta


def test_bad_data_and_options_that_do_not_go_together_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: field 'label'"):
        train(_options(bad, tmp_path / "w", lora=False))
    with pytest.raises(OptionsError, match="--no-normalize needs --no-memory"):
        train(_options(bad, tmp_path / "w", lora=False, normalize=False))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"consistency": -1.0}, "--consistency must not be negative"),
        ({"consistency": 1.0, "lora": False}, "--consistency needs LoRA training"),
        ({"consistency": 1.0, "typo_prob": 0.0}, "--consistency needs typo'd texts"),
        ({"mask_missing_labels": True, "lora": False}, "--mask-missing-labels needs LoRA"),
        ({"crop_prob": 1.5}, "--crop-prob must be between 0 and 1"),
        ({"crop_prob": 0.5, "lora": False}, "--crop-prob needs LoRA training"),
        ({"probe_init": True, "lora": False}, "--probe-init needs LoRA training"),
    ],
)
def test_settings_that_do_nothing_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        msgspec.structs.replace(TrainOptions(), **changes).check()


@pytest.mark.slow
def test_lora_run_writes_a_portable_adapter(tmp_path: Path) -> None:
    data = write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    train(_options(data, out, epochs=1, batch_size=8))
    head = load_head(out / "mine")
    assert head.lora_dir == out / "mine" / ADAPTER_DIR
    config = json.loads((head.lora_dir / "adapter_config.json").read_text(encoding="utf-8"))
    # No local path of the training machine may end up in committed files.
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert head.meta["training"]["mode"] == "lora"
    assert head.meta["encoder_lora"]["shared_by"] == ["mine"]
    assert head.memory is not None  # embedded with the trained encoder, after the last epoch


def test_run_seed_changes_the_run_but_not_the_split(tmp_path: Path) -> None:
    data = write_data(tmp_path / "mine.jsonl")
    heads = []
    for run_seed in (0, 1):
        out = tmp_path / f"run{run_seed}"
        train(_options(data, out, lora=False, run_seed=run_seed))
        heads.append(load_head(out / "mine"))
    a, b = heads
    assert a.meta["data"] == b.meta["data"]  # the same train, validation and test rows
    assert a.meta["evaluation"]["mine.jsonl"]["clean"]["n"] == 3 * 2
    assert (a.meta["training"]["run_seed"], b.meta["training"]["run_seed"]) == (0, 1)
    assert not np.array_equal(a.weight, b.weight)  # other typo'd copies were trained on


def test_a_run_without_a_run_seed_records_its_seed(tmp_path: Path) -> None:
    data = write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    train(_options(data, out, lora=False, seed=3, typo_copies=0, memory=False))
    assert load_head(out / "mine").meta["training"]["run_seed"] == 3


@pytest.mark.slow
def test_consistency_crop_and_probe_run_records_its_settings(tmp_path: Path) -> None:
    data = write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    options = _options(data, out, epochs=1, batch_size=8, typo_prob=1.0, consistency=1.0)
    train(msgspec.structs.replace(options, crop_prob=0.5, probe_init=True))
    head = load_head(out / "mine")
    assert head.meta["training"]["consistency_weight"] == 1.0
    assert head.meta["training"]["crop_prob"] == 0.5
    assert head.meta["training"]["probe_init"] is True
    assert head.lora_dir is not None


@pytest.mark.slow
def test_masked_run_trains_a_file_without_a_label_and_records_it(tmp_path: Path) -> None:
    full = write_data(tmp_path / "full.jsonl")
    partial = tmp_path / "partial.jsonl"  # no `general` rows
    partial.write_text(
        "".join(line + "\n" for line in full.read_text().splitlines() if '"general"' not in line)
    )
    out = tmp_path / "weights"
    options = _options(full, out, epochs=1, batch_size=8, mask_missing_labels=True)
    # The consistency term compares distributions over the file's labels only.
    train(msgspec.structs.replace(options, data=(full, partial), consistency=1.0))
    head = load_head(out / "mine")
    assert head.meta["training"]["mask_missing_labels"] is True
    assert np.isfinite(head.weight).all() and np.isfinite(head.bias).all()
    assert head.lora_dir is not None
