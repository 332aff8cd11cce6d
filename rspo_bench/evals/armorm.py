"""ArmoRM reward scores of a policy's answers: ``armorm/score`` and ``armorm/<objective>``.

ArmoRM-Llama3-8B-v0.1 loads with ``AutoModelForSequenceClassification`` and
``trust_remote_code=True``, as its model card prescribes. Its output carries ``score``,
the gated preference score, and ``rewards``, 19 objective rewards in the order of
:data:`ARMORM_OBJECTIVES` (the model card's list). :class:`RewardModelJudge` reads both.
A reward model with another number of objectives gets the names ``objective_<i>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rspo_bench.logs import get_logger
from rspo_bench.preference.reward_model import RewardModelJudge, RewardOutputs

logger = get_logger(__name__)

ARMORM_OBJECTIVES = (
    "helpsteer-helpfulness", "helpsteer-correctness", "helpsteer-coherence", "helpsteer-complexity",
    "helpsteer-verbosity", "ultrafeedback-overall_score", "ultrafeedback-instruction_following",
    "ultrafeedback-truthfulness", "ultrafeedback-honesty", "ultrafeedback-helpfulness", "beavertails-is_safe",
    "prometheus-score", "argilla-overall_quality", "argilla-judge_lm", "code-complexity", "code-style",
    "code-explanation", "code-instruction-following", "code-readability",
)


def objective_names(count: int) -> tuple[str, ...]:
    """Return ArmoRM's objective names for 19 objectives, else ``objective_0`` ... ``objective_<count-1>``."""
    if count == len(ARMORM_OBJECTIVES):
        return ARMORM_OBJECTIVES
    return tuple(f"objective_{index}" for index in range(count))


def reward_metrics(outputs: RewardOutputs) -> dict[str, float]:
    """Return the mean score as ``armorm/score`` and the mean of each objective as ``armorm/<name>``."""
    if len(outputs.rewards) == 0:
        raise ValueError("no answers to score: the reward model received an empty list")
    metrics = {"armorm/score": float(np.mean(outputs.rewards))}
    if outputs.objective_rewards is not None:
        names = objective_names(outputs.objective_rewards.shape[1])
        for name, column in zip(names, outputs.objective_rewards.T, strict=True):
            metrics[f"armorm/{name}"] = float(np.mean(column))
    return metrics


def score_answers(
    judge: RewardModelJudge, instructions: Sequence[str], answers: Sequence[str]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score (instruction, answer) pairs; return the metrics and one record per answer."""
    logger.info("ArmoRM: scoring %d answers with %s", len(answers), judge.name)
    outputs = judge.reward_outputs(instructions, answers)
    names = objective_names(outputs.objective_rewards.shape[1]) if outputs.objective_rewards is not None else ()
    records = []
    for row, (instruction, answer) in enumerate(zip(instructions, answers, strict=True)):
        record: dict[str, Any] = {"instruction": instruction, "output": answer, "score": float(outputs.rewards[row])}
        if outputs.objective_rewards is not None:
            record["objectives"] = dict(zip(names, map(float, outputs.objective_rewards[row]), strict=True))
        records.append(record)
    return reward_metrics(outputs), records
