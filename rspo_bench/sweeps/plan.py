"""The plan of a sweep before it runs: trials, model loads and an estimate of training memory.

``rspo-bench sweep CONFIG --dry-run`` prints it. Memory is an estimate from the
parameter count: the trained policy's weights and gradients in the training dtype
plus RMSprop's one float32 state per parameter (AdamW: two), without activations,
which depend on batch size and sequence length. Frozen π_t and base-policy
log-probabilities are precomputed, so no second or third model is counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ExperimentConfig
from .grid import TrialSpec, enqueued_trials

# Rounded parameter counts, used when a checkpoint's config.json is not available offline.
# NOTE: an estimate; Mistral-7B-Instruct-v0.2 is described as a 7.24 B-parameter model.
KNOWN_PARAMETER_COUNTS = {"mistralai/Mistral-7B-Instruct-v0.2": 7_240_000_000}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class TrialPlan:
    """One planned trial: its key, the model loads it needs alone, and its estimated training memory."""

    key: str
    iterations: int
    model_loads: int
    training_gib: float | None


def count_parameters(config: ExperimentConfig) -> int | None:
    """Return the policy's parameter count without loading weights, or None when it is not known offline."""
    world = config.world
    if world.kind == "game":
        return None
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    if world.kind == "tiny":
        model = world.model
        model_config = LlamaConfig(
            vocab_size=model.vocab_size, hidden_size=model.hidden_size, intermediate_size=model.intermediate_size,
            num_hidden_layers=model.num_hidden_layers, num_attention_heads=model.num_attention_heads,
            max_position_embeddings=model.max_position_embeddings,
        )
    else:
        try:
            model_config = AutoConfig.from_pretrained(
                world.hf.name_or_path, revision=world.hf.revision, local_files_only=True
            )
        except (OSError, ValueError):
            return KNOWN_PARAMETER_COUNTS.get(world.hf.name_or_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return sum(parameter.numel() for parameter in model.parameters())


def model_loads(spec: TrialSpec, config: ExperimentConfig) -> int:
    """Return how often a trial loads a policy when none of its stages is cached.

    Per iteration: one load to sample, π_t and the base policy to score log-probabilities
    (one at iteration 1, where they are the same model), one to train, and one more
    base-policy load after iteration 1 for regularizers on base-policy samples. Then one
    load to generate the evaluation outputs.
    """
    if config.world.kind == "game":
        return 0
    if spec.variant is None:
        return 1
    uses_reference_samples = any(term.name == "forward_kl" for term in spec.variant.regularizers)
    loads = 0
    for iteration in range(1, config.selfplay.iterations + 1):
        loads += 1 + (1 if iteration == 1 else 2) + 1
        if uses_reference_samples and iteration > 1:
            loads += 1
    return loads + 1


def plan_sweep(config: ExperimentConfig) -> tuple[list[TrialPlan], dict[str, object]]:
    """Return the planned trials and a summary (parameters, loads shared across trials)."""
    parameters = count_parameters(config)
    training_gib = None
    if parameters is not None:
        dtype = config.world.hf.dtype if config.world.kind == "hf" else "float32"
        optimizer_states = 1 if config.training.optimizer == "rmsprop" else 2
        per_parameter = 2 * DTYPE_BYTES[dtype] + 4 * optimizer_states
        training_gib = parameters * per_parameter / 2**30
    trials = enqueued_trials(config.sweep)
    plans = [
        TrialPlan(
            spec.key,
            0 if spec.variant is None else config.selfplay.iterations,
            model_loads(spec, config),
            None if spec.variant is None else training_gib,
        )
        for spec in trials
    ]
    variants = sum(1 for spec in trials if spec.variant is not None)
    # Every variant starts from the same base policy and seed, so iteration 1's sampling and
    # log-prob stages (two loads) run once for the whole sweep.
    shared = 2 * max(variants - 1, 0) if config.world.kind != "game" else 0
    summary = {
        "parameters": parameters,
        "trials": len(plans),
        "model_loads": sum(plan.model_loads for plan in plans) - shared,
        "optuna_trials_not_listed": config.sweep.n_trials if config.sweep.kind == "optuna" else 0,
    }
    return plans, summary
