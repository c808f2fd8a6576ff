"""Text augmentation for training and robustness checks: keyboard typos.

Users misspell; a classifier that flips category on one typo routes badly. Training on typo'd
copies and evaluating on a typo'd copy of the test split both use `add_typos`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["DEFAULT_TYPO_RATE", "add_typos", "typo_copy"]

#: Edits per character: about one edit per 25 characters.
DEFAULT_TYPO_RATE = 1 / 25

# Neighbouring keys on a QWERTY keyboard, so substitutions look like real slips.
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS: dict[str, str] = {}
for _r, _row in enumerate(_ROWS):
    for _c, _ch in enumerate(_row):
        near = [_row[j] for j in (_c - 1, _c + 1) if 0 <= j < len(_row)]
        for _other in (_r - 1, _r + 1):
            if 0 <= _other < len(_ROWS):
                near += [
                    _ROWS[_other][j] for j in (_c - 1, _c, _c + 1) if 0 <= j < len(_ROWS[_other])
                ]
        _NEIGHBOURS[_ch] = "".join(near)


def _edit(chars: list[str], pos: int, rng: random.Random) -> None:
    kind = rng.randrange(4)
    ch = chars[pos]
    lower = ch.lower()
    if kind == 0:  # substitute with a neighbouring key
        sub = rng.choice(_NEIGHBOURS.get(lower, "etaoin"))
        chars[pos] = sub.upper() if ch.isupper() else sub
    elif kind == 1:  # drop the character
        chars[pos] = ""
    elif kind == 2:  # double it
        chars[pos] = ch + ch
    elif pos + 1 < len(chars) and chars[pos + 1].isalpha():  # swap with the next letter
        chars[pos], chars[pos + 1] = chars[pos + 1], ch
    else:
        chars[pos] = ""


def add_typos(text: str, rng: random.Random, rate: float = DEFAULT_TYPO_RATE) -> str:
    """Return `text` with about `rate * len(text)` keyboard slips applied to its letters.

    The number of edits is drawn as Binomial(len(text), rate), spread over distinct letter
    positions (substitution by a neighbouring key, deletion, doubling, or swap with the next
    letter); digits, spaces and punctuation are left alone so numbers and code keep their
    shape. Deterministic for a given `rng` state.
    """
    if rate <= 0 or not text:
        return text
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    if not letters:
        return text
    n = sum(1 for _ in range(len(text)) if rng.random() < rate)
    n = min(n, len(letters))
    chars = list(text)
    for pos in sorted(rng.sample(letters, n)):
        _edit(chars, pos, rng)
    return "".join(chars)


def typo_copy(texts: Sequence[str], seed: int, rate: float = DEFAULT_TYPO_RATE) -> list[str]:
    """A typo'd copy of `texts`; the same `seed` always gives the same copy."""
    rng = random.Random(seed)
    return [add_typos(t, rng, rate) for t in texts]
