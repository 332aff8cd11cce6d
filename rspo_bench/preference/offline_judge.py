"""Offline, deterministic preference oracle used in place of an LLM judge.

Each response is scored on its own, so neither compared response serves as a
reference for the other::

    s(x, y) = w_rel * relevance(x, y) + w_flu * fluency(y) + b * verbosity(y)
    P(y_i > y_j | x) = sigmoid((s_i - s_j) / temperature)

- ``relevance(x, y)`` is the share of the instruction's distinct content words
  that also occur in the response. Content words are lowercased alphanumeric
  tokens that are not scikit-learn English stopwords, with a light plural and
  possessive suffix stripping (:func:`normalize_word`). A response to an
  instruction without content words gets relevance 1, and an empty response 0.
- ``fluency(y)`` is ``clip(1 - l(y) / l_floor, 0, 1)``, where ``l(y)`` is the
  mean per-token natural-log probability of the response under a Witten-Bell
  interpolated word-bigram language model, and ``l_floor = -log(N + V + 1)``
  is the log probability of an out-of-vocabulary word after an unseen context
  (N training tokens, V word types). The model is estimated once, by
  :meth:`OfflineJudge.fit`, from reference answers to training prompts
  (UltraFeedback ``chosen`` responses, never AlpacaEval data). Each sentence
  is scored separately between ``<s>`` and ``</s>``, so repeating a response
  verbatim leaves its fluency unchanged. An empty response gets fluency 0.
- ``verbosity(y) = log(1 + len(y) / 100)`` with ``len`` in characters. Its
  weight ``b = verbosity_bias`` models the known preference of LLM judges for
  longer answers, and ``b = 0`` removes it.

The numbers depend only on the inputs, the parameters and the fitted counts:
no randomness and no ``hash()`` are involved, so they agree across processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from rspo_bench.data import load_ultrafeedback
from rspo_bench.logs import get_logger
from rspo_bench.preference.base import (
    bradley_terry_matrix,
    bradley_terry_preferences,
    check_same_length,
    complete_from_upper,
    sigmoid,
)

logger = get_logger(__name__)

FORMULA_VERSION = "offline-proxy-judge-v1"
SAVE_FORMAT = 1

BOS = "<s>"
EOS = "</s>"
NUMBER = "<num>"

STOPWORDS = frozenset(ENGLISH_STOP_WORDS)
_WORD_PATTERN = re.compile(r"[a-z]+|[0-9]+")
# A sentence ends at a line break, or at ., ! or ? followed by whitespace unless a digit
# precedes it, so that the "1." of a numbered list stays with its item.
_SENTENCE_BREAK = re.compile(r"(?<=[^0-9\s][.!?])\s+|\n+")


def normalize_word(word: str) -> str:
    """Strip a plural or possessive suffix from a lowercased word ("studies" -> "study", "cats" -> "cat")."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """Return the normalized non-stopword tokens of a text, as a set."""
    words = set()
    for token in _WORD_PATTERN.findall(text.lower()):
        if token in STOPWORDS or (len(token) < 2 and not token.isdigit()):
            continue
        words.add(normalize_word(token))
    return words


def sentence_tokens(text: str) -> list[list[str]]:
    """Split a text into sentences of lowercased word tokens, with each digit run replaced by ``<num>``."""
    sentences = []
    for piece in _SENTENCE_BREAK.split(text.lower()):
        tokens = [NUMBER if token.isdigit() else token for token in _WORD_PATTERN.findall(piece)]
        if tokens:
            sentences.append(tokens)
    return sentences


def verbosity(text: str) -> float:
    """Return ``log(1 + len(text) / 100)``, the length feature (characters)."""
    return math.log1p(len(text) / 100.0)


@dataclass(frozen=True)
class JudgeParameters:
    """Weights of the score and the temperature of the preference probability."""

    relevance_weight: float = 1.0
    fluency_weight: float = 4.0
    verbosity_bias: float = 0.5
    temperature: float = 0.5

    def __post_init__(self) -> None:
        if self.verbosity_bias < 0:
            raise ValueError(f"invalid verbosity_bias {self.verbosity_bias}: expected a value >= 0")
        if self.relevance_weight < 0 or self.fluency_weight < 0:
            raise ValueError(
                f"invalid relevance_weight {self.relevance_weight} or fluency_weight {self.fluency_weight}: "
                f"expected values >= 0"
            )
        if not self.temperature > 0:
            raise ValueError(f"invalid temperature {self.temperature}: expected a value > 0")


class BigramLanguageModel:
    """Witten-Bell interpolated word-bigram model with an add-one unigram back-off.

    ``P(w | v) = (c(v, w) + T(v) * P_uni(w)) / (c(v) + T(v))``, where ``c(v)`` counts
    bigrams starting with ``v`` and ``T(v)`` their distinct followers. For an unseen
    context this reduces to ``P_uni(w) = (c(w) + 1) / (N + V + 1)``, which also
    leaves probability ``1 / (N + V + 1)`` for any out-of-vocabulary word.
    """

    def __init__(self, unigram_counts: dict[str, int], bigram_counts: dict[tuple[str, str], int]):
        self.unigram_counts = dict(sorted(unigram_counts.items()))
        self.bigram_counts = dict(sorted(bigram_counts.items()))
        self.num_tokens = sum(self.unigram_counts.values())
        self.num_types = len(self.unigram_counts)
        self._unigram_denominator = self.num_tokens + self.num_types + 1
        self.log_floor = -math.log(self._unigram_denominator)

        context_totals: Counter[str] = Counter()
        context_types: Counter[str] = Counter()
        for (previous, _), count in self.bigram_counts.items():
            context_totals[previous] += count
            context_types[previous] += 1
        self._context_totals = dict(context_totals)
        self._context_types = dict(context_types)

    @classmethod
    def fit(cls, texts: Iterable[str]) -> BigramLanguageModel:
        """Count the unigrams (predicted tokens, ``</s>`` included) and bigrams of the texts."""
        unigrams: Counter[str] = Counter()
        bigrams: Counter[tuple[str, str]] = Counter()
        for text in texts:
            for sentence in sentence_tokens(text):
                padded = [BOS, *sentence, EOS]
                unigrams.update(padded[1:])
                bigrams.update(zip(padded[:-1], padded[1:]))
        if not unigrams:
            raise ValueError("failed to fit the fluency language model: the reference texts contain no words")
        return cls(dict(unigrams), dict(bigrams))

    def unigram_probability(self, word: str) -> float:
        return (self.unigram_counts.get(word, 0) + 1) / self._unigram_denominator

    def conditional_probability(self, previous: str, word: str) -> float:
        """Return ``P(word | previous)``."""
        total = self._context_totals.get(previous, 0)
        if total == 0:
            return self.unigram_probability(word)
        types = self._context_types[previous]
        count = self.bigram_counts.get((previous, word), 0)
        return (count + types * self.unigram_probability(word)) / (total + types)

    def mean_log_probability(self, text: str) -> float | None:
        """Return the mean natural-log probability per predicted token, or None for a text without words."""
        total = 0.0
        count = 0
        for sentence in sentence_tokens(text):
            padded = [BOS, *sentence, EOS]
            for previous, word in zip(padded[:-1], padded[1:]):
                total += math.log(self.conditional_probability(previous, word))
                count += 1
        if count == 0:
            return None
        return total / count

    def to_json(self) -> dict[str, Any]:
        return {
            "unigram_counts": self.unigram_counts,
            "bigram_counts": {
                f"{previous} {word}": count for (previous, word), count in self.bigram_counts.items()
            },
        }

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> BigramLanguageModel:
        bigrams = {}
        for key, count in state["bigram_counts"].items():
            previous, word = key.split(" ")
            bigrams[(previous, word)] = int(count)
        return cls({word: int(count) for word, count in state["unigram_counts"].items()}, bigrams)


class OfflineJudge:
    """Offline proxy judge that returns P(response_a preferred over response_b | instruction).

    Build it with :meth:`fit` (any reference texts) or :meth:`fit_ultrafeedback`
    (the training split's ``chosen`` responses). See the module docstring for the formula.
    """

    def __init__(self, language_model: BigramLanguageModel, parameters: JudgeParameters):
        self.language_model = language_model
        self.parameters = parameters
        self._fingerprint: str | None = None

    @classmethod
    def fit(
        cls,
        reference_texts: Sequence[str],
        *,
        verbosity_bias: float = JudgeParameters.verbosity_bias,
        relevance_weight: float = JudgeParameters.relevance_weight,
        fluency_weight: float = JudgeParameters.fluency_weight,
        temperature: float = JudgeParameters.temperature,
    ) -> OfflineJudge:
        """Estimate the fluency language model from reference texts and set the formula's parameters."""
        if isinstance(reference_texts, str):
            raise TypeError("reference_texts must be a sequence of strings, not one string")
        parameters = JudgeParameters(
            relevance_weight=float(relevance_weight),
            fluency_weight=float(fluency_weight),
            verbosity_bias=float(verbosity_bias),
            temperature=float(temperature),
        )
        language_model = BigramLanguageModel.fit(reference_texts)
        logger.info(
            "fitted offline judge language model on %d texts: %d tokens, %d word types, %d bigram types",
            len(reference_texts),
            language_model.num_tokens,
            language_model.num_types,
            len(language_model.bigram_counts),
        )
        return cls(language_model, parameters)

    @classmethod
    def fit_ultrafeedback(
        cls, data_dir: str | os.PathLike[str] | None = None, **parameters: float
    ) -> OfflineJudge:
        """Fit on the ``chosen`` responses of the UltraFeedback training split in the data folder."""
        records = load_ultrafeedback("train", data_dir)
        return cls.fit([record["chosen"] for record in records], **parameters)

    @property
    def name(self) -> str:
        """Judge identifier for reports and annotation files."""
        return FORMULA_VERSION

    # Scores

    def relevance(self, instruction: str, response: str) -> float:
        """Return the share of the instruction's content words that the response contains."""
        if not response.strip():
            return 0.0
        instruction_words = content_words(instruction)
        if not instruction_words:
            return 1.0
        return len(instruction_words & content_words(response)) / len(instruction_words)

    def fluency(self, response: str) -> float:
        """Return the mean token log-probability mapped linearly from [OOV floor, 0] to [0, 1]."""
        mean_log_probability = self.language_model.mean_log_probability(response)
        if mean_log_probability is None:
            return 0.0
        return min(1.0, max(0.0, 1.0 - mean_log_probability / self.language_model.log_floor))

    def score(self, instruction: str, response: str) -> float:
        """Return s(x, y) = w_rel * relevance + w_flu * fluency + b * verbosity."""
        parameters = self.parameters
        return (
            parameters.relevance_weight * self.relevance(instruction, response)
            + parameters.fluency_weight * self.fluency(response)
            + parameters.verbosity_bias * verbosity(response)
        )

    def scores(self, instruction: str, responses: Sequence[str]) -> np.ndarray:
        """Return the scores of several responses to one instruction, shape [K]."""
        return np.array([self.score(instruction, response) for response in responses], dtype=np.float64)

    # Preferences

    def preference(self, instruction: str, response_a: str, response_b: str) -> float:
        """Return P(response_a preferred over response_b | instruction)."""
        difference = self.score(instruction, response_a) - self.score(instruction, response_b)
        return float(sigmoid(difference / self.parameters.temperature))

    def preference_matrix(self, instruction: str, responses: Sequence[str]) -> np.ndarray:
        """Return P[i, j] = P(responses[i] preferred over responses[j]), shape [K, K].

        The upper triangle is computed and the lower one set to ``1 - P``, so that
        ``P[i, j] + P[j, i] == 1`` up to one rounding and the diagonal is exactly 0.5.
        """
        scores = self.scores(instruction, responses)
        return complete_from_upper(bradley_terry_matrix(scores, self.parameters.temperature))

    def batch_preferences(
        self, instructions: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> np.ndarray:
        """Return P(responses_a[n] preferred over responses_b[n] | instructions[n]) for each n, shape [N]."""
        check_same_length(instructions=instructions, responses_a=responses_a, responses_b=responses_b)
        scores_a = np.array([self.score(x, y) for x, y in zip(instructions, responses_a)], dtype=np.float64)
        scores_b = np.array([self.score(x, y) for x, y in zip(instructions, responses_b)], dtype=np.float64)
        return bradley_terry_preferences(scores_a, scores_b, self.parameters.temperature)

    # Identity, persistence and description

    def _state(self) -> dict[str, Any]:
        return {
            "format": SAVE_FORMAT,
            "formula_version": FORMULA_VERSION,
            "parameters": {
                "relevance_weight": self.parameters.relevance_weight,
                "fluency_weight": self.parameters.fluency_weight,
                "verbosity_bias": self.parameters.verbosity_bias,
                "temperature": self.parameters.temperature,
            },
            "stopwords_sha256": hashlib.sha256("\n".join(sorted(STOPWORDS)).encode()).hexdigest(),
            "language_model": self.language_model.to_json(),
        }

    def fingerprint(self) -> str:
        """Return the sha256 of the formula version, the parameters and the fitted counts (a cache key)."""
        if self._fingerprint is None:
            canonical = json.dumps(self._state(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
            self._fingerprint = hashlib.sha256(canonical.encode("ascii")).hexdigest()
        return self._fingerprint

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the judge as JSON, from which :meth:`load` restores identical scores and fingerprint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self._state(), sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OfflineJudge:
        """Read a judge written by :meth:`save`."""
        path = Path(path)
        state = json.loads(path.read_text(encoding="utf-8"))
        if state.get("format") != SAVE_FORMAT or state.get("formula_version") != FORMULA_VERSION:
            raise ValueError(
                f"{path}: unsupported judge file (format {state.get('format')!r}, formula "
                f"{state.get('formula_version')!r}); expected format {SAVE_FORMAT} and {FORMULA_VERSION}. "
                f"Refit the judge with OfflineJudge.fit and save it again."
            )
        parameters = JudgeParameters(**state["parameters"])
        return cls(BigramLanguageModel.from_json(state["language_model"]), parameters)

    def description(self) -> str:
        """Return one paragraph that states the formula and its parameter values, for reports."""
        parameters = self.parameters
        model = self.language_model
        return (
            f"Preferences come from {self.name}, an offline proxy judge and not an LLM. Each response y to "
            f"an instruction x gets the score s = {parameters.relevance_weight:g} * relevance + "
            f"{parameters.fluency_weight:g} * fluency + {parameters.verbosity_bias:g} * verbosity, and "
            f"P(y_i preferred over y_j | x) = sigmoid((s_i - s_j) / {parameters.temperature:g}). "
            f"Relevance is "
            f"the share of the instruction's content words (lowercased, stopwords removed, plural suffixes "
            f"stripped) that the response contains. Fluency is 1 - l / l_floor clipped to [0, 1], where l is "
            f"the mean per-token log-probability under a Witten-Bell interpolated word-bigram model fitted "
            f"on {model.num_tokens} tokens ({model.num_types} word types) of reference answers to training "
            f"prompts, and l_floor = {model.log_floor:.4f} is the log-probability of an unknown word. "
            f"Verbosity is log(1 + characters / 100), so a verbosity weight above 0 favours longer "
            f"answers as LLM judges do. Fingerprint {self.fingerprint()[:16]}."
        )

    def __repr__(self) -> str:
        parameters = self.parameters
        return (
            f"OfflineJudge(relevance_weight={parameters.relevance_weight}, "
            f"fluency_weight={parameters.fluency_weight}, "
            f"verbosity_bias={parameters.verbosity_bias}, temperature={parameters.temperature}, "
            f"fingerprint={self.fingerprint()[:12]})"
        )
