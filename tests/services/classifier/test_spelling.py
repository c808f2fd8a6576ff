"""services/classifier/spelling.py: what is mended and what is left alone, on the real dictionary."""

from __future__ import annotations

import pytest

from services.classifier.spelling import SpellingCorrector, english_dictionary


@pytest.fixture(scope="module")
def correct() -> SpellingCorrector:
    return SpellingCorrector()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # one edit in a word under six letters, two from six letters on
        ("the quantm theory", "the quantum theory"),
        ("how to undrestand recursion", "how to understand recursion"),
        ("a pnuemonai patient", "a pneumonia patient"),
        # a capital that starts the text or a sentence is kept on the correction
        ("Mitochondira make energy", "Mitochondria make energy"),
        ("It hurts. Headahce and fever", "It hurts. Headache and fever"),
        # punctuation and spacing around a word survive
        ("(antibiotc), recusrion!", "(antibiotic), recursion!"),
    ],
)
def test_mends_misspelt_words(correct: SpellingCorrector, text: str, expected: str) -> None:
    assert correct(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "What are the side effects of metformin?",  # every word known
        "teh meds npm",  # under five letters: often jargon
        "HCl in water, ResNets and kPa",  # a capital inside the word
        "I take Advair daily",  # a capitalised word inside a sentence is a name
        "x2 snake_case \\frac couldn't",  # glued to digits, underscores, backslash, apostrophe
        "naïve Müller",  # outside the dictionary's alphabet
        "zzzzzzzzqqq",  # nothing close enough
    ],
)
def test_leaves_alone(correct: SpellingCorrector, text: str) -> None:
    assert correct(text) == text


def test_a_known_word_is_kept_even_if_the_dictionary_lacks_it() -> None:
    assert "vapor" not in english_dictionary().words  # the dictionary spells it "vapour"
    assert SpellingCorrector()("water vapor") == "water vapour"
    kept = SpellingCorrector(known=lambda word: word == "vapor")
    assert kept("water vapor") == "water vapor"


def test_the_dictionary_is_built_once_per_process_with_the_compiled_distance() -> None:
    assert english_dictionary() is english_dictionary()
    assert len(english_dictionary().words) > 80_000
    comparer = english_dictionary().distance_comparer._distance_comparer
    assert type(comparer).__name__ == "DamerauOsaFast"  # editdistpy, not the Python fallback


def test_words_past_the_window_or_the_lookup_budget_are_left_as_written() -> None:
    assert SpellingCorrector(max_words=3)("one two undrestand recusrion") == (
        "one two understand recusrion"
    )
    # Known words cost no lookup; the budget counts unknown ones only.
    assert SpellingCorrector(max_lookups=1)("undrestand the recusrion") == (
        "understand the recusrion"
    )


def test_totals_count_replaced_words_and_words_the_budget_left_unchecked() -> None:
    correct = SpellingCorrector(max_lookups=2)
    assert correct.totals() == (0, 0)
    correct("What are the side effects of metformin?")  # nothing unknown
    correct("zzzzzzzzqqq")  # looked up, nothing close: not replaced
    assert correct.totals() == (0, 0)
    correct("undrestand recusrion, undrestand pnuemonai")  # the third and fourth unchecked
    assert correct.totals() == (2, 2)
    correct("undrestand")  # a remembered verdict still counts
    assert correct.totals() == (3, 2)
