"""Reading a classifier model directory in the upstream router's layout.

A directory holds::

    model.onnx | onnx/*.onnx     the graph: int64 input_ids, attention_mask (+ token_type_ids) -> logits
    tokenizer.json               a `tokenizers` file
    config.json                  id2label (index -> label), max_position_embeddings, ...
    category_mapping.json        {"category_to_idx": {...}, "idx_to_category": {"0": ..., ...}}

The ONNX file is searched as upstream does: in the directory, then in `onnx/`, the names
`model_sdpa_fp16.onnx`, `model.onnx`, `classifier.onnx`, `model_optimized.onnx`, then any
other `*.onnx` in name order. Models built by `loraroute model build` keep their variants
as `onnx/model_fp32.onnx` and `onnx/model_int8.onnx` and copy the chosen one to `model.onnx`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.classifier.errors import ModelDirError

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "ONNX_NAMES",
    "ModelDir",
    "find_onnx",
    "load_model_dir",
]

#: Upstream's preferred file names, in search order, tried in `<dir>` then `<dir>/onnx`.
ONNX_NAMES = ("model_sdpa_fp16.onnx", "model.onnx", "classifier.onnx", "model_optimized.onnx")

#: Token window when config.json names none: upstream's classification window.
DEFAULT_MAX_LENGTH = 512

_GENERIC_LABEL = re.compile(r"LABEL_\d+")


@dataclass(frozen=True, slots=True)
class ModelDir:
    """A validated model directory.

    `labels[i]` is the label of logit `i`. `max_length` is the token window (special
    tokens included): config.json's `max_seq_length` when present (written by
    `loraroute model build`), else `max_position_embeddings` capped at 512.
    """

    path: Path
    onnx_path: Path
    tokenizer_path: Path
    labels: tuple[str, ...]
    max_length: int
    config: dict[str, Any]


def find_onnx(directory: Path) -> Path | None:
    """Return the ONNX file upstream would load from `directory`, or None when there is none."""
    for folder in (directory, directory / "onnx"):
        for name in ONNX_NAMES:
            if (folder / name).is_file():
                return folder / name
    for folder in (directory, directory / "onnx"):
        found = sorted(folder.glob("*.onnx")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def load_model_dir(
    path: str | Path,
    *,
    onnx_file: str | Path | None = None,
    category_mapping_path: str | Path | None = None,
) -> ModelDir:
    """Read and check the model directory at `path`.

    `onnx_file` picks a graph instead of the search (relative paths are taken inside the
    directory); `category_mapping_path` replaces `<dir>/category_mapping.json`.
    Raises `ModelDirError` naming the missing or inconsistent file.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ModelDirError(
            f"model directory {directory} does not exist; build the default model with "
            "`loraroute model build` (or `make model`)"
        )
    onnx_path = _onnx_path(directory, onnx_file)
    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelDirError(f"{directory}: tokenizer.json is missing")
    config_path = directory / "config.json"
    config = _read_json(config_path)
    id2label = _id2label(config, config_path)
    mapping_path = (
        Path(category_mapping_path)
        if category_mapping_path is not None
        else directory / "category_mapping.json"
    )
    idx_to_category = _idx_to_category(_read_json(mapping_path), mapping_path)
    labels = _reconcile(id2label, config_path, idx_to_category, mapping_path)
    return ModelDir(
        path=directory,
        onnx_path=onnx_path,
        tokenizer_path=tokenizer_path,
        labels=labels,
        max_length=_max_length(config, config_path),
        config=config,
    )


def _onnx_path(directory: Path, onnx_file: str | Path | None) -> Path:
    if onnx_file is not None:
        chosen = Path(onnx_file)
        chosen = chosen if chosen.is_absolute() else directory / chosen
        if not chosen.is_file():
            raise ModelDirError(f"{chosen}: ONNX file is missing")
        return chosen
    found = find_onnx(directory)
    if found is None:
        raise ModelDirError(f"{directory}: no ONNX file (looked for *.onnx in it and in onnx/)")
    return found


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelDirError(f"{path}: file is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelDirError(f"{path}: expected a JSON object")
    return data


def _indexed(raw: object, what: str, path: Path) -> list[str]:
    """Turn {"0": "a", "1": "b"} into ["a", "b"], insisting on indices 0..n-1."""
    if not isinstance(raw, dict) or not raw:
        raise ModelDirError(f"{path}: {what} must be a non-empty object of index -> name")
    by_index: dict[int, str] = {}
    for key, name in raw.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ModelDirError(f"{path}: {what} key {key!r} is not an integer") from None
        if not isinstance(name, str) or not name:
            raise ModelDirError(f"{path}: {what}[{key!r}] must be a non-empty string")
        by_index[index] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise ModelDirError(f"{path}: {what} indices must be 0..{len(by_index) - 1}")
    names = [by_index[i] for i in range(len(by_index))]
    if len(set(names)) != len(names):
        raise ModelDirError(f"{path}: {what} names a label twice")
    return names


def _id2label(config: dict[str, Any], path: Path) -> list[str]:
    if "id2label" not in config:
        raise ModelDirError(f"{path}: id2label is missing")
    labels = _indexed(config["id2label"], "id2label", path)
    num = config.get("num_labels")
    if num is not None and num != len(labels):
        raise ModelDirError(f"{path}: num_labels is {num} but id2label has {len(labels)} labels")
    return labels


def _idx_to_category(mapping: dict[str, Any], path: Path) -> list[str]:
    if "idx_to_category" not in mapping:
        raise ModelDirError(f"{path}: idx_to_category is missing")
    return _indexed(mapping["idx_to_category"], "idx_to_category", path)


def _reconcile(
    id2label: list[str], config_path: Path, idx_to_category: list[str], mapping_path: Path
) -> tuple[str, ...]:
    if len(id2label) != len(idx_to_category):
        raise ModelDirError(
            f"{mapping_path}: {len(idx_to_category)} categories, but {config_path} "
            f"has {len(id2label)} labels"
        )
    # Exports that never set label names leave transformers' LABEL_<i>; the mapping names them.
    if all(_GENERIC_LABEL.fullmatch(name) for name in id2label):
        return tuple(idx_to_category)
    if id2label != idx_to_category:
        diff = next(
            i for i, (a, b) in enumerate(zip(id2label, idx_to_category, strict=True)) if a != b
        )
        raise ModelDirError(
            f"{mapping_path}: idx_to_category[{diff}] is {idx_to_category[diff]!r} but "
            f"{config_path} id2label[{diff}] is {id2label[diff]!r}"
        )
    return tuple(id2label)


def _max_length(config: dict[str, Any], path: Path) -> int:
    value = config.get("max_seq_length")
    if value is None:
        value = min(
            int(config.get("max_position_embeddings", DEFAULT_MAX_LENGTH)), DEFAULT_MAX_LENGTH
        )
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise ModelDirError(f"{path}: max_seq_length must be an integer >= 2, got {value!r}")
    return value
