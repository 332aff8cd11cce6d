"""Preference oracle backed by an LLM judge with the AlpacaEval 2 pairwise prompt.

For two responses y_i and y_j to an instruction x, the judge is asked twice, once
with y_i shown as output_1 and once with y_j shown as output_1. Each reply gives
``P(output_1 preferred) = 2 - preference`` from the log-probabilities of the label
token (:meth:`AlpacaEvalJudge.preference`), and::

    P(y_i > y_j | x) = (P(y_i first is preferred) + 1 - P(y_j first is preferred)) / 2

so that the judge's position bias cancels. ``P[j, i] = 1 - P[i, j]`` and the
diagonal is 1/2. Identical responses get 1/2 without a request. When one order's
reply has no label among its top log-probabilities, the other order alone is used,
and when both lack one the pair gets 1/2 (both cases are logged).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from rspo_bench.evals.judge_prompts import AlpacaEvalJudge
from rspo_bench.evals.judges import ChatJudgeClient, JudgeRequest, canonical_json
from rspo_bench.logs import get_logger
from rspo_bench.preference.base import (
    GroupedPreferenceOracle,
    check_same_length,
    preference_matrices_from_pairs,
)

logger = get_logger(__name__)

ORACLE_VERSION = "llm-judge-alpaca-eval-pairwise-v1"


class LLMJudgeOracle(GroupedPreferenceOracle):
    """Preference oracle with the interface of :class:`~rspo_bench.preference.offline_judge.OfflineJudge`.

    Args:
        client: the judge endpoint, whose cache makes repeated comparisons free.
        judge: the AlpacaEval annotator; by default read from the data folder.
        data_dir: data folder for the default annotator.
        run: accounting run name under which the client counts this oracle's requests.
    """

    def __init__(
        self,
        client: ChatJudgeClient,
        judge: AlpacaEvalJudge | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        run: str = "preference_oracle",
    ):
        self.client = client
        self.judge = judge if judge is not None else AlpacaEvalJudge.from_data(data_dir)
        self.run = run
        self._fingerprint: str | None = None

    @property
    def name(self) -> str:
        """Oracle identifier for reports and annotation files."""
        return f"llm-judge:{self.client.model}"

    # Preferences

    def preference(self, instruction: str, response_a: str, response_b: str) -> float:
        """Return P(response_a preferred over response_b | instruction)."""
        return float(self.batch_preferences([instruction], [response_a], [response_b])[0])

    def preference_matrices(
        self, instructions: Sequence[str], response_groups: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """Return one preference matrix per instruction, sending all their requests as one batch.

        Only the pairs i < j are judged, because the judge already averages both orders.
        """
        check_same_length(instructions=instructions, response_groups=response_groups)
        if any(isinstance(responses, str) for responses in response_groups):
            raise TypeError("each response group must be a sequence of strings, not one string")
        return preference_matrices_from_pairs(instructions, response_groups, self.batch_preferences)

    def batch_preferences(
        self, instructions: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> np.ndarray:
        """Return P(responses_a[n] preferred over responses_b[n] | instructions[n]) for each n, shape [N]."""
        check_same_length(instructions=instructions, responses_a=responses_a, responses_b=responses_b)
        requests: list[JudgeRequest] = []
        asked = []
        triples = zip(instructions, responses_a, responses_b)
        for n, (instruction, response_a, response_b) in enumerate(triples):
            if response_a == response_b:
                continue
            requests.append(self.judge.request(instruction, response_a, response_b))
            requests.append(self.judge.request(instruction, response_b, response_a))
            asked.append(n)
        responses = self.client.complete_many(requests, run=self.run, desc="LLM judge preferences")

        probabilities = np.full(len(instructions), 0.5)
        one_order = 0
        no_order = 0
        for position, n in enumerate(asked):
            a_first = self._first_preferred(responses[2 * position].top_logprobs(0))
            b_first = self._first_preferred(responses[2 * position + 1].top_logprobs(0))
            estimates = [value for value in (a_first, 1.0 - b_first) if not math.isnan(value)]
            if len(estimates) == 1:
                one_order += 1
            if not estimates:
                no_order += 1
                continue
            probabilities[n] = sum(estimates) / len(estimates)
        if one_order or no_order:
            logger.warning(
                "%s: %d of %d pairs had a judge reply without a label in its top log-probabilities; "
                "%d of them use the other order only and %d are set to 0.5",
                self.name,
                one_order + no_order,
                len(asked),
                one_order,
                no_order,
            )
        return probabilities

    def _first_preferred(self, top_logprobs: dict[str, float]) -> float:
        """Return P(output_1 preferred) of one reply, NaN without a label."""
        return 2.0 - self.judge.preference(top_logprobs)

    # Identity and description

    def _state(self) -> dict[str, Any]:
        judge = self.judge
        return {
            "oracle_version": ORACLE_VERSION,
            "model": self.client.model,
            "annotator": judge.annotator,
            "prompt_template_sha256": hashlib.sha256(judge.prompt_template.encode("utf-8")).hexdigest(),
            "temperature": judge.temperature,
            "max_tokens": judge.max_tokens,
            "top_logprobs": judge.top_logprobs,
            "numerator_token": judge.numerator_token,
            "denominator_tokens": list(judge.denominator_tokens),
            "is_binarize": judge.is_binarize,
        }

    def fingerprint(self) -> str:
        """Return the sha256 of the judge model, prompt and parsing settings (a cache key).

        The endpoint URL is not part of it, in line with the client's cache keys.
        """
        if self._fingerprint is None:
            self._fingerprint = hashlib.sha256(canonical_json(self._state()).encode("utf-8")).hexdigest()
        return self._fingerprint

    def description(self) -> str:
        """Return one paragraph that states how preferences are computed, for reports."""
        judge = self.judge
        labels = " and ".join(repr(token) for token in judge.denominator_tokens)
        return (
            f"Preferences come from {self.name}, the LLM judge {self.client.model!r} prompted with the "
            f"AlpacaEval 2 annotator {judge.annotator} (temperature {judge.temperature:g}, "
            f"max_tokens {judge.max_tokens}, top {judge.top_logprobs} log-probabilities). Each pair of "
            f"responses is judged in both orders, P(first output preferred) is the probability of the label "
            f"{judge.numerator_token!r} relative to the labels {labels}, and the two orders are averaged "
            f"so that the judge's position bias cancels. P(y_j > y_i) = 1 - P(y_i > y_j) and identical "
            f"responses get 0.5. Fingerprint {self.fingerprint()[:16]}."
        )

    def __repr__(self) -> str:
        return f"LLMJudgeOracle(model={self.client.model!r}, fingerprint={self.fingerprint()[:12]})"
