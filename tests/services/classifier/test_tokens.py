"""services/classifier/tokens.py: padding to the longest, truncation counted, batch surgery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, processors

from services.classifier.errors import ModelDirError
from services.classifier.tokens import Encoded, Tokenizer

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]


@pytest.fixture
def tokenizer_file(tmp_path: Path) -> Path:
    """A word-level tokenizer saved the way the packaged MiniLM one is: fixed padding to 16."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3} | {
        w: i + 4 for i, w in enumerate(WORDS)
    }
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=16)
    tok.enable_truncation(max_length=16)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_pads_to_the_longest_in_the_batch_not_to_the_saved_length(tokenizer_file: Path) -> None:
    tok = Tokenizer.from_file(tokenizer_file, max_length=8)
    enc = tok.encode(["alpha", "alpha beta gamma"])
    assert enc.input_ids.shape == (2, 5)  # [CLS] + 3 words + [SEP]
    assert enc.input_ids.dtype == np.int64 and enc.attention_mask.dtype == np.int64
    assert enc.input_ids[0].tolist() == [2, 4, 3, 0, 0]
    assert enc.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert enc.lengths.tolist() == [3, 5]
    assert enc.truncated.tolist() == [False, False]
    assert enc.padded_tokens == 10 and enc.real_tokens == 8


def test_truncates_at_max_length_and_flags_it(tokenizer_file: Path) -> None:
    tok = Tokenizer.from_file(tokenizer_file, max_length=5)
    enc = tok.encode(["alpha beta gamma", "alpha beta gamma delta", "alpha"])
    assert enc.input_ids.shape == (3, 5)
    assert enc.truncated.tolist() == [False, True, False]
    assert enc.input_ids[1].tolist() == [2, 4, 5, 6, 3]  # special tokens survive the cut
    assert tok.count_tokens("alpha beta gamma delta epsilon") == 5
    assert tok.count_tokens("alpha") == 3


def test_empty_batch_and_empty_text(tokenizer_file: Path) -> None:
    tok = Tokenizer.from_file(tokenizer_file, max_length=8)
    assert len(tok.encode([])) == 0
    assert tok.encode([""]).input_ids.tolist() == [[2, 3]]


def test_rejects_non_strings_and_bad_max_length(tokenizer_file: Path) -> None:
    tok = Tokenizer.from_file(tokenizer_file, max_length=8)
    with pytest.raises(TypeError, match=r"texts\[1\] must be str"):
        tok.encode(["alpha", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least 2"):
        Tokenizer.from_file(tokenizer_file, max_length=1)


def test_unreadable_tokenizer_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ModelDirError, match=r"tokenizer\.json"):
        Tokenizer.from_file(bad, max_length=8)


def test_take_reorders_and_trims_padding(tokenizer_file: Path) -> None:
    tok = Tokenizer.from_file(tokenizer_file, max_length=8)
    enc = tok.encode(["alpha beta gamma delta", "alpha", "beta gamma"])
    part = enc.take([2, 1])
    assert part.input_ids.tolist() == [[2, 5, 6, 3], [2, 4, 3, 0]]
    assert part.lengths.tolist() == [4, 3]
    assert part.input_ids.flags["C_CONTIGUOUS"]


def test_collate_equals_encoding_together(tokenizer_file: Path) -> None:
    tok = Tokenizer.from_file(tokenizer_file, max_length=6)
    texts = ["alpha beta", "gamma", "delta epsilon zeta eta theta"]
    joined = Encoded.collate([tok.encode([t]) for t in texts], pad_id=tok.pad_id)
    together = tok.encode(texts)
    assert np.array_equal(joined.input_ids, together.input_ids)
    assert np.array_equal(joined.attention_mask, together.attention_mask)
    assert joined.lengths.tolist() == together.lengths.tolist()
    assert joined.truncated.tolist() == [False, False, True]
    with pytest.raises(ValueError, match="at least one"):
        Encoded.collate([], pad_id=0)


def test_correct_spelling_mends_texts_before_tokenizing(domain_model_dir: Path) -> None:
    path = domain_model_dir / "tokenizer.json"
    plain = Tokenizer.from_file(path, max_length=128)
    mending = Tokenizer.from_file(path, max_length=128, correct_spelling=True)
    assert plain.corrector is None and mending.corrector is not None
    typo, clean = "the quantm mechancis of atoms", "the quantum mechanics of atoms"
    assert mending.encode([typo]).input_ids.tolist() == plain.encode([clean]).input_ids.tolist()
    assert plain.encode([typo]).input_ids.shape[1] > plain.encode([clean]).input_ids.shape[1]
    assert mending.count_tokens(typo) == plain.count_tokens(clean)


def test_correct_spelling_keeps_words_the_tokenizer_has_whole(domain_model_dir: Path) -> None:
    mending = Tokenizer.from_file(
        domain_model_dir / "tokenizer.json", max_length=128, correct_spelling=True
    )
    assert mending.corrector is not None
    # Not in the (British-leaning) dictionary, but one token of the model's vocabulary.
    assert mending.corrector("Vapor rises; water vapor cools") == "Vapor rises; water vapor cools"
