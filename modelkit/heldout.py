"""Source-aware held-out splits of conversational data, and length-matched subsets.

Conversational rows come in runs from one author or one task: ExpertQA's ids number one
expert's questions one after another, K-QA's follow-ups sit beside the message they follow,
NL2Bash's neighbouring lines describe the same command in other words. A random row split
puts a row's near-twin in training and so overstates accuracy (by about 10 points on the
default data). `group_holdout_split` therefore holds out whole *groups*: runs of
`GROUP_ROWS` consecutive ids of one source (by the id's trailing number), about
`fraction` of every source's rows of every label; no group is ever on both sides.

`length_matched` keeps, in every band of word counts, the same number of rows of each label
(bands where a label is missing are left out), so that on the subset a text's length says
nothing about its label: any rule that looks only at length scores exactly chance. Reporting
on it shows how much of a score is the topic rather than the style of a source.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence

from modelkit.data import Example, text_key

__all__ = [
    "CHAT_FILE",
    "GROUP_ROWS",
    "LENGTH_BANDS",
    "group_holdout_split",
    "group_of",
    "length_band",
    "length_matched",
    "source_name",
]

#: The conversational file of the default data folder.
CHAT_FILE = "chat_train.jsonl"
#: Consecutive ids of one source that form one group.
GROUP_ROWS = 20
#: Upper bounds (words, inclusive) of the length bands; the last band is open.
LENGTH_BANDS: tuple[int, ...] = (4, 6, 8, 10, 12, 15, 18, 22, 27, 33, 40, 50, 65, 85)

_TRAILING_NUMBER = re.compile(r"(\d+)\D*$")


def _rank(key: str, seed: int) -> str:
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).hexdigest()


def source_name(example: Example) -> str:
    """A short name of a row's source: the id's first path part (`expertqa`, `kqa`),
    else the `source` field, else "-"."""
    if example.id:
        return example.id.split("/", 1)[0]
    return example.source or "-"


def group_of(example: Example, rows: int = GROUP_ROWS) -> str:
    """The group of a row: its id up to the trailing number, and the run of `rows`
    consecutive numbers it falls in (`expertqa/r1/1448` -> `expertqa/r1/#72`).

    A row whose id has no number is a group of its own (keyed on its id, else its text)."""
    match = _TRAILING_NUMBER.search(example.id)
    if match is None:
        return f"{source_name(example)}#{example.id or text_key(example.text)}"
    return f"{example.id[: match.start()]}#{int(match.group(1)) // rows}"


def group_holdout_split(
    examples: Sequence[Example], fraction: float = 0.2, seed: int = 0, rows: int = GROUP_ROWS
) -> tuple[list[Example], list[Example]]:
    """Hold out whole groups (`group_of`), about `fraction` of each source's rows of each
    label; return `(rest, held_out)`.

    For every (source, label), its groups are taken in a seeded order until at least
    `fraction` of its rows are held; a group held for one label is held whole. A (source,
    label) with a single group stays in `rest`. Rows whose normalised text equals a held-out
    text also leave `rest`. The held-out part is not class-balanced: report balanced accuracy.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    sizes: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for e in examples:
        sizes[(source_name(e), e.label)][group_of(e, rows)] += 1
    held_groups: set[str] = set()
    for _, groups in sorted(sizes.items()):
        if len(groups) < 2:
            continue
        total = sum(groups.values())
        taken = sum(n for g, n in groups.items() if g in held_groups)
        for group in sorted(groups, key=lambda g: _rank(g, seed)):
            if taken >= fraction * total:
                break
            if group not in held_groups:
                held_groups.add(group)
                taken += groups[group]
    held = [e for e in examples if group_of(e, rows) in held_groups]
    held_keys = {text_key(e.text) for e in held}
    rest = [e for e in examples if text_key(e.text) not in held_keys]
    return rest, held


def length_band(text: str) -> int:
    """The index of the length band (`LENGTH_BANDS`) of a text's word count."""
    words = len(text.split())
    for band, upper in enumerate(LENGTH_BANDS):
        if words <= upper:
            return band
    return len(LENGTH_BANDS)


def length_matched(examples: Sequence[Example], seed: int = 0) -> list[Example]:
    """The largest subset with, in every length band, equally many rows of every label.

    Only labels present in `examples` count; a band lacking one of them is dropped whole.
    Which rows of a band are kept is a seeded choice; the result keeps the input order.
    """
    labels = {e.label for e in examples}
    by_band: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, e in enumerate(examples):
        by_band[length_band(e.text)][e.label].append(i)
    keep: set[int] = set()
    for per_label in by_band.values():
        if set(per_label) != labels:
            continue
        n = min(len(rows) for rows in per_label.values())
        for rows in per_label.values():
            ranked = sorted(rows, key=lambda i: _rank(f"{i}:{examples[i].text}", seed))
            keep.update(ranked[:n])
    return [e for i, e in enumerate(examples) if i in keep]
