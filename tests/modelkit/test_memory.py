"""modelkit/memory.py and the memory file of heads.py."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from modelkit.data import Example
from modelkit.heads import (
    MEMORY_FILE,
    MEMORY_SCALE,
    Memory,
    load_head,
    save_head,
    save_memory,
)
from modelkit.heldout import CHAT_FILE
from modelkit.memory import GRID, add_memory, fit_memory, memory_logits, memory_rows
from modelkit.options import TrainOptions
from modelkit.plan import FileSplit
from modelkit.runs import RunError
from modelkit.train import train
from tests.modelkit.toydata import write_data


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _memory(rng: np.random.Generator, n: int = 40, d: int = 16, labels: int = 3) -> Memory:
    vectors = np.rint(_unit(rng, n, d) * MEMORY_SCALE).astype(np.int8)
    return Memory(
        vectors=vectors,
        labels=rng.integers(0, labels, n).astype(np.int64),
        weights=rng.uniform(0.5, 2.0, n).astype(np.float32),
        k=5,
        tau=0.05,
        mix=0.4,
        temperature=1.3,
    )


def test_vote_is_the_documented_rule() -> None:
    rng = np.random.default_rng(0)
    memory = _memory(rng)
    x = _unit(rng, 7, 16)
    head = rng.normal(size=(7, 3)).astype(np.float32)
    got = memory_logits(memory, 3, x, head)

    stored = memory.vectors.astype(np.float64) / MEMORY_SCALE
    for i in range(len(x)):
        sims = stored @ x[i]
        top = np.argsort(-sims)[: memory.k]
        votes = np.zeros(3)
        for j in top:
            votes[memory.labels[j]] += memory.weights[j] * np.exp((sims[j] - sims[top[0]]) / 0.05)
        p_head = np.exp(head[i] - head[i].max())
        mixed = 0.6 * p_head / p_head.sum() + 0.4 * votes / votes.sum()
        np.testing.assert_allclose(got[i], np.log(mixed) / 1.3, rtol=1e-4, atol=1e-5)


def test_fit_finds_what_a_line_cannot_draw() -> None:
    # Label 0 sits in two opposite clusters, label 1 between them: no linear head separates
    # them, and this head is blind; the nearest training rows are right every time.
    rng = np.random.default_rng(1)
    centres = _unit(rng, 3, 8)
    centres[1] = -centres[0]

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        which = rng.integers(0, 3, n)
        x = centres[which] + rng.normal(0, 0.05, (n, 8))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32), (which == 2).astype(np.int64)

    xt, yt = rows(120)
    xv, yv = rows(60)
    memory, measured = fit_memory(
        2,
        (xt, yt, np.ones(len(yt), np.float32)),
        (xv, yv, np.zeros((len(yv), 2), np.float32)),
        [np.ones(len(yv), bool)],
    )
    assert measured["val_balanced_accuracy_head_only"] == 0.5
    assert measured["val_balanced_accuracy"] == 1.0
    assert (memory.k, memory.tau, memory.mix) in GRID
    assert memory.temperature > 0


def test_memory_round_trip_and_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels = ["a", "b", "c"]
    meta = {"pooling": "mean", "normalize": True, "max_length": 32}
    path = tmp_path / "mine"
    save_head(path, labels, np.zeros((3, 16), np.float32), np.zeros(3, np.float32), meta)
    assert load_head(path).memory is None
    memory = _memory(rng)
    save_memory(path, memory)
    loaded = load_head(path).memory
    assert loaded is not None
    np.testing.assert_array_equal(loaded.vectors, memory.vectors)
    np.testing.assert_array_equal(loaded.labels, memory.labels)
    assert (loaded.k, loaded.tau, loaded.mix, loaded.temperature) == (5, 0.05, 0.4, 1.3)

    save_memory(path, Memory(memory.vectors, memory.labels + 1, memory.weights, 5, 0.05, 0.4, 1.3))
    with pytest.raises(ValueError, match="label index is outside"):
        load_head(path)
    save_memory(path, Memory(memory.vectors, memory.labels, memory.weights, 41, 0.05, 0.4, 1.3))
    with pytest.raises(ValueError, match="k=41"):
        load_head(path)
    save_memory(path, memory)
    (path / "meta.json").write_text(json.dumps(meta | {"normalize": False}))
    with pytest.raises(ValueError, match="needs normalised embeddings"):
        load_head(path)
    np.savez(path / MEMORY_FILE, vectors=memory.vectors)
    with pytest.raises(ValueError, match="missing arrays"):
        load_head(path)
    whole = {"vectors": memory.vectors, "labels": memory.labels, "weights": memory.weights}
    whole |= {"k": 5, "tau": 0.05, "mix": 0.4, "temperature": 1.3}
    np.savez(path / MEMORY_FILE, **(whole | {"labels": memory.labels * 0.5}))
    with pytest.raises(ValueError, match="integer"):
        load_head(path)
    (path / MEMORY_FILE).write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"memory\.npz: not a readable \.npz file"):
        load_head(path)
    np.savez(path / MEMORY_FILE, **(whole | {"vectors": np.array([object()], dtype=object)}))
    with pytest.raises(ValueError, match="not a readable"):
        load_head(path)
    with (path / MEMORY_FILE).open("wb") as fh:
        np.save(fh, memory.vectors)
    with pytest.raises(ValueError, match="one bare array"):
        load_head(path)
    (path / MEMORY_FILE).unlink()
    (path / "head.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"head\.npz: not a readable \.npz file"):
        load_head(path)


def test_add_memory_refuses_a_folder_without_heads(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no heads under"):
        add_memory(tmp_path)


@pytest.mark.slow
def test_add_memory_recomputes_and_retraining_without_one_removes_it(tmp_path: Path) -> None:
    data = write_data(tmp_path / "mine.jsonl")
    out = tmp_path / "weights"
    options = TrainOptions(data=(data,), head="mine", lora=False, typo_copies=0, out=out, threads=1)
    train(options)
    first = load_head(out / "mine")
    assert first.memory is not None
    head_only = first.meta["memory"]["head_only_evaluation"]
    assert head_only["mine.jsonl"]["clean"]["n"] == 6

    (out / "mine" / MEMORY_FILE).unlink()
    add_memory(out, [data], threads=1)
    again = load_head(out / "mine")
    assert again.memory is not None
    np.testing.assert_array_equal(again.memory.vectors, first.memory.vectors)
    # The head's own figures survive a second memory; they are not the first memory's.
    assert again.meta["memory"]["head_only_evaluation"] == head_only

    train(msgspec.structs.replace(options, memory=False))
    assert load_head(out / "mine").memory is None
    assert not (out / "mine" / MEMORY_FILE).exists()


def test_memory_rows_leave_the_conversational_file_out() -> None:
    exam = FileSplit("domain_train.jsonl", [Example(f"e{i}", "legal") for i in range(3)], [], [])
    chat = FileSplit(CHAT_FILE, [Example(f"c{i}", "general") for i in range(5)], [], [])
    assert memory_rows([exam, chat]) == [exam.train, []]
