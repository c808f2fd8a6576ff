"""services/classifier/model_dir.py: the upstream layout, its search order and clear errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.classifier.errors import ModelDirError
from services.classifier.model_dir import find_onnx, load_model_dir

LABELS = ["technical", "medical", "legal", "general"]


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _model_dir(root: Path, labels: list[str] = LABELS, **config: Any) -> Path:
    """A directory with every file present (the ONNX file's content is not read here)."""
    d = root / "m"
    (d / "onnx").mkdir(parents=True)
    (d / "onnx" / "model_int8.onnx").write_bytes(b"")
    (d / "tokenizer.json").write_text("{}")
    _write(
        d / "config.json",
        {"id2label": {str(i): x for i, x in enumerate(labels)}, "num_labels": len(labels)} | config,
    )
    _write(
        d / "category_mapping.json",
        {
            "category_to_idx": {x: i for i, x in enumerate(labels)},
            "idx_to_category": {str(i): x for i, x in enumerate(labels)},
        },
    )
    return d


def test_reads_a_complete_directory(tmp_path: Path) -> None:
    d = _model_dir(tmp_path, max_position_embeddings=512, max_seq_length=128)
    model = load_model_dir(d)
    assert model.labels == tuple(LABELS)
    assert model.onnx_path == d / "onnx" / "model_int8.onnx"
    assert model.tokenizer_path == d / "tokenizer.json"
    assert model.max_length == 128


def test_max_length_falls_back_to_position_embeddings_capped_at_512(tmp_path: Path) -> None:
    assert load_model_dir(_model_dir(tmp_path, max_position_embeddings=8192)).max_length == 512
    other = _model_dir(tmp_path / "b", max_position_embeddings=256)
    assert load_model_dir(other).max_length == 256


def test_onnx_search_order_follows_upstream(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    (d / "onnx" / "model.onnx").write_bytes(b"")
    assert find_onnx(d) == d / "onnx" / "model.onnx"  # a preferred name beats any other
    (d / "classifier.onnx").write_bytes(b"")
    assert find_onnx(d) == d / "classifier.onnx"  # the directory before onnx/
    (d / "model.onnx").write_bytes(b"")
    assert find_onnx(d) == d / "model.onnx"  # model.onnx before classifier.onnx
    (d / "onnx" / "model_sdpa_fp16.onnx").write_bytes(b"")
    assert find_onnx(d) == d / "model.onnx"  # the directory is searched fully first
    assert load_model_dir(d, onnx_file="onnx/model_int8.onnx").onnx_path.name == "model_int8.onnx"


@pytest.mark.parametrize(
    ("remove", "message"),
    [
        ("tokenizer.json", r"tokenizer\.json is missing"),
        ("config.json", r"config\.json: file is missing"),
        ("category_mapping.json", r"category_mapping\.json: file is missing"),
        ("onnx/model_int8.onnx", r"no ONNX file"),
    ],
)
def test_a_missing_file_is_named(tmp_path: Path, remove: str, message: str) -> None:
    d = _model_dir(tmp_path)
    (d / remove).unlink()
    with pytest.raises(ModelDirError, match=message):
        load_model_dir(d)


def test_missing_directory_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="loraroute model build"):
        load_model_dir(tmp_path / "absent")
    with pytest.raises(ModelDirError, match=r"nope\.onnx: ONNX file is missing"):
        load_model_dir(_model_dir(tmp_path), onnx_file="nope.onnx")


def test_mapping_that_disagrees_with_id2label_is_refused(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    _write(
        d / "category_mapping.json",
        {"idx_to_category": {"0": "medical", "1": "technical", "2": "legal", "3": "general"}},
    )
    with pytest.raises(ModelDirError, match=r"idx_to_category\[0\] is 'medical'"):
        load_model_dir(d)
    _write(d / "category_mapping.json", {"idx_to_category": {"0": "technical"}})
    with pytest.raises(ModelDirError, match="1 categories, but"):
        load_model_dir(d)


def test_generic_label_names_take_the_mapping_names(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    _write(d / "config.json", {"id2label": {str(i): f"LABEL_{i}" for i in range(4)}})
    assert load_model_dir(d).labels == tuple(LABELS)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "id2label is missing"),
        ({"id2label": {"0": "a", "2": "b"}}, r"indices must be 0\.\.1"),
        ({"id2label": {"x": "a"}}, "is not an integer"),
        ({"id2label": {"0": "a", "1": "a"}}, "names a label twice"),
        ({"id2label": {"0": "a"}, "num_labels": 3}, "num_labels is 3"),
        ({"id2label": {"0": "a"}, "max_seq_length": "long"}, "max_seq_length must be"),
    ],
)
def test_bad_config_json(tmp_path: Path, config: dict[str, Any], message: str) -> None:
    d = _model_dir(tmp_path, labels=["a"])
    _write(d / "config.json", config)
    with pytest.raises(ModelDirError, match=message):
        load_model_dir(d)


def test_unreadable_json_is_named(tmp_path: Path) -> None:
    d = _model_dir(tmp_path)
    (d / "config.json").write_text("{oops")
    with pytest.raises(ModelDirError, match=r"config\.json: not readable JSON"):
        load_model_dir(d)
