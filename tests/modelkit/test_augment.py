"""Tests for modelkit/augment.py: typo rate, determinism, what is left alone;
sentence crops."""

from __future__ import annotations

import random

from modelkit.augment import (
    DEFAULT_TYPO_RATE,
    MIN_CROP_WORDS,
    add_typos,
    crop_sentences,
    typo_copy,
)

SENTENCES = [
    "How do I join two tables in SQL and keep the rows that have no match on the right side?",
    "What are the common side effects of taking ibuprofen every day for a month or longer?",
    "Which court has jurisdiction when a contract is signed in one state and broken in another?",
    "Tell me about the history of the Roman empire and why it eventually fell apart in the west.",
]


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        cur = [i]
        for j, cb in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_edit_rate_is_about_one_per_25_characters() -> None:
    texts = SENTENCES * 50
    noisy = typo_copy(texts, seed=3)
    chars = sum(len(t) for t in texts)
    edits = sum(_levenshtein(a, b) for a, b in zip(texts, noisy, strict=True))
    # A slip is one edit, except a swap of two letters (two edits, one slip in four);
    # so the Levenshtein rate sits a little above the slip rate of 0.04.
    assert 0.03 <= edits / chars <= 0.06, edits / chars


def test_same_seed_same_copy_other_seed_other_copy() -> None:
    assert typo_copy(SENTENCES, seed=1) == typo_copy(SENTENCES, seed=1)
    assert typo_copy(SENTENCES, seed=1) != typo_copy(SENTENCES, seed=2)


def test_digits_spaces_and_punctuation_are_kept() -> None:
    text = "123 456, 7.89 ... ?! -- 2024"
    assert add_typos(text, random.Random(0), rate=0.5) == text


def test_zero_rate_changes_nothing() -> None:
    assert add_typos(SENTENCES[0], random.Random(0), rate=0.0) == SENTENCES[0]
    assert DEFAULT_TYPO_RATE == 1 / 25


STEM = (
    "A tenant leased an apartment for two years. After six months the landlord sold the "
    "building. The new owner, e.g. a bank, raised the rent by half. Is the tenant bound? "
    "She refused to pay and was evicted. Which claim is strongest?"
)


def test_a_crop_is_a_run_of_whole_sentences_with_enough_words() -> None:
    sentences = [
        "A tenant leased an apartment for two years.",
        "After six months the landlord sold the building.",
        "The new owner, e.g. a bank, raised the rent by half.",
        "Is the tenant bound?",
        "She refused to pay and was evicted.",
        "Which claim is strongest?",
    ]
    rng = random.Random(0)
    crops = {crop_sentences(STEM, rng) for _ in range(200)}
    assert len(crops) > 5  # starts and lengths vary
    for crop in crops:
        assert crop != STEM and crop in STEM
        assert len(crop.split()) >= MIN_CROP_WORDS
        # It starts and ends on a sentence boundary ("e.g. a" does not end a sentence).
        assert any(crop.startswith(s) for s in sentences)
        assert any(crop.endswith(s) for s in sentences)
    # A short last sentence is grown into a run that reaches the minimum.
    assert "Is the tenant bound? She refused to pay and was evicted." in crops


def test_crops_repeat_for_a_seed_and_short_texts_stay_whole() -> None:
    assert [crop_sentences(STEM, random.Random(4)) for _ in range(3)] == [
        crop_sentences(STEM, random.Random(4)) for _ in range(3)
    ]
    one = "How do I join two tables in SQL and keep the unmatched rows?"
    assert crop_sentences(one, random.Random(0)) == one
    # Two sentences too short to split keep the whole text.
    short = "My knee hurts. What should I do?"
    assert crop_sentences(short, random.Random(0)) == short
