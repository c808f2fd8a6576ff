"""modelkit/average.py on two small LoRA runs trained here from a few dozen rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch

from modelkit.average import average
from modelkit.encoder import load_encoder
from modelkit.finetune import LORA_TARGETS
from modelkit.heads import load_head, save_head
from modelkit.options import TrainOptions
from modelkit.plan import HeadPlan, head_meta
from modelkit.runs import RunError
from modelkit.train import train
from tests.modelkit.toydata import write_data

pytestmark = pytest.mark.slow


def _train(data: Path, out: Path, **changes: object) -> Path:
    options = TrainOptions(data=(data,), head="mine", batch_size=8, threads=1, out=out)
    return train(msgspec.structs.replace(options, **changes))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data file, run with 1 epoch, run with 2 epochs, another row cap and run seed)."""
    root = tmp_path_factory.mktemp("runs")
    data = write_data(root / "mine.jsonl")
    one = _train(data, root / "one", epochs=1)
    two = _train(data, root / "two", epochs=2, max_per_class=6, run_seed=1)
    return data, one, two


def _state(lora_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_encoder(lora_dir).state_dict().items()}


def _unfolded(path: Path) -> tuple[np.ndarray, np.ndarray]:
    head = load_head(path)
    t = head.meta["training"]["temperature"]
    return head.weight.astype(np.float64) * t, head.bias.astype(np.float64) * t


def test_average_is_the_exact_mean_of_the_runs(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, one, two = runs
    out = tmp_path / "avg"
    assert average([one, two], data=[data], out=out) == out
    head = load_head(out / "mine")
    assert head.lora_dir is not None
    config = json.loads((head.lora_dir / "adapter_config.json").read_text(encoding="utf-8"))
    assert (config["r"], config["lora_alpha"]) == (16, 16)  # ranks concatenated
    assert config["target_modules"] == LORA_TARGETS  # the runs' one pattern, not joined twice
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"

    # The merged encoder is the mean of the two runs' merged encoders, as the build loads it.
    merged, a, b = (
        _state(head.lora_dir),
        _state(one / "mine" / "encoder_lora"),
        _state(two / "mine" / "encoder_lora"),
    )
    for key, value in merged.items():
        torch.testing.assert_close(value, (a[key] + b[key]) / 2, atol=1e-5, rtol=0)
    # The head is the mean of the runs' heads, each without its own temperature.
    w, bias = _unfolded(out / "mine")
    (w1, b1), (w2, b2) = _unfolded(one / "mine"), _unfolded(two / "mine")
    np.testing.assert_allclose(w, (w1 + w2) / 2, atol=1e-4)
    np.testing.assert_allclose(bias, (b1 + b2) / 2, atol=1e-4)

    training = head.meta["training"]
    assert [r["epochs_done"] for r in training["averaged_runs"]] == [1, 2]
    assert [r["max_per_class"] for r in training["averaged_runs"]] == [500, 6]
    assert [r["run_seed"] for r in training["averaged_runs"]] == [0, 1]
    assert training["run_seed"] is None  # the average is no single run
    assert set(training["averaged_runs"][0]["val_balanced_accuracy"]) == {"mine"}
    assert head.meta["evaluation"]["mine.jsonl"]["clean"]["n"] == 3 * 2
    assert head.meta["data"] == load_head(one / "mine").meta["data"]
    # The memory is embedded last, from the averaged encoder's view of every training row.
    assert head.memory is not None
    assert len(head.memory.labels) == head.meta["data"]["files"][0]["train"]


def test_a_run_records_its_temperature_unrounded(tmp_path: Path) -> None:
    # Averaging unfolds each run's head with the temperature in its meta.json; a rounded one
    # (4 places) put a small temperature's head off by up to 1 %.
    plan = HeadPlan("mine", ["a", "b"])
    options = TrainOptions(data=(Path("mine.jsonl"),), head="mine")
    meta = head_meta(plan, options, 0.004871234567, {}, None, {})
    save_head(tmp_path / "mine", plan.labels, np.eye(2, 3), np.zeros(2), meta)
    assert load_head(tmp_path / "mine").meta["training"]["temperature"] == 0.004871234567


def _refused(runs: list[Path], data: list[Path] | None = None, out: Path | None = None) -> str:
    with pytest.raises(RunError) as exc:
        average(runs, data=data or [], out=out)
    return str(exc.value)


def test_one_run_is_refused(runs: tuple[Path, Path, Path]) -> None:
    data, one, _ = runs
    assert "at least two runs" in _refused([one], [data])


def test_runs_of_user_files_need_the_files(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, one, two = runs
    err = _refused([one, two], out=tmp_path / "x")
    assert "name them with --data" in err
    assert not (tmp_path / "x").exists()


def test_runs_of_other_rows_are_refused(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    # The same file name with more rows: the runs' test rows would not be held out.
    _, one, two = runs
    bigger = write_data(tmp_path / "mine.jsonl", per_label=20)
    err = _refused([one, two], [bigger])
    assert f"{one / 'mine'}: trained on other rows than the data gives now" in err


def test_runs_of_another_split_are_refused(runs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, one, two = runs
    other = tmp_path / "other"
    shutil.copytree(two, other)
    meta_path = other / "mine" / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["training"]["seed"] = 1
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    err = _refused([one, other], [data])
    assert "training.seed differs" in err and "runs must share one split" in err


def test_runs_with_other_labels_or_no_adapter_are_refused(
    runs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, one, two = runs
    relabelled = tmp_path / "relabelled"
    shutil.copytree(two, relabelled)
    labels = relabelled / "mine" / "labels.json"
    labels.write_text(json.dumps(["general", "technical", "medical"]), encoding="utf-8")
    assert "labels differ" in _refused([one, relabelled], [data])

    linear = tmp_path / "linear"
    shutil.copytree(two, linear)
    shutil.rmtree(linear / "mine" / "encoder_lora")
    assert "only LoRA runs are averaged" in _refused([one, linear], [data])
