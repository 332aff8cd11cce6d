"""Diversity of sampled responses: Self-BLEU and distinct-n.

Self-BLEU follows the RSPO authors' definition. For each prompt, each of its N samples
is scored with NLTK's ``sentence_bleu`` against the other N - 1 samples as references,
with uniform 3-gram weights (1/3, 1/3, 1/3) and ``SmoothingFunction().method1``. The
scores are averaged over the samples of a prompt, then over prompts. Lower is more
diverse. The RSPO experiments draw N = 16 samples per prompt (:data:`RSPO_NUM_SAMPLES`).

Tokens come from ``nltk.word_tokenize`` when NLTK's Punkt sentence model (``punkt_tab``)
is installed. Otherwise they come from :func:`treebank_tokenize`, which needs no NLTK
data, and the result records which tokenizer was used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

from nltk.tokenize import NLTKWordTokenizer, word_tokenize
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from rspo_bench.logs import get_logger

logger = get_logger(__name__)

RSPO_NUM_SAMPLES = 16
DEFAULT_MAX_N = 3

TOKENIZER_AUTO = "auto"
TOKENIZER_WORD_TOKENIZE = "nltk.word_tokenize"
TOKENIZER_TREEBANK = "nltk.NLTKWordTokenizer+regex_sentences"
TOKENIZERS = (TOKENIZER_AUTO, TOKENIZER_WORD_TOKENIZE, TOKENIZER_TREEBANK)

# A sentence ends at whitespace that follows '.', '!' or '?' (optionally followed by one
# closing quote or bracket) when the next character is not a lowercase letter. Punkt also
# recognizes abbreviations such as "Mr.", which this rule splits after.
_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[^\sa-z])")
_treebank_word_tokenizer = NLTKWordTokenizer()


@cache
def punkt_available() -> bool:
    """Return True when ``nltk.word_tokenize`` can load its Punkt sentence model."""
    try:
        word_tokenize("Punkt check. Second sentence.")
    except LookupError:
        return False
    return True


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with the regular expression that replaces Punkt when its data is missing."""
    return [sentence for sentence in _SENTENCE_BREAK.split(text) if sentence]


def treebank_tokenize(text: str) -> list[str]:
    """Tokenize like ``nltk.word_tokenize`` without NLTK data files.

    The text is split into sentences by :func:`split_sentences`, and each sentence is
    tokenized by ``NLTKWordTokenizer``, the improved Treebank tokenizer that
    ``word_tokenize`` applies to each Punkt sentence. On a single sentence the two
    tokenizers give the same tokens. They differ where Punkt and the regular expression
    split sentences differently, which moves a period between a word and its own token.
    """
    tokens = []
    for sentence in split_sentences(text):
        tokens.extend(_treebank_word_tokenizer.tokenize(sentence))
    return tokens


# Set once the fallback tokenizer has been announced, so the message appears once per process.
_FALLBACK_LOGGED: list[bool] = []


