"""Spelling correction of what the classifier reads: misspelt words are mended before tokenizing.

A typo turns a word the encoder knows into word pieces it never saw together, and a question
with one slip per 25 characters loses several points of accuracy however the head is trained.
Looking each unknown word up in an English frequency dictionary (SymSpell: the most frequent
word within one edit, two for words of six letters or more) wins most of them back for a
fraction of a millisecond per text. Only the classifier's copy is corrected: the request that
vLLM answers is forwarded as the client sent it.

A word is left as written when
- the dictionary knows it, or the model's tokenizer has it as a single token (the encoder
  knows it: US spellings, most technical terms);
- it has fewer than five letters (short words carry little topic and are often jargon: meds, npm);
- a capital follows its first letter (HCl, kPa, ResNets, NASA) or, capitalised, it stands
  inside a sentence (a name: Advair, Postgres);
- it touches a digit, an underscore, an apostrophe or a backslash (x2, snake_case, couldn't,
  \\frac);
- no dictionary word is close enough;
- it comes after the first `max_words` words, or after the first `max_lookups` unknown words.

The dictionary is the English list that ships inside `symspellpy` (82,765 words). Its index
is built once per process, on first use (a few seconds and about 70 MB).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import threading
from collections.abc import Callable

from symspellpy import SymSpell, Verbosity
from symspellpy.editdistance import DistanceAlgorithm, EditDistance

__all__ = ["SpellingCorrector", "english_dictionary"]

#: Letters only, not glued to digits, underscores, apostrophes (couldn't) or a LaTeX backslash.
_WORD = re.compile(r"(?<![\\\w'\u2019])[^\W\d_]+(?![\w'\u2019])")
#: What may come right before a capitalised word that starts a sentence.
_SENTENCE_START = frozenset(".?!:;\n\"'([")

#: Two edits for words of this length and longer, one below it.
_LONG_WORD = 6
_MIN_LETTERS = 5
#: Distinct words whose verdict is remembered: jargon and names recur across requests.
_CACHED_WORDS = 1 << 16


@functools.cache
def english_dictionary() -> SymSpell:
    """SymSpell's English frequency dictionary, indexed for two edits; built once per process.

    A prefix of 6 letters (the library's default is 7) halves the index to about 70 MB and
    gave the same corrections on every evaluation file. Edit distances are computed by
    `editdistpy` (compiled), several times faster than the library's pure-Python default.
    """
    index = SymSpell(
        max_dictionary_edit_distance=2,
        prefix_length=6,
        distance_comparer=EditDistance(DistanceAlgorithm.DAMERAU_OSA_FAST),
    )
    path = importlib.resources.files("symspellpy") / "frequency_dictionary_en_82_765.txt"
    with importlib.resources.as_file(path) as file:
        if not index.load_dictionary(str(file), term_index=0, count_index=1, encoding="utf-8"):
            raise RuntimeError(f"symspellpy's English dictionary is missing: {file}")
    return index


class SpellingCorrector:
    """`corrector(text)` returns `text` with the misspelt words it is sure of replaced.

    `known(word)` says a word must stay as it is although the dictionary lacks it (the
    engine passes "the tokenizer has it as one token"). The verdicts on the last 65,536
    distinct words are remembered. `totals()` counts, since construction, the words replaced
    and the unknown words `max_lookups` left unchecked (the worker exports both as metrics).
    Thread-safe: lookups only read, the memo and the totals lock.
    """

    def __init__(
        self,
        known: Callable[[str], bool] | None = None,
        max_words: int = 0,
        max_lookups: int = 0,
    ) -> None:
        """Words after the first `max_words` are left as written (the tokenizer passes its
        window: each word costs at least one token, so the model never reads later ones), and
        so are unknown words after the first `max_lookups` of a text, which bounds the cost of
        a text made of gibberish. 0: no limit."""
        self._index = english_dictionary()
        self._words = self._index.words
        self._known = known
        self._max_words = max_words
        self._max_lookups = max_lookups
        self._verdict = functools.lru_cache(maxsize=_CACHED_WORDS)(self._correct)
        self._lock = threading.Lock()
        self._corrected = 0
        self._unchecked = 0

    def __call__(self, text: str) -> str:
        left = self._max_lookups or -1
        corrected = unchecked = 0

        def mend(match: re.Match[str]) -> str:
            nonlocal left, corrected, unchecked
            word = match.group(0)
            if len(word) < _MIN_LETTERS or not word[1:].islower() or not word.isascii():
                return word
            if word.lower() in self._words:
                return word
            if word[0].isupper() and not _starts_sentence(match):
                return word
            if left == 0:
                unchecked += 1
                return word
            left -= 1
            mended = self._verdict(word)
            corrected += mended != word
            return mended

        text = _WORD.sub(mend, text, count=self._max_words)
        if corrected or unchecked:
            with self._lock:
                self._corrected += corrected
                self._unchecked += unchecked
        return text

    def totals(self) -> tuple[int, int]:
        """(words replaced, unknown words left unchecked by `max_lookups`) since construction."""
        with self._lock:
            return self._corrected, self._unchecked

    def cache_clear(self) -> None:
        """Forget the remembered verdicts (a benchmark measuring the cold cost calls this)."""
        self._verdict.cache_clear()

    def _correct(self, word: str) -> str:
        if self._known is not None and self._known(word):
            return word
        lower = word.lower()
        edits = 2 if len(word) >= _LONG_WORD else 1
        found = self._index.lookup(lower, Verbosity.TOP, max_edit_distance=edits)
        if not found:
            return word
        best: str = found[0].term
        return best[0].upper() + best[1:] if word[0].isupper() else best


def _starts_sentence(match: re.Match[str]) -> bool:
    text, i = match.string, match.start() - 1
    while i >= 0 and text[i] in " \t":
        i -= 1
    return i < 0 or text[i] in _SENTENCE_START
