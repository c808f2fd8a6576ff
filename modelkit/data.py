"""Labelled text for training and evaluating the classifier: JSONL loading and held-out splits.

A data file has one JSON object per line with at least `text` and `label` (both non-empty
strings); `subject`, `source` and `id` are optional and kept when present. Splits are
deterministic and keyed on the normalised text, so one question that appears in two files
(MMLU-Pro reuses MMLU stems) lands on the same side of every split.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATA_DIR_ENV",
    "DOMAIN_FILES",
    "MMLU_PRO_FILES",
    "DataError",
    "Example",
    "balanced_split",
    "class_counts",
    "default_data_dir",
    "labels_of",
    "load_jsonl",
    "load_many",
    "subject_holdout_split",
    "subject_key",
    "text_key",
]

#: Environment variable that points at the training data folder (overrides `../shared/data`).
DATA_DIR_ENV = "LORAROUTE_DATA_DIR"
#: Files, relative to the data folder, that the `domain` head trains on by default.
DOMAIN_FILES: tuple[str, ...] = ("domain_train.jsonl", "domain_queries_train.jsonl")
#: Files, relative to the data folder, that the `mmlu-pro` head trains on by default.
MMLU_PRO_FILES: tuple[str, ...] = ("mmlu_pro_train.jsonl",)


class DataError(ValueError):
    """A data file is missing or has a bad line; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled text. `subject` is the finer source label ("" when the file has none)."""

    text: str
    label: str
    subject: str = ""
    source: str = ""
    id: str = ""


def default_data_dir() -> Path:
    """The training data folder: `$LORAROUTE_DATA_DIR`, else `../shared/data` beside the repo.

    The repository root is found from this file's location, so the result does not depend on
    the working directory. The folder may not exist (users' clones have no training data).
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env)
    repo_root = Path(__file__).resolve().parents[1]
    return repo_root.parent / "shared" / "data"


def load_jsonl(path: str | Path) -> list[Example]:
    """Read one JSONL file of labelled texts.

    Blank lines are skipped. Raises `DataError` naming the file and 1-based line number for a
    line that is not a JSON object, lacks a non-empty string `text` or `label`, or has a
    non-string `subject`/`source`/`id`; and when the file is missing or holds no examples.
    """
    path = Path(path)
    try:
        # Split on "\n" only: str.splitlines() also breaks at U+2028 and friends, which
        # JSON strings may hold unescaped.
        raw_lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    examples: list[Example] = []
    for lineno, line in enumerate(raw_lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        fields: dict[str, str] = {}
        for key in ("text", "label"):
            value = obj.get(key)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: field {key!r} must be a non-empty string")
            fields[key] = value
        for key in ("subject", "source", "id"):
            value = obj.get(key, "")
            if not isinstance(value, str):
                raise DataError(f"{where}: field {key!r} must be a string when present")
            fields[key] = value
        examples.append(Example(**fields))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def load_many(paths: Iterable[str | Path]) -> list[Example]:
    """Concatenate `load_jsonl` over several files, in order."""
    out: list[Example] = []
    for path in paths:
        out.extend(load_jsonl(path))
    return out


def labels_of(examples: Iterable[Example]) -> list[str]:
    """The distinct labels, sorted, so label order is stable across runs and machines."""
    return sorted({e.label for e in examples})


def class_counts(examples: Iterable[Example]) -> dict[str, int]:
    """Number of examples per label."""
    counts: dict[str, int] = defaultdict(int)
    for e in examples:
        counts[e.label] += 1
    return dict(counts)


_NON_WORD = re.compile(r"[^\w]+")


def text_key(text: str) -> str:
    """A normalised form of a text (lower case, punctuation and spacing removed).

    Two texts with the same key count as the same question when splitting, so a held-out
    text never reappears in training with different punctuation.
    """
    return _NON_WORD.sub(" ", text.lower()).strip()


#: MMLU-Pro names a question it took from MMLU `ori_mmlu-<MMLU subject>`.
_MMLU_PRO_FROM_MMLU = "ori_mmlu-"


def subject_key(subject: str) -> str:
    """One name for a subject across files: MMLU-Pro's `ori_mmlu-<subject>` becomes `<subject>`.

    MMLU rows carry the MMLU subject (`professional_law`); MMLU-Pro rows taken from MMLU carry
    it with a prefix (`ori_mmlu-professional_law`). Other subjects are returned unchanged.
    """
    return subject.removeprefix(_MMLU_PRO_FROM_MMLU)


def _rank(key: str, seed: int) -> str:
    # A keyed hash gives a deterministic pseudo-random order that is the same in every file.
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).hexdigest()


def balanced_split(
    examples: Sequence[Example], per_class: int, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Hold out `per_class` examples of every label; return `(rest, held_out)`.

    The held-out part is class-balanced (each label exactly `per_class` times), so plain
    accuracy on it equals balanced accuracy and a large class cannot hide a weak one.
    Examples whose normalised text equals a held-out text also leave `rest`. Raises
    `DataError` if a label has fewer than `2 * per_class` examples (too few to both train
    and hold out).
    """
    by_label: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        by_label[e.label].append(e)
    held_keys: set[str] = set()
    for label, rows in sorted(by_label.items()):
        if len(rows) < 2 * per_class:
            raise DataError(
                f"label {label!r} has {len(rows)} examples; holding out {per_class} "
                f"needs at least {2 * per_class}"
            )
        keys = sorted({text_key(e.text) for e in rows}, key=lambda k: _rank(k, seed))
        held_keys.update(keys[:per_class])
    held = [e for e in examples if text_key(e.text) in held_keys]
    # Keep exactly per_class per label even when a key is shared by two rows of one label.
    held = _cap_per_label(held, per_class)
    rest = [e for e in examples if text_key(e.text) not in held_keys]
    return rest, held


def _cap_per_label(rows: Sequence[Example], cap: int) -> list[Example]:
    seen: dict[str, int] = defaultdict(int)
    out = []
    for e in rows:
        if seen[e.label] < cap:
            seen[e.label] += 1
            out.append(e)
    return out


def subject_holdout_split(
    examples: Sequence[Example], fraction: float = 0.2, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Hold out whole subjects, about `fraction` of each label's rows; return `(rest, held_out)`.

    No subject appears on both sides, so the held-out part measures how the model does on
    material of a kind it never saw. For each label, subjects are taken in a seeded order and
    held out until at least `fraction` of the label's rows are held; a subject larger than
    half of its label is never held out (that would remove most of the label), and a label
    with fewer than two subjects is kept whole in `rest`. The held-out part is therefore not
    class-balanced: report balanced accuracy on it. Rows whose normalised text equals a
    held-out text also leave `rest`.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    by_label: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in examples:
        by_label[e.label][e.subject] += 1
    held_subjects: set[tuple[str, str]] = set()
    for label, subjects in sorted(by_label.items()):
        total = sum(subjects.values())
        if len(subjects) < 2:
            continue
        taken = 0
        for subject in sorted(subjects, key=lambda s: _rank(s, seed)):
            if taken >= fraction * total:
                break
            if subjects[subject] > total / 2:
                continue
            held_subjects.add((label, subject))
            taken += subjects[subject]
    held = [e for e in examples if (e.label, e.subject) in held_subjects]
    held_keys = {text_key(e.text) for e in held}
    rest = [e for e in examples if text_key(e.text) not in held_keys]
    return rest, held
