"""`loraroute model average` on two small LoRA runs trained here from a few dozen rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.classifier.model import average, train
from modelkit.export import load_encoder
from modelkit.finetune import LORA_TARGETS
from modelkit.heads import load_head, save_head
from tests.modelkit.test_train import _write_data

pytestmark = pytest.mark.slow


def _train(data: Path, out: Path, *extra: str) -> Path:
    argv = ["--data", str(data), "--head", "mine", "--batch-size", "8", "--threads", "1"]
    assert train.main([*argv, "--out", str(out), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data file, run with 1 epoch, run with 2 epochs, another row cap and run seed)."""
    root = tmp_path_factory.mktemp("runs")
    data = _write_data(root / "mine.jsonl")
    one = _train(data, root / "one", "--epochs", "1")
    two = _train(data, root / "two", "--epochs", "2", "--max-per-class", "6", "--run-seed", "1")
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
    assert average.main([str(one), str(two), "--data", str(data), "--out", str(out)]) == 0
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
    assert set(training["averaged_runs"][0]["val_balanced_accuracy"]) == {"mine"}
    assert head.meta["evaluation"]["mine.jsonl"]["clean"]["n"] == 3 * 2
    assert head.meta["data"] == load_head(one / "mine").meta["data"]
    # The memory is embedded last, from the averaged encoder's view of every training row.
    assert head.memory is not None
    assert len(head.memory.labels) == head.meta["data"]["files"][0]["train"]


def test_a_run_records_its_temperature_unrounded(tmp_path: Path) -> None:
    # Averaging unfolds each run's head with the temperature in its meta.json; a rounded one
    # (4 places) put a small temperature's head off by up to 1 %.
    plan = train.HeadPlan("mine", ["a", "b"])
    args = train.build_parser().parse_args(["--data", "mine.jsonl", "--head", "mine"])
    meta = train._meta(plan, args, 0.004871234567, {}, None, {})
    save_head(tmp_path / "mine", plan.labels, np.eye(2, 3), np.zeros(2), meta)
    assert load_head(tmp_path / "mine").meta["training"]["temperature"] == 0.004871234567


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert average.main(argv) == 2
    return capsys.readouterr().err


def test_one_run_is_refused(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, one, _ = runs
    assert "at least two runs" in _refused([str(one), "--data", str(data)], capsys)


def test_runs_of_user_files_need_the_files(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, one, two = runs
    err = _refused([str(one), str(two), "--out", str(tmp_path / "x")], capsys)
    assert "name them with --data" in err
    assert not (tmp_path / "x").exists()


def test_runs_of_other_rows_are_refused(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The same file name with more rows: the runs' test rows would not be held out.
    _, one, two = runs
    bigger = _write_data(tmp_path / "mine.jsonl", per_label=20)
    err = _refused([str(one), str(two), "--data", str(bigger)], capsys)
    assert f"{one / 'mine'}: trained on other rows than the data gives now" in err


def test_runs_of_another_split_are_refused(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data, one, two = runs
    other = tmp_path / "other"
    shutil.copytree(two, other)
    meta_path = other / "mine" / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["training"]["seed"] = 1
    meta_path.write_text(json.dumps(meta), encoding="utf-8")
    err = _refused([str(one), str(other), "--data", str(data)], capsys)
    assert "training.seed differs" in err and "runs must share one split" in err


def test_runs_with_other_labels_or_no_adapter_are_refused(
    runs: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data, one, two = runs
    relabelled = tmp_path / "relabelled"
    shutil.copytree(two, relabelled)
    labels = relabelled / "mine" / "labels.json"
    labels.write_text(json.dumps(["general", "technical", "medical"]), encoding="utf-8")
    assert "labels differ" in _refused([str(one), str(relabelled), "--data", str(data)], capsys)

    linear = tmp_path / "linear"
    shutil.copytree(two, linear)
    shutil.rmtree(linear / "mine" / "encoder_lora")
    assert "only LoRA runs are averaged" in _refused(
        [str(one), str(linear), "--data", str(data)], capsys
    )
