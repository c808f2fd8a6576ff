"""The committed classifier weights: one directory per head under `weights/<head-name>/`.

Format (written by `loraroute model train`, read by `loraroute model build`)::

    labels.json      ordered list of label strings (logit i is labels[i])
    head.npz         weight float32 [num_labels, hidden], bias float32 [num_labels]
                     (temperature calibration, if any, already folded in)
    meta.json        {"pooling": "mean", "normalize": bool, "max_length": int, ...}
                     plus free-form provenance: data sources and licences, scores
    encoder_lora/    optional: a peft adapter (save_pretrained of the MiniLM BertModel),
                     merged into the encoder at build time
    memory.npz       optional: the training rows' embeddings for a nearest-neighbour vote
                     mixed with the head (see `Memory`), folded into the graph at build time

This module needs only numpy and the standard library, so checking whether a build is
current never imports torch.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ADAPTER_DIR",
    "MEMORY_FILE",
    "POOLINGS",
    "WEIGHTS_DIR",
    "Head",
    "Memory",
    "default_weights_dir",
    "head_names",
    "load_head",
    "save_head",
    "save_memory",
]

#: Where the committed heads live (inside the package, so a wheel carries them).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: Name of the optional encoder adapter folder inside a head directory.
ADAPTER_DIR = "encoder_lora"

#: Name of the optional nearest-neighbour memory inside a head directory.
MEMORY_FILE = "memory.npz"

POOLINGS = ("mean",)

#: Stored vectors are unit-length embeddings times this, rounded to int8.
MEMORY_SCALE = 127.0


def default_weights_dir() -> Path:
    """The folder `loraroute model train` writes to and `loraroute model build` reads."""
    return WEIGHTS_DIR


@dataclass(frozen=True)
class Memory:
    """The training rows' embeddings and a rule that turns them into probabilities.

    For an input with unit-length embedding `x`, the `k` stored rows most similar to `x`
    (dot product) each vote for their label with `weights[i] * exp((s_i - s_max) / tau)`;
    the normalised votes are mixed with the head's probabilities as
    `(1 - mix) * head + mix * votes`, and the model's logits are `log(mixed) / temperature`.
    `vectors` are int8, the embedding times `MEMORY_SCALE`; `labels` index the head's labels;
    `weights` are the rows' training loss weights (each file its share, each label equal).
    """

    vectors: npt.NDArray[np.int8]
    labels: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float32]
    k: int
    tau: float
    mix: float
    temperature: float


@dataclass(frozen=True)
class Head:
    """A loaded head: `weight` [num_labels, hidden], `bias` [num_labels], in `labels` order."""

    path: Path
    labels: tuple[str, ...]
    weight: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    pooling: str
    normalize: bool
    max_length: int
    meta: dict[str, Any] = field(default_factory=dict)
    memory: Memory | None = None

    @property
    def lora_dir(self) -> Path | None:
        """The encoder adapter directory, when the head has one."""
        path = self.path / ADAPTER_DIR
        return path if (path / "adapter_config.json").is_file() else None


def head_names(weights_dir: Path = WEIGHTS_DIR) -> list[str]:
    """Names of the heads committed under `weights_dir` (directories with a labels.json)."""
    if not weights_dir.is_dir():
        return []
    return sorted(p.name for p in weights_dir.iterdir() if (p / "labels.json").is_file())


def load_head(path: Path) -> Head:
    """Read and check the head directory `path`.

    Raises `FileNotFoundError` when a required file is missing and `ValueError` when the
    files disagree (shapes, label count, unknown pooling), each naming the file.
    """
    for name in ("labels.json", "head.npz", "meta.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"{path / name} is missing; a head needs labels.json, head.npz and meta.json "
                "(written by `loraroute model train`)"
            )
    labels = json.loads((path / "labels.json").read_text(encoding="utf-8"))
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"{path / 'labels.json'}: expected a non-empty list of strings")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{path / 'labels.json'}: a label appears twice")
    arrays = _read_npz(path / "head.npz", ("weight", "bias"))
    weight = np.asarray(arrays["weight"], dtype=np.float32)
    bias = np.asarray(arrays["bias"], dtype=np.float32)
    if weight.ndim != 2 or weight.shape[0] != len(labels) or bias.shape != (len(labels),):
        raise ValueError(
            f"{path / 'head.npz'}: weight {list(weight.shape)} / bias {list(bias.shape)} do not "
            f"fit {len(labels)} labels (expected [num_labels, hidden] and [num_labels])"
        )
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ValueError(f"{path / 'head.npz'}: non-finite values")
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"{path / 'meta.json'}: expected a JSON object")
    pooling = meta.get("pooling", "mean")
    if pooling not in POOLINGS:
        raise ValueError(f"{path / 'meta.json'}: pooling {pooling!r} is not one of {POOLINGS}")
    normalize = meta.get("normalize")
    if not isinstance(normalize, bool):
        raise ValueError(f"{path / 'meta.json'}: 'normalize' must be true or false")
    # Required: the runtime must truncate where training did, and the encoder's own
    # setting (256) differs from what training uses.
    max_length = meta.get("max_length")
    if (
        not isinstance(max_length, int)
        or isinstance(max_length, bool)
        or not 2 <= max_length <= 512
    ):
        raise ValueError(f"{path / 'meta.json'}: 'max_length' must be an integer in 2..512")
    memory = _load_memory(path / MEMORY_FILE, len(labels), weight.shape[1], normalize)
    return Head(path, tuple(labels), weight, bias, pooling, normalize, max_length, meta, memory)


def _read_npz(path: Path, names: Sequence[str]) -> dict[str, npt.NDArray[Any]]:
    """The arrays `names` of the .npz file `path`; `ValueError` naming the file when it cannot
    be read (not a zip, pickled objects, truncated, one bare array) or lacks one of them."""
    try:
        # Opened here so that the handle is closed even when numpy fails half-way.
        with path.open("rb") as fh:
            loaded = np.load(fh)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("one bare array")
            with loaded:
                arrays = {n: loaded[n] for n in loaded.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"{path}: missing arrays {missing}")
    return {n: arrays[n] for n in names}


def _load_memory(path: Path, num_labels: int, hidden: int, normalize: bool) -> Memory | None:
    if not path.is_file():
        return None
    arrays = _read_npz(path, ("vectors", "labels", "weights", "k", "tau", "mix", "temperature"))
    vectors, labels, weights = arrays["vectors"], arrays["labels"], arrays["weights"]
    k, tau, mix, temperature = (arrays[n].item() for n in ("k", "tau", "mix", "temperature"))
    n = len(labels)
    if (
        vectors.dtype != np.int8
        or not np.issubdtype(labels.dtype, np.integer)
        or vectors.shape != (n, hidden)
        or weights.shape != (n,)
        or not n
    ):
        raise ValueError(
            f"{path}: vectors {vectors.dtype} {list(vectors.shape)}, labels {list(labels.shape)} "
            f"and weights {list(weights.shape)} do not fit (expected int8 [rows, {hidden}], "
            "integer [rows], [rows], rows > 0)"
        )
    if labels.min() < 0 or labels.max() >= num_labels:
        raise ValueError(f"{path}: a label index is outside 0..{num_labels - 1}")
    if not (np.isfinite(weights).all() and (weights > 0).all()):
        raise ValueError(f"{path}: weights must be positive and finite")
    if not (isinstance(k, int) and 1 <= k <= n and tau > 0 and 0 <= mix <= 1 and temperature > 0):
        raise ValueError(
            f"{path}: k={k}, tau={tau}, mix={mix}, temperature={temperature} out of range "
            f"(1 <= k <= {n}, tau > 0, 0 <= mix <= 1, temperature > 0)"
        )
    if not normalize:
        raise ValueError(f"{path}: a memory needs normalised embeddings ('normalize': true)")
    return Memory(
        vectors,
        labels.astype(np.int64),
        weights.astype(np.float32),
        int(k),
        float(tau),
        float(mix),
        float(temperature),
    )


def save_head(
    path: Path,
    labels: Sequence[str],
    weight: npt.NDArray[np.floating[Any]],
    bias: npt.NDArray[np.floating[Any]],
    meta: dict[str, Any],
) -> Head:
    """Write a head directory in the format above and return it as `load_head` reads it.

    `meta` must hold `pooling`, `normalize` and `max_length`. The adapter,
    if any, is written separately with peft's `save_pretrained(path / ADAPTER_DIR)`, and a
    memory with `save_memory`; a memory left from an earlier head is removed, since it holds
    embeddings of another encoder.
    """
    path.mkdir(parents=True, exist_ok=True)
    (path / MEMORY_FILE).unlink(missing_ok=True)
    (path / "labels.json").write_text(json.dumps(list(labels), indent=1) + "\n", encoding="utf-8")
    np.savez(path / "head.npz", weight=weight.astype(np.float32), bias=bias.astype(np.float32))
    (path / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return load_head(path)


def save_memory(path: Path, memory: Memory) -> None:
    """Write `memory` into the head directory `path` (read back by `load_head`)."""
    np.savez(
        path / MEMORY_FILE,
        vectors=memory.vectors.astype(np.int8),
        labels=memory.labels.astype(np.int16 if memory.labels.max() < 2**15 else np.int64),
        weights=memory.weights.astype(np.float32),
        k=np.int64(memory.k),
        tau=np.float64(memory.tau),
        mix=np.float64(memory.mix),
        temperature=np.float64(memory.temperature),
    )