def resolve_tokenizer(name: str = TOKENIZER_AUTO) -> tuple[str, Callable[[str], list[str]]]:
    """Return a tokenizer's name and function; ``auto`` prefers ``word_tokenize`` if Punkt is installed."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}. Use one of {', '.join(TOKENIZERS)}.")
    if name == TOKENIZER_AUTO:
        if punkt_available():
            name = TOKENIZER_WORD_TOKENIZE
        else:
            if not _FALLBACK_LOGGED:
                _FALLBACK_LOGGED.append(True)
                logger.info(
                    "NLTK's punkt_tab data is not installed, so Self-BLEU tokenizes with NLTKWordTokenizer "
                    "on regex-split sentences"
                )
            name = TOKENIZER_TREEBANK
    if name == TOKENIZER_WORD_TOKENIZE:
        if not punkt_available():
            raise LookupError(
                "nltk.word_tokenize needs NLTK's punkt_tab data, which is not installed. Install it with "
                f"nltk.download('punkt_tab') or use tokenizer={TOKENIZER_TREEBANK!r}."
            )
        return name, word_tokenize
    return name, treebank_tokenize


def _check_samples(
    samples_per_prompt: Sequence[Sequence[str]], minimum: int, num_samples: int | None
) -> None:
    if isinstance(samples_per_prompt, str) or not samples_per_prompt:
        raise ValueError(
            "samples_per_prompt must be a non-empty list with one list of sample strings per prompt"
        )
    problems = []
    for prompt, samples in enumerate(samples_per_prompt):
        if isinstance(samples, str):
            problems.append(f"prompt {prompt}: expected a list of samples, got a string")
            continue
        if num_samples is not None and len(samples) != num_samples:
            problems.append(f"prompt {prompt}: {len(samples)} samples, expected {num_samples}")
        elif len(samples) < minimum:
            problems.append(f"prompt {prompt}: {len(samples)} samples, at least {minimum} needed")
        for position, sample in enumerate(samples):
            if not isinstance(sample, str):
                problems.append(
                    f"prompt {prompt} sample {position}: expected a string, got {type(sample).__name__}"
                )
    if problems:
        listed = "; ".join(problems[:10])
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(f"invalid samples: {listed}{more}")


def self_bleu(
    samples_per_prompt: Sequence[Sequence[str]],
    *,
    max_n: int = DEFAULT_MAX_N,
    tokenizer: str = TOKENIZER_AUTO,
    num_samples: int | None = None,
) -> dict[str, Any]:
    """Compute Self-BLEU (0 to 1, lower is more diverse) over prompts with at least two samples each.

    ``max_n`` sets the BLEU order, with uniform weights ``1 / max_n``. ``num_samples``, when
    given, requires exactly that many samples per prompt. Returns ``self_bleu`` (the mean
    over prompts), ``per_prompt`` scores, ``tokenizer``, ``max_n``, ``weights``,
    ``smoothing`` and ``num_prompts``. A sample that shares no token with the other
    samples scores 0, as NLTK defines it.
    """
    if max_n < 1:
        raise ValueError(f"max_n must be at least 1, got {max_n}")
    _check_samples(samples_per_prompt, 2, num_samples)
    tokenizer_name, tokenize = resolve_tokenizer(tokenizer)
    weights = (1.0 / max_n,) * max_n
    smoothing = SmoothingFunction().method1

    per_prompt = []
    for samples in samples_per_prompt:
        tokens = [tokenize(sample) for sample in samples]
        scores = []
        for index, hypothesis in enumerate(tokens):
            references = tokens[:index] + tokens[index + 1 :]
            score = sentence_bleu(references, hypothesis, weights=weights, smoothing_function=smoothing)
            scores.append(score)
        per_prompt.append(math.fsum(scores) / len(scores))

    return {
        "self_bleu": math.fsum(per_prompt) / len(per_prompt),
        "per_prompt": per_prompt,
        "tokenizer": tokenizer_name,
        "max_n": max_n,
        "weights": weights,
        "smoothing": "method1",
        "num_prompts": len(per_prompt),
    }


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[start : start + n]) for start in range(len(tokens) - n + 1)]


def distinct_n(
    samples_per_prompt: Sequence[Sequence[str]],
    n: int,
    *,
    tokenizer: str = TOKENIZER_AUTO,
) -> float:
    """Compute distinct-n: unique n-grams over all n-grams of a prompt's samples, averaged over prompts.

    Higher is more diverse. Prompts whose samples contain no n-gram (all shorter than n
    tokens) are left out of the average, and NaN is returned when every prompt is.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    _check_samples(samples_per_prompt, 1, None)
    _, tokenize = resolve_tokenizer(tokenizer)

    ratios = []
    for samples in samples_per_prompt:
        ngrams = [ngram for sample in samples for ngram in _ngrams(tokenize(sample), n)]
        if ngrams:
            ratios.append(len(set(ngrams)) / len(ngrams))
    skipped = len(samples_per_prompt) - len(ratios)
    if skipped:
        logger.warning(
            "distinct-%d leaves out %d prompts whose samples have fewer than %d tokens", n, skipped, n
        )
    if not ratios:
        return math.nan
    return math.fsum(ratios) / len(ratios)
