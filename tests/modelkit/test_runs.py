"""modelkit/runs.py: a run's options read back from its meta.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelkit.heads import WEIGHTS_DIR, Head, head_names, load_head, save_head
from modelkit.options import TrainOptions
from modelkit.runs import RunError, saved_options, trained_together


def _head(path: Path, training: dict[str, Any], **meta: Any) -> Head:
    files = meta.pop("files", [{"file": "mine.jsonl", "train": 9, "val": 3, "test": 3}])
    sources = meta.pop("sources", "user-supplied files")
    full = {"pooling": "mean", "normalize": True, "max_length": 128, **meta}
    full |= {"training": training, "data": {"files": files, "sources": sources}}
    return save_head(path, ["a", "b"], np.eye(2, 4), np.zeros(2), full)


def test_the_recorded_options_come_back_typed(tmp_path: Path) -> None:
    training = {
        "mode": "lora",
        "split": "subject",
        "seed": 3,
        "run_seed": 7,
        "test_per_class": 5,
        "val_per_class": 2,
        "lr": 0.01,
        "epochs": 2,
        "aux_subject_weight": 0.25,
        "consistency_weight": 1.0,
        "temperature": 0.5,
        "counts": {"mine.jsonl": {"a": 5, "b": 4}},
    }
    head = _head(tmp_path / "mine", training, max_length=64, normalize=False)
    options = saved_options({"mine": [head]}, [Path("mine.jsonl")])
    assert options == TrainOptions(
        data=(Path("mine.jsonl"),),
        head="mine",
        split="subject",
        seed=3,
        run_seed=7,
        test_per_class=5,
        val_per_class=2,
        lr=0.01,
        epochs=2,
        aux_subject=0.25,
        consistency=1.0,
        max_length=64,
        normalize=False,
        borrow_subjects=False,
    )


def test_the_committed_heads_were_trained_with_the_default_split() -> None:
    heads = {name: [load_head(WEIGHTS_DIR / name)] for name in head_names()}
    # The domain head was retrained alone on the conversational file as well; the 14-label
    # head comes from the earlier run that trained both heads together.
    groups = trained_together(heads)
    assert [sorted(g) for g in groups] == [["domain"], ["mmlu-pro"]]
    alone, joint = (saved_options(g, []) for g in groups)
    assert (alone.head, alone.borrow_subjects) == ("domain", False)
    assert (joint.head, joint.borrow_subjects) == (None, True)
    for options in (alone, joint):
        assert options.data == ()
        assert (options.split, options.seed, options.test_per_class) == ("balanced", 0, 0)
        assert (options.max_length, options.normalize) == (128, True)


def test_missing_files_and_bad_records_are_refused(tmp_path: Path) -> None:
    head = _head(tmp_path / "mine", {"split": "balanced"})
    with pytest.raises(RunError, match="name them with --data"):
        saved_options({"mine": [head]}, [])
    bad = _head(tmp_path / "bad", {"split": "sideways"})
    with pytest.raises(RunError, match=r"bad/meta\.json: training options"):
        saved_options({"bad": [bad]}, [Path("mine.jsonl")])
    with pytest.raises(RunError, match="only the default heads or a single head"):
        saved_options({"mine": [head], "bad": [bad]}, [Path("mine.jsonl")])
