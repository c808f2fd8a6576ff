"""End-to-end tests of `loraroute model train` on a few dozen rows written into tmp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from services.classifier.model.train import main
from services.classifier.model.weights import ADAPTER_DIR, load_head

TOPICS = {
    "technical": ["SQL join {i} rows", "python list index error {i}", "docker container port {i}"],
    "medical": [
        "fever and headache for {i} days",
        "dose of ibuprofen {i} mg",
        "rash after vaccine {i}",
    ],
    "general": ["weather tomorrow in city {i}", "set an alarm for {i} am", "recipe with {i} eggs"],
}


def _write_data(path: Path, per_label: int = 12) -> Path:
    lines = []
    for label, templates in TOPICS.items():
        for i in range(per_label):
            text = templates[i % len(templates)].format(i=i)
            lines.append(json.dumps({"text": text, "label": label, "subject": f"{label}-{i % 3}"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_linear_head_output_format(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    rc = main(
        [
            "--data",
            str(data),
            "--head",
            "mine",
            "--no-lora",
            "--epochs",
            "1",
            "--out",
            str(out),
            "--typo-copies",
            "0",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    head = load_head(out / "mine")
    assert head.labels == ("general", "medical", "technical")  # sorted for a custom head
    assert head.weight.shape == (3, 384)
    assert head.weight.dtype == np.float32 and head.bias.shape == (3,)
    assert head.lora_dir is None
    meta = head.meta
    assert meta["pooling"] == "mean" and meta["normalize"] is True and meta["max_length"] == 128
    assert meta["training"]["mode"] == "linear-probe"
    assert meta["training"]["temperature_folded"] is True
    figures = meta["evaluation"]["mine.jsonl"]
    assert figures["clean"]["n"] == 3 * 2  # a fifth of 12 rows per label, held out
    assert 0.0 <= figures["clean"]["balanced_accuracy"] <= 1.0
    assert meta["data"]["sources"] == "user-supplied files"


def test_default_head_keeps_its_label_order(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    assert (
        main(
            [
                "--data",
                str(data),
                "--head",
                "domain",
                "--no-lora",
                "--out",
                str(out),
                "--typo-copies",
                "0",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert load_head(out / "domain").labels == ("technical", "medical", "legal", "general")


def test_bad_data_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n', encoding="utf-8")
    assert main(["--data", str(bad), "--no-lora", "--out", str(tmp_path / "w")]) == 2
    assert "bad.jsonl:1: field 'label'" in capsys.readouterr().err


@pytest.mark.slow
def test_lora_run_writes_a_portable_adapter(tmp_path: Path) -> None:
    data = _write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    rc = main(
        [
            "--data",
            str(data),
            "--head",
            "mine",
            "--lora",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(out),
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    head = load_head(out / "mine")
    assert head.lora_dir == out / "mine" / ADAPTER_DIR
    config = json.loads((head.lora_dir / "adapter_config.json").read_text(encoding="utf-8"))
    # No local path of the training machine may end up in committed files.
    assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert head.meta["training"]["mode"] == "lora"
    assert head.meta["encoder_lora"]["shared_by"] == ["mine"]
