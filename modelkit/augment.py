"""Text augmentation for training and robustness checks: keyboard typos and sentence crops.

Users misspell; a classifier that flips category on one typo routes badly. Training on typo'd
copies and evaluating on a typo'd copy of the test split both use `add_typos`. Users also ask
in a sentence or two what exam questions set out in a paragraph; `crop_sentences` cuts a
training text down to a run of its sentences.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

__all__ = ["DEFAULT_TYPO_RATE", "MIN_CROP_WORDS", "add_typos", "crop_sentences", "typo_copy"]

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


#: A crop is grown by whole sentences until it has at least this many words.
MIN_CROP_WORDS = 8

# A sentence ends at . ? or ! followed by white space and a capital, digit, quote or bracket;
# abbreviations such as "e.g. the" (lower case next) do not end one.
_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[\"'(\[A-Z0-9])")


def crop_sentences(text: str, rng: random.Random, min_words: int = MIN_CROP_WORDS) -> str:
    """A run of one or two whole sentences of `text`, grown until it has `min_words` words.

    The run starts at a random sentence; it is extended forwards (then backwards) one sentence
    at a time while it is shorter than `min_words` words. A text of one sentence, or one whose
    crop would be the whole text anyway, is returned unchanged. Deterministic for a given
    `rng` state.
    """
    sentences = _SENTENCE_END.split(text.strip())
    if len(sentences) < 2:
        return text
    start = rng.randrange(len(sentences))
    end = min(len(sentences), start + rng.choice((1, 2)))

    def words() -> int:
        return sum(len(s.split()) for s in sentences[start:end])

    while words() < min_words and end < len(sentences):
        end += 1
    while words() < min_words and start > 0:
        start -= 1
    if end - start == len(sentences):
        return text
    return " ".join(sentences[start:end])
