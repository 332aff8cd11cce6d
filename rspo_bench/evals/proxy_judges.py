"""Arena-Hard and MT-Bench judgments from a pairwise preference oracle, with no LLM.

Any oracle with ``name`` and ``batch_preferences(instructions, a, b)``, which returns
P(a[i] preferred over b[i]) for each row, serves: the offline proxy judge, PairRM or a reward model. The records follow the
benchmarks' own judgment schemas, so the scoring code that reproduces the published
leaderboards scores them too. Their judge names end in ``(proxy)``, and reports label
the numbers as proxy numbers: they rank policies of one sweep and are not comparable
with leaderboard scores from GPT-4 judges.

- **Arena-Hard** (2024 judgment schema): game 1 shows the baseline as A and the model
  as B, game 2 the reverse. With p = P(A preferred over B) from the oracle, in that
  order, the verdict is ``A>>B`` for p >= 0.8, ``A>B`` for 0.6 <= p < 0.8, ``A=B``
  for 0.4 < p < 0.6, ``B>A`` for 0.2 < p <= 0.4 and ``B>>A`` for p <= 0.2.
- **MT-Bench** (FastChat single-judgment schema): the rating of an answer to one turn
  is ``1 + 9 * P(answer preferred over the reference model's answer to that turn)``,
  rounded to two decimals; the instruction is that turn's question. A rating of 5.5
  means "as good as the reference answer" in the oracle's eyes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from rspo_bench.evals.generation import question_text
from rspo_bench.logs import get_logger

logger = get_logger(__name__)

PROXY_SUFFIX = " (proxy)"
MT_BENCH_PROXY_PROMPT = "proxy-pairwise-vs-{reference}"


class PairwiseOracle(Protocol):
    name: str

    def batch_preferences(
        self, instructions: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> np.ndarray:
        """Return P(responses_a[i] preferred over responses_b[i] | instructions[i]) for each row."""


def proxy_name(oracle: PairwiseOracle) -> str:
    return f"{oracle.name}{PROXY_SUFFIX}"


def arena_hard_verdict(probability: float) -> str:
    """Map P(A preferred over B) to an Arena-Hard verdict label (see the module docstring)."""
    if probability >= 0.8:
        return "A>>B"
    if probability >= 0.6:
        return "A>B"
    if probability > 0.4:
        return "A=B"
    if probability > 0.2:
        return "B>A"
    return "B>>A"


def judge_arena_hard(
    oracle: PairwiseOracle,
    questions: Sequence[Mapping[str, Any]],
    answers: Mapping[Any, str],
    model: str,
    baseline_answers: Mapping[Any, str],
) -> list[dict[str, Any]]:
    """Return 2024-schema judgments of a model's answers against the baseline's, two games each.

    A question without an answer of the model or of the baseline is an error that names it.
    """
    missing = [str(q["question_id"]) for q in questions
               if q["question_id"] not in answers or q["question_id"] not in baseline_answers]
    if missing:
        raise ValueError(
            f"Arena-Hard proxy judge: {len(missing)} questions lack an answer of {model} or of the baseline, "
            f"e.g. {', '.join(missing[:5])}"
        )
    judge = proxy_name(oracle)
    texts = [question_text(question) for question in questions]
    ids = [question["question_id"] for question in questions]
    model_answers = [answers[question_id] for question_id in ids]
    baseline = [baseline_answers[question_id] for question_id in ids]
    logger.info("Arena-Hard proxy judge %s: %d questions, two games each", judge, len(ids))
    # Game 1 shows the baseline as A, game 2 the model as A.
    game_probabilities = (
        oracle.batch_preferences(texts, baseline, model_answers),
        oracle.batch_preferences(texts, model_answers, baseline),
    )
    records = []
    for row, question_id in enumerate(ids):
        games = []
        for probabilities in game_probabilities:
            probability = float(probabilities[row])
            verdict = arena_hard_verdict(probability)
            games.append({
                "user_prompt": f"{judge}: P(A preferred over B) for the question and the two answers",
                "judgment": f"P(A preferred over B) = {probability:.4f}. My final verdict is: [[{verdict}]]",
                "score": verdict,
            })
        records.append({"question_id": question_id, "model": model, "judge": judge, "games": games})
    return records


def judge_mt_bench(
    oracle: PairwiseOracle,
    questions: Sequence[Mapping[str, Any]],
    answers: Mapping[Any, Sequence[str]],
    model: str,
    reference_answers: Mapping[Any, Sequence[str]],
    *,
    reference_model: str,
) -> list[dict[str, Any]]:
    """Return FastChat single-judgment records (both turns) rating each answer against the reference's."""
    missing = [str(q["question_id"]) for q in questions
               if q["question_id"] not in answers or q["question_id"] not in reference_answers]
    if missing:
        raise ValueError(
            f"MT-Bench proxy judge: {len(missing)} questions lack an answer of {model} or of the reference "
            f"model {reference_model}, e.g. {', '.join(missing[:5])}"
        )
    judge = [proxy_name(oracle), MT_BENCH_PROXY_PROMPT.format(reference=reference_model)]
    records = []
    for turn in (1, 2):
        ids = [question["question_id"] for question in questions]
        instructions = [question_text(question, turn - 1) for question in questions]
        model_answers = [str(answers[question_id][turn - 1]) for question_id in ids]
        references = [str(reference_answers[question_id][turn - 1]) for question_id in ids]
        logger.info("MT-Bench proxy judge %s: turn %d of %d questions", judge[0], turn, len(ids))
        probabilities = oracle.batch_preferences(instructions, model_answers, references)
        for question_id, instruction, probability in zip(ids, instructions, probabilities, strict=True):
            rating = round(1.0 + 9.0 * float(probability), 2)
            records.append({
                "question_id": question_id,
                "model": model,
                "judge": judge,
                "user_prompt": instruction,
                "judgment": f"P(answer preferred over {reference_model}'s) = {float(probability):.4f}. "
                            f"Rating: [[{rating}]]",
                "score": rating,
                "turn": turn,
                "tstamp": time.time(),
            })
    return records
