"""Tests of Self-BLEU and distinct-n against hand-computed values."""

from __future__ import annotations

import math

import pytest
from nltk.tokenize import NLTKWordTokenizer, word_tokenize

from rspo_bench.evals.diversity import (
    TOKENIZER_TREEBANK,
    TOKENIZER_WORD_TOKENIZE,
    distinct_n,
    punkt_available,
    self_bleu,
    split_sentences,
    treebank_tokenize,
)

SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank"
SINGLE_SENTENCES = [
    "Hello, world!",
    "It's a \"quoted\" phrase, isn't it?",
    "Prices rose 3.5% (from $10 to $10.35) in the U.S. last year.",
    "Don't split e-mail addresses like a.b@example.com or URLs; they're fine.",
]


def test_self_bleu_identical_samples_is_one() -> None:
    result = self_bleu([[SENTENCE] * 4, [SENTENCE.upper()] * 3])

    assert result["self_bleu"] == pytest.approx(1.0, abs=1e-12)
    assert result["per_prompt"] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert result["num_prompts"] == 2


def test_self_bleu_disjoint_vocabulary_is_zero() -> None:
    samples = [["alpha beta gamma delta", "one two three four", "red green blue yellow"]]

    assert self_bleu(samples)["self_bleu"] == 0.0


def test_self_bleu_two_samples_by_hand() -> None:
    # "a b c d" against "a b c e": unigram precision 3/4, bigram 2/3, trigram 1/2, equal lengths.
    expected = (3 / 4 * 2 / 3 * 1 / 2) ** (1 / 3)

    result = self_bleu([["a b c d", "a b c e"]])

    assert result["per_prompt"][0] == pytest.approx(expected, rel=1e-12)
    assert result["self_bleu"] == pytest.approx(0.6299605249, rel=1e-9)


def test_self_bleu_smoothing_method1_by_hand() -> None:
    # "a b c d" against "a b e f": precisions 2/4 and 1/3, and method1 turns 0/2 trigrams into 0.1/2.
    expected = (2 / 4 * 1 / 3 * 0.1 / 2) ** (1 / 3)

    assert self_bleu([["a b c d", "a b e f"]])["self_bleu"] == pytest.approx(expected, rel=1e-12)


def test_self_bleu_averages_samples_then_prompts() -> None:
    # Prompt 1: "a b c d" and "a b c d" each see one identical and one disjoint reference, so
    # they score 1 (the best reference counts per n-gram). "w x y z" shares nothing and scores 0.
    # Prompt 2: two identical samples score 1.
    result = self_bleu([["a b c d", "a b c d", "w x y z"], ["p q r", "p q r"]])

    assert result["per_prompt"] == pytest.approx([2 / 3, 1.0], abs=1e-12)
    assert result["self_bleu"] == pytest.approx((2 / 3 + 1.0) / 2, abs=1e-12)


def test_self_bleu_brevity_penalty_by_hand() -> None:
    # "a b c" against "a b c d e": all precisions 1, brevity penalty exp(1 - 5/3).
    # "a b c d e" against "a b c": precisions 3/5, 2/4, 1/3 and no penalty.
    short = math.exp(1 - 5 / 3)
    long = (3 / 5 * 2 / 4 * 1 / 3) ** (1 / 3)

    result = self_bleu([["a b c", "a b c d e"]])

    assert result["self_bleu"] == pytest.approx((short + long) / 2, rel=1e-12)


def test_self_bleu_max_n_two_by_hand() -> None:
    result = self_bleu([["a b c d", "a b c e"]], max_n=2)

    assert result["weights"] == (0.5, 0.5)
    assert result["self_bleu"] == pytest.approx((3 / 4 * 2 / 3) ** 0.5, rel=1e-12)


def test_self_bleu_records_settings() -> None:
    result = self_bleu([["a b c d", "a b c e"]])

    expected_tokenizer = TOKENIZER_WORD_TOKENIZE if punkt_available() else TOKENIZER_TREEBANK
    assert result["tokenizer"] == expected_tokenizer
    assert result["max_n"] == 3
    assert result["weights"] == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert result["smoothing"] == "method1"


def test_self_bleu_rejects_single_sample() -> None:
    with pytest.raises(ValueError, match="prompt 1: 1 samples, at least 2 needed"):
        self_bleu([["a b", "c d"], ["only one"]])


def test_self_bleu_checks_sample_count() -> None:
    with pytest.raises(ValueError, match="prompt 0: 3 samples, expected 16"):
        self_bleu([["a", "b", "c"]], num_samples=16)


def test_self_bleu_rejects_string_prompt() -> None:
    with pytest.raises(ValueError, match="prompt 0: expected a list of samples"):
        self_bleu(["a b c"])


def test_distinct_n_identical_samples_minimal() -> None:
    samples = [[SENTENCE] * 4]
    num_tokens = len(SENTENCE.split())
    unique_unigrams = len(set(SENTENCE.split()))

    assert distinct_n(samples, 1) == pytest.approx(unique_unigrams / (4 * num_tokens))
    assert distinct_n(samples, 2) == pytest.approx(1 / 4)
    assert distinct_n(samples, 3) == pytest.approx(1 / 4)


def test_distinct_n_by_hand() -> None:
    # Prompt 1 tokens: a b a b | a b c. Unigrams: 3 unique of 7. Bigrams: ab ba ab | ab bc, 3 of 5.
    # Prompt 2: "x y z" twice. Unigrams 3 of 6, bigrams 2 of 4.
    samples = [["a b a b", "a b c"], ["x y z", "x y z"]]

    assert distinct_n(samples, 1) == pytest.approx((3 / 7 + 3 / 6) / 2)
    assert distinct_n(samples, 2) == pytest.approx((3 / 5 + 2 / 4) / 2)


def test_distinct_n_disjoint_samples_is_one() -> None:
    samples = [["alpha beta gamma", "one two three"]]

    for n in (1, 2, 3):
        assert distinct_n(samples, n) == 1.0


def test_distinct_n_skips_prompts_without_ngrams() -> None:
    assert distinct_n([["a b", "c"], ["a b c", "a b d"]], 3) == pytest.approx(1.0)
    assert math.isnan(distinct_n([["a b"]], 3))


def test_fallback_splits_sentences_like_punkt() -> None:
    text = 'Hello, world. It works! He said "Stop." Then he left.'

    assert split_sentences(text) == ["Hello, world.", "It works!", 'He said "Stop."', "Then he left."]
    assert treebank_tokenize("Hello, world. It works.") == ["Hello", ",", "world", ".", "It", "works", "."]


def test_fallback_keeps_lowercase_continuations() -> None:
    assert split_sentences("Use e.g. this one. Then stop.") == ["Use e.g. this one.", "Then stop."]


@pytest.mark.parametrize("sentence", SINGLE_SENTENCES)
def test_fallback_matches_nltk_tokenizer(sentence: str) -> None:
    assert treebank_tokenize(sentence) == NLTKWordTokenizer().tokenize(sentence)


@pytest.mark.skipif(not punkt_available(), reason="NLTK punkt_tab data is not installed")
@pytest.mark.parametrize("sentence", SINGLE_SENTENCES)
def test_fallback_matches_word_tokenize(sentence: str) -> None:
    assert treebank_tokenize(sentence) == word_tokenize(sentence)


@pytest.mark.skipif(punkt_available(), reason="NLTK punkt_tab data is installed")
def test_word_tokenize_without_punkt_raises() -> None:
    with pytest.raises(LookupError, match="punkt_tab"):
        self_bleu([["a b", "a c"]], tokenizer=TOKENIZER_WORD_TOKENIZE)
