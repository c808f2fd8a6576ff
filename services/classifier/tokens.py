"""Text to model input: a `tokenizers` wrapper that pads to the longest and counts truncation.

A `tokenizer.json` saved by a sentence-transformers model may carry fixed padding (the
MiniLM one pads every input to 128 tokens, 4-6x slower on short chat queries) and a
truncation length of its own. `Tokenizer` discards both: it pads each batch to its
longest member and truncates at the model's maximum length, which the caller passes in.
With `correct_spelling`, texts go through `spelling.SpellingCorrector` first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tokenizers

from services.classifier.errors import ModelDirError
from services.classifier.spelling import SpellingCorrector

__all__ = ["Encoded", "Tokenizer"]

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Encoded:
    """A padded batch ready for the model, plus what a batcher needs to know about it.

    `input_ids` and `attention_mask` are int64 `[n, longest]`; `lengths[i]` is the number
    of real tokens of text `i` (special tokens included, after truncation);
    `truncated[i]` is true when text `i` lost tokens to the maximum length.
    """

    input_ids: IntArray
    attention_mask: IntArray
    lengths: IntArray
    truncated: BoolArray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def padded_tokens(self) -> int:
        """Tokens the model computes for this batch: longest x count (padding included)."""
        return int(self.input_ids.shape[0] * self.input_ids.shape[1])

    @property
    def real_tokens(self) -> int:
        """Tokens that belong to the texts (padding excluded)."""
        return int(self.lengths.sum())

    def take(self, indices: Sequence[int] | IntArray) -> Encoded:
        """Return the rows at `indices`, in that order, re-padded to their own longest."""
        idx = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[idx]
        width = int(lengths.max()) if len(idx) else 0
        return Encoded(
            input_ids=np.ascontiguousarray(self.input_ids[idx, :width]),
            attention_mask=np.ascontiguousarray(self.attention_mask[idx, :width]),
            lengths=lengths,
            truncated=self.truncated[idx],
        )

    @staticmethod
    def collate(parts: Sequence[Encoded], pad_id: int) -> Encoded:
        """Join batches (for example one per request, encoded on arrival) into one batch.

        Rows keep their order; the result is padded with `pad_id` to the longest row.
        Raises `ValueError` when `parts` is empty.
        """
        if not parts:
            raise ValueError("collate needs at least one batch")
        lengths = np.concatenate([p.lengths for p in parts])
        width = int(lengths.max())
        n = int(lengths.shape[0])
        ids = np.full((n, width), pad_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        row = 0
        for p in parts:
            k, w = p.input_ids.shape
            ids[row : row + k, :w] = p.input_ids
            mask[row : row + k, :w] = p.attention_mask
            row += k
        return Encoded(ids, mask, lengths, np.concatenate([p.truncated for p in parts]))


class Tokenizer:
    """Tokenizes texts for one model: padding to the batch's longest, truncation at `max_length`.

    Thread safety: `encode` may be called from several threads (the Rust tokenizer is
    immutable once configured here). Build it once at start-up and share it.
    """

    def __init__(
        self, tokenizer: tokenizers.Tokenizer, max_length: int, *, correct_spelling: bool = False
    ) -> None:
        """Take over `tokenizer` (its padding and truncation settings are replaced).

        `correct_spelling` mends misspelt words before tokenizing, leaving alone the words this
        tokenizer has as one token (the first such tokenizer loads the dictionary).

        Raises `ValueError` when `max_length` is below 2 (no room for the special tokens)
        and `ModelDirError` when the tokenizer has no padding token.
        """
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        pad_token, pad_id = _pad_token(tokenizer)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)  # BatchLongest
        tokenizer.enable_truncation(max_length=max_length)
        self._tok = tokenizer
        self.max_length = max_length
        self.pad_id = pad_id
        self._unk = getattr(tokenizer.model, "unk_token", None)
        self.corrector = (
            SpellingCorrector(
                known=self._one_token, max_words=max_length, max_lookups=max(1, max_length // 4)
            )
            if correct_spelling
            else None
        )

    @classmethod
    def from_file(
        cls, path: str | Path, max_length: int, *, correct_spelling: bool = False
    ) -> Tokenizer:
        """Load a `tokenizer.json`; raises `ModelDirError` naming the file when it is unusable."""
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for bad files
            raise ModelDirError(f"{path}: cannot load tokenizer: {exc}") from exc
        return cls(tok, max_length, correct_spelling=correct_spelling)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Tokenize `texts` into one padded batch (rows in the order given).

        Raises `TypeError` when an item is not a `str`. An empty sequence gives a
        batch of shape `[0, 0]`.
        """
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be str, not {type(text).__name__}")
        if not texts:
            empty = np.zeros((0, 0), dtype=np.int64)
            return Encoded(empty, empty.copy(), np.zeros(0, np.int64), np.zeros(0, np.bool_))
        if self.corrector is not None:
            texts = [self.corrector(t) for t in texts]
        encodings = self._tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        # With stride 0, `overflowing` holds the cut-off tail: non-empty exactly when truncated.
        truncated = np.array([bool(e.overflowing) for e in encodings], dtype=np.bool_)
        return Encoded(ids, mask, mask.sum(axis=1), truncated)

    def count_tokens(self, text: str) -> int:
        """Tokens `text` costs the model (special tokens included, at most `max_length`)."""
        if self.corrector is not None:
            text = self.corrector(text)
        return len(self._tok.encode(text).ids)

    def _one_token(self, word: str) -> bool:
        tokens = self._tok.encode(word, add_special_tokens=False).tokens
        return len(tokens) == 1 and tokens[0] != self._unk


def _pad_token(tok: tokenizers.Tokenizer) -> tuple[str, int]:
    padding = tok.padding
    if padding is not None:
        return str(padding["pad_token"]), int(padding["pad_id"])
    for candidate in ("[PAD]", "<pad>"):
        pad_id = tok.token_to_id(candidate)
        if pad_id is not None:
            return candidate, pad_id
    raise ModelDirError("tokenizer has no padding token ([PAD] or <pad>) and no padding config")
