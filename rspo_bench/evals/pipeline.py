"""AlpacaEval-2 evaluation of a tiny-world policy, with cached generations and judgments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..cache import stable_hash
from ..logs import get_logger
from ..selfplay import PolicyRef, TinyWorld
from . import alpaca_eval2
from .judge_prompts import ALPACA_EVAL_ANNOTATOR

logger = get_logger(__name__)


@dataclass
class EvalResult:
    """Metrics (percentages and characters), the model outputs and the annotation frame."""

    metrics: dict[str, Any]
    outputs: list[dict[str, Any]]
    annotations: pd.DataFrame


def _instruction_subset(world: TinyWorld) -> tuple[list[int], list[str], list[str]]:
    limit = world.config.evaluation.alpaca_eval2.max_instructions
    items = world.alpaca_instructions
    baseline = world.alpaca_baseline
    if len(baseline) != len(items):
        raise ValueError(f"the baseline file has {len(baseline)} outputs for {len(items)} instructions")
    indices = list(range(len(items))) if limit is None else _spread(len(items), limit)
    return indices, [items[i]["instruction"] for i in indices], [baseline[i]["output"] for i in indices]


def _spread(total: int, count: int) -> list[int]:
    """Return ``count`` canonical indices spread evenly over the ``total`` instructions."""
    return sorted({int(round(value)) for value in np.linspace(0, total - 1, count)})


def _llm_preferences(
    world: TinyWorld, instructions: list[str], outputs: list[str], baseline_outputs: list[str]
) -> list[float]:
    """Annotate with alpaca_eval's weighted GPT-4 Turbo annotator through the configured endpoint."""
    from .judge_prompts import AlpacaEvalJudge
    from .judges import ChatJudgeClient

    settings = world.config.evaluation.judge
    client = ChatJudgeClient(
        settings.base_url, settings.model, api_key_env=settings.api_key_env, max_concurrency=settings.max_concurrency
    )
    records = [
        {"instruction": text, "output_1": baseline, "output_2": output}
        for text, baseline, output in zip(instructions, baseline_outputs, outputs, strict=True)
    ]
    annotations = AlpacaEvalJudge.from_data(world.data_dir).annotate(client, records, run="alpaca_eval2")
    missing = [row for row, annotation in enumerate(annotations) if np.isnan(annotation["preference"])]
    if missing:
        raise ValueError(
            f"AlpacaEval-2 judge {settings.model}: {len(missing)} replies carry neither label among their top "
            f"log-probabilities (rows {missing[:10]}); the judge model must return top_logprobs, as "
            f"alpaca_eval's weighted annotator reads the label probabilities"
        )
    return [float(annotation["preference"]) for annotation in annotations]


def evaluate_alpaca_eval2(world: TinyWorld, policy: PolicyRef, *, generator: str) -> EvalResult:
    """Generate for the AlpacaEval instructions, judge against the baseline and compute the metrics."""
    settings = world.config.evaluation.alpaca_eval2
    indices, instructions, baseline_outputs = _instruction_subset(world)
    seed = world.config.seed * 1000 + 999
    inputs = {
        "policy": policy.key, "instructions": stable_hash(instructions),
        **world.sampling_inputs(settings.sampling, seed),
    }
    key = world.cache.key("eval_generations", inputs)

    def generate() -> list[str]:
        model, tokenizer = world.load_policy(policy)
        logger.info("AlpacaEval-2: generating for %d instructions", len(instructions))
        responses = world.generate(model, tokenizer, instructions, settings.sampling, seed=seed, num_samples=1)
        return [group[0] for group in responses]

    outputs = world.cache.compute_json("eval_generations", key, inputs, generate)

    judge_settings = world.config.evaluation.judge
    if judge_settings.kind == "llm":
        annotator = f"{ALPACA_EVAL_ANNOTATOR} ({judge_settings.model})"
        judge_identity: Any = {"kind": "llm", "model": judge_settings.model, "base_url": judge_settings.base_url}
    else:
        annotator = world.judge.name
        judge_identity = world.judge.fingerprint()
    judged_inputs = {"generations": key, "judge": judge_identity, "baseline": stable_hash(baseline_outputs)}
    judged_key = world.cache.key("eval_judgments", judged_inputs)

    def judge() -> list[float]:
        logger.info("AlpacaEval-2: judging %d outputs against the baseline with %s", len(outputs), annotator)
        if judge_settings.kind == "llm":
            return _llm_preferences(world, instructions, outputs, baseline_outputs)
        return alpaca_eval2.judge_outputs(world.judge, instructions, outputs, baseline_outputs).tolist()

    preferences = world.cache.compute_json("eval_judgments", judged_key, judged_inputs, judge)

    annotations = alpaca_eval2.annotations_frame(
        instructions, outputs, baseline_outputs, preferences,
        generator=generator, annotator=annotator,
        indices=None if len(indices) == len(world.alpaca_instructions) else indices,
        data_dir=world.data_dir,
    )
    metrics = alpaca_eval2.compute_metrics(annotations, data_dir=world.data_dir)
    metrics["n_instructions"] = len(indices)
    records = [
        {"instruction": text, "output": output, "generator": generator, "dataset": world.alpaca_instructions[i]["dataset"]}
        for i, text, output in zip(indices, instructions, outputs, strict=True)
    ]
    return EvalResult(metrics=metrics, outputs=records, annotations=annotations)
