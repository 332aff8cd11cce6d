"""The self-play loop of the tiny world, one cached stage at a time.

One iteration t, from policy π_t::

    prompts ─▶ K samples per prompt from π_t           stage "samples"
            ─▶ P(y_i ≻ y_j | x) for all pairs           stage "preferences"
            ─▶ P̂(y ≻ π_t) = row mean, winner, loser
            ─▶ log π_t and log μ of every sample         stage "logps"
            ─▶ minimise the RSPO loss                    stage "policy" (π_{t+1})

Each stage's key is built from the keys of its inputs, so a policy's key is
its fingerprint: every variant starts from the same base policy with the same
seed, so iteration 1's samples, preferences and log-probs are computed once
per sweep and shared by all trials.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import data as data_module
from .cache import StageCache, stable_hash
from .config import ExperimentConfig, TrainingConfig, VariantConfig
from .logs import get_logger
from .methods import RegularizerTerm, RSPOLoss, base_loss_class, build_regularizer
from .preference.offline_judge import OfflineJudge
from .trainer import PairRecord, train_iteration
from .worlds import tiny

logger = get_logger(__name__)


@dataclass(frozen=True)
class PolicyRef:
    """A policy checkpoint in the stage cache; ``key`` is its fingerprint."""

    key: str
    path: Path


# Called after each iteration with its 1-based number, the policy it trained (π_{t+1}) and its metrics.
IterationCallback = Callable[[int, PolicyRef, dict[str, float]], None]


def build_loss(variant: VariantConfig, coef: float, default_beta: float) -> RSPOLoss:
    """Instantiate the loss of one trial from its variant and coefficient."""
    base = base_loss_class(variant.loss)(beta=variant.beta or default_beta)
    terms = [
        RegularizerTerm(build_regularizer(term.name, term.params), term.weight, term.label)
        for term in variant.regularizers
    ]
    return RSPOLoss(base=base, terms=terms, coef=coef, pair_reduction=variant.pair_reduction)


def loss_spec(variant: VariantConfig, coef: float, default_beta: float) -> dict[str, Any]:
    """Return everything that defines a trial's loss, for cache keys."""
    return {
        "loss": variant.loss,
        "beta": variant.beta or default_beta,
        "regularizers": [term.model_dump() for term in variant.regularizers],
        "coef": coef,
        "pair_reduction": variant.pair_reduction,
    }


def training_key(training: TrainingConfig) -> dict[str, Any]:
    """Return the training settings for the policy stage's key.

    An unset per_device_batch_size is left out, so policies cached before the field
    existed keep their keys. A set one enters the key because micro-batches change the
    float rounding of the update.

    The launcher is always left out. Splitting each global batch over N processes
    computes the same update up to float rounding (tests/test_launched_training.py
    checks this within 1e-4), as moving from CPU to GPU does, and the device is not
    in the key either. So a cache filled on one GPU serves a launch on eight.
    NOTE: an accelerate config with mixed_precision bf16 under DeepSpeed keeps float32
    master weights, which in-process bfloat16 training lacks. Those two policies differ
    by more than rounding but share a key.
    """
    excluded = {"launcher"}
    if training.per_device_batch_size is None:
        excluded.add("per_device_batch_size")
    return training.model_dump(exclude=excluded)


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


class TinyWorld:
    """Shared state of a sweep in the tiny world: data, tokenizer, base policy and judge."""

    def __init__(self, config: ExperimentConfig, cache: StageCache, data_dir: str | Path | None = None) -> None:
        self.config = config
        self.cache = cache
        self.data_dir = data_module.resolve_data_dir(data_dir)

    # Data -----------------------------------------------------------------

    @cached_property
    def train_records(self) -> list[dict[str, Any]]:
        return data_module.load_ultrafeedback("train", self.data_dir)

    @cached_property
    def alpaca_instructions(self) -> list[dict[str, Any]]:
        return data_module.load_alpaca_eval_instructions(self.data_dir)

    @cached_property
    def alpaca_baseline(self) -> list[dict[str, Any]]:
        return data_module.load_alpaca_eval_baseline(self.data_dir)

    @cached_property
    def warmup_records(self) -> list[dict[str, Any]]:
        return self.train_records[: self.config.world.warmup.num_examples]

    @cached_property
    def selfplay_prompt_pool(self) -> list[str]:
        """UltraFeedback prompts after the warm-up slice, without any AlpacaEval instruction."""
        excluded = {_normalized(item["instruction"]) for item in self.alpaca_instructions}
        pool = [
            record["prompt"]
            for record in self.train_records[len(self.warmup_records) :]
            if _normalized(record["prompt"]) not in excluded
        ]
        needed = self.config.selfplay.iterations * self.config.prompts.per_iteration
        if len(pool) < needed:
            raise ValueError(
                f"self-play needs selfplay.iterations × prompts.per_iteration = {needed} prompts, but only "
                f"{len(pool)} UltraFeedback prompts remain after the warm-up slice "
                f"({len(self.warmup_records)} records used for warm-up SFT); lower one of them"
            )
        return pool

    def selfplay_prompts(self, iteration: int) -> list[str]:
        """Return the prompts of a 1-based iteration: a fresh UltraFeedback subset or that iteration's file."""
        settings = self.config.prompts
        if settings.source == "files":
            return self.prompt_file_prompts(iteration)
        size = settings.per_iteration
        return self.selfplay_prompt_pool[(iteration - 1) * size : iteration * size]

    def prompt_file_prompts(self, iteration: int) -> list[str]:
        """Return the first ``per_iteration`` prompts (all when None) of ``prompts.files[iteration - 1]``."""
        settings = self.config.prompts
        path = data_module.prompt_file(settings.files[iteration - 1], self.data_dir)
        prompts = data_module.read_prompt_file(path)
        limit = settings.per_iteration
        if limit is not None and len(prompts) < limit:
            logger.warning(
                "iteration %d: %s has %d prompts, fewer than prompts.per_iteration %d, so all of them are used",
                iteration, path, len(prompts), limit,
            )
        selected = prompts if limit is None else prompts[:limit]
        logger.info("iteration %d: %d of %d prompts from %s", iteration, len(selected), len(prompts), path)
        return selected

    # Tokenizer, base policy, judge -----------------------------------------

    @cached_property
    def tokenizer_path(self) -> Path:
        texts = [record["prompt"] for record in self.train_records] + [
            str(record["chosen"]) for record in self.warmup_records
        ]
        inputs = {"texts": stable_hash(texts), "vocab_size": self.config.world.model.vocab_size}
        key = self.cache.key("tokenizer", inputs)

        def train(staging: Path) -> None:
            logger.info("training the BPE tokenizer on %d texts", len(texts))
            tokenizer = tiny.train_tokenizer(texts, vocab_size=self.config.world.model.vocab_size)
            tokenizer.save_pretrained(staging)

        return self.cache.compute("tokenizer", key, inputs, train)

    @cached_property
    def base_policy(self) -> PolicyRef:
        world = self.config.world
        inputs = {
            "tokenizer": self.tokenizer_path.name,
            "model": world.model.model_dump(),
            "warmup": world.warmup.model_dump(),
            "data": stable_hash([[r["prompt"], str(r["chosen"])] for r in self.warmup_records]),
            "seed": self.config.seed,
        }
        key = self.cache.key("base_policy", inputs)

        def warm_up(staging: Path) -> None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
            model = tiny.build_tiny_model(world.model, tokenizer, seed=self.config.seed)
            examples = tiny.warmup_examples(
                self.warmup_records,
                num_examples=world.warmup.num_examples,
                exclude_instructions={item["instruction"] for item in self.alpaca_instructions},
                exclude_responses={item["output"] for item in self.alpaca_baseline},
            )
            logger.info("warm-up SFT of the base policy on %d examples", len(examples))
            stats = tiny.warmup_sft(model, tokenizer, examples, world.warmup, seed=self.config.seed)
            tiny.save_policy(model, tokenizer, staging)
            (staging / "warmup.json").write_text(json.dumps(stats), encoding="utf-8")

        return PolicyRef(key, self.cache.compute("base_policy", key, inputs, warm_up))

    @cached_property
    def judge(self) -> OfflineJudge:
        # Only the formula's parameters: the other judge fields configure checkpoint judges.
        formula = {"verbosity_bias", "relevance_weight", "fluency_weight", "temperature"}
        settings = {
            name: value
            for name, value in self.config.judge.model_dump(include=formula).items()
            if value is not None
        }
        references = [str(record["chosen"]) for record in self.train_records]
        inputs = {"references": stable_hash(references), "settings": settings}
        key = self.cache.key("judge", inputs)

        def fit(staging: Path) -> None:
            OfflineJudge.fit(references, **settings).save(staging / "judge.json")

        # The saved judge restores identical scores and fingerprint, so every caller loads it.
        return OfflineJudge.load(self.cache.compute("judge", key, inputs, fit) / "judge.json")

    # Model backend: the hf world overrides these four -------------------------

    def load_policy(self, policy: PolicyRef, *, training: bool = False):
        """Return (model, tokenizer) of a policy, in eval mode unless ``training``."""
        return tiny.load_policy(policy.path)

    def save_policy(self, model, tokenizer, path: Path, *, accelerator=None) -> None:
        """Save a policy; with an ``accelerator``, pass the prepared model from every process."""
        if accelerator is None:
            tiny.save_policy(model, tokenizer, path)
            return
        from .worlds import hf

        # The same files as tiny.save_policy, from weights gathered over the processes.
        hf.save_policy(model, tokenizer, path, accelerator=accelerator)

    def generate(self, model, tokenizer, prompts: list[str], sampling, *, seed: int, num_samples: int | None = None):
        """Return ``num_samples`` responses per prompt; prompts are truncated like the training rows."""
        return tiny.generate(
            model, tokenizer, prompts, sampling, seed=seed, num_samples=num_samples,
            max_prompt_tokens=self.config.training.max_prompt_tokens,
        )

    def sampling_inputs(self, sampling, seed: int) -> dict[str, Any]:
        """Return what a sampling stage's key depends on besides the policy and prompts."""
        return {"sampling": sampling.model_dump(), "seed": seed}

    # Stages ------------------------------------------------------------------

    def samples_key(self, policy: PolicyRef, prompts: list[str], sampling, seed: int, stage: str = "samples") -> tuple[str, dict[str, Any]]:
        """Return the cache key and key inputs of a sampling stage; the prompt texts enter through their hash."""
        inputs = {"policy": policy.key, "prompts": stable_hash(prompts), **self.sampling_inputs(sampling, seed)}
        return self.cache.key(stage, inputs), inputs

    def samples(self, policy: PolicyRef, prompts: list[str], sampling, seed: int, stage: str = "samples") -> tuple[str, list[list[str]]]:
        """Return the key and K responses per prompt sampled from ``policy``."""
        key, inputs = self.samples_key(policy, prompts, sampling, seed, stage)

        def sample() -> dict[str, Any]:
            model, tokenizer = self.load_policy(policy)
            logger.info("%s: sampling %d × %d responses", stage, len(prompts), sampling.num_samples)
            responses = self.generate(model, tokenizer, prompts, sampling, seed=seed)
            return {"prompts": prompts, "responses": responses}

        return key, self.cache.compute_json(stage, key, inputs, sample)["responses"]

    def preferences(self, samples_key: str, prompts: list[str], responses: list[list[str]]) -> tuple[str, dict[str, Any]]:
        """Return P̂(y ≻ π_t) per sample (row means including the self-pair) and winner/loser indices."""
        inputs = {"samples": samples_key, "judge": self.judge.fingerprint()}
        key = self.cache.key("preferences", inputs)

        def judge() -> dict[str, Any]:
            win_probs, chosen, rejected = [], [], []
            for prompt, group in zip(prompts, responses, strict=True):
                matrix = np.asarray(self.judge.preference_matrix(prompt, group), dtype=float)
                row_means = matrix.mean(axis=1)
                win_probs.append(row_means.tolist())
                chosen.append(int(np.argmax(row_means)))
                # argmin over the reversed order so that all-equal rows pick two different samples.
                rejected.append(len(group) - 1 - int(np.argmin(row_means[::-1])))
            return {"win_probs": win_probs, "chosen_index": chosen, "rejected_index": rejected}

        return key, self.cache.compute_json("preferences", key, inputs, judge)

    def logps(self, samples_key: str, policy: PolicyRef, prompts: list[str], responses: list[list[str]]) -> tuple[str, dict[str, Any]]:
        """Return log π_t and log μ of every sample, computed once with each model loaded in turn."""
        training = self.config.training
        lengths = {"max_prompt_tokens": training.max_prompt_tokens, "max_response_tokens": training.max_response_tokens}
        base = self.base_policy
        inputs = {"samples": samples_key, "policy": policy.key, "base": base.key, **lengths}
        key = self.cache.key("logps", inputs)

        def score() -> dict[str, Any]:
            flat_prompts = [prompt for prompt, group in zip(prompts, responses, strict=True) for _ in group]
            flat_responses = [response for group in responses for response in group]
            values: dict[str, list[float]] = {}
            for name, ref in (("policy", policy), ("base", base)):
                if name == "base" and ref.key == policy.key:
                    values["base"] = values["policy"]
                    continue
                model, tokenizer = self.load_policy(ref)
                logps = tiny.batched_sequence_logps(model, tokenizer, flat_prompts, flat_responses, **lengths)
                values[name] = logps.tolist()
                del model
            width = len(responses[0])
            return {
                name: [flat[i : i + width] for i in range(0, len(flat), width)]
                for name, flat in values.items()
            }

        return key, self.cache.compute_json("logps", key, inputs, score)


def _iteration_metrics(responses, prefs, logps) -> dict[str, float]:
    win = np.asarray(prefs["win_probs"], dtype=float)
    policy = np.asarray(logps["policy"], dtype=float)
    base = np.asarray(logps["base"], dtype=float)
    chosen = np.asarray(prefs["chosen_index"])
    rejected = np.asarray(prefs["rejected_index"])
    rows = np.arange(len(chosen))
    lengths = np.asarray([[len(text) for text in group] for group in responses], dtype=float)
    return {
        # Mean of log π_t − log μ over samples of π_t: an estimate of KL(π_t ‖ μ). The samples use
        # temperature and top-p, so they come from a sharpened π_t and the estimate is approximate.
        "selfplay/kl_to_base": float((policy - base).mean()),
        "selfplay/response_length": float(lengths.mean()),
        # The mean of P̂ over all samples is ½ by construction, so the spread and the
        # winner-loser gap are what show how decisive the oracle is among π_t's samples.
        "selfplay/win_prob_std": float(win.std()),
        "selfplay/win_prob_gap": float((win[rows, chosen] - win[rows, rejected]).mean()),
        "selfplay/chosen_win_prob": float(win[rows, chosen].mean()),
        "selfplay/rejected_win_prob": float(win[rows, rejected].mean()),
        "selfplay/chosen_length": float(lengths[rows, chosen].mean()),
        "selfplay/rejected_length": float(lengths[rows, rejected].mean()),
    }


def run_selfplay(
    world: TinyWorld,
    variant: VariantConfig,
    coef: float,
    *,
    on_iteration: IterationCallback | None = None,
) -> PolicyRef:
    """Run every self-play iteration of one trial and return the final policy.

    An exception raised by ``on_iteration`` (such as ``optuna.TrialPruned``) stops
    self-play after that iteration and propagates to the caller.
    """
    config = world.config
    if config.training.launcher is not None:
        from .train_stage import check_launcher

        # Fail before the first sampling stage rather than after it.
        check_launcher(config.training.launcher)
    loss_fn = build_loss(variant, coef, config.sweep.beta)
    spec = loss_spec(variant, coef, config.sweep.beta)
    policy = world.base_policy
    sampling = config.selfplay.sampling
    for iteration in range(1, config.selfplay.iterations + 1):
        logger.info("trial %s-%g: iteration %d/%d starts", variant.name, coef, iteration, config.selfplay.iterations)
        prompts = world.selfplay_prompts(iteration)
        seed = config.seed * 1000 + iteration
        samples_key, responses = world.samples(policy, prompts, sampling, seed)
        prefs_key, prefs = world.preferences(samples_key, prompts, responses)
        logps_key, logps = world.logps(samples_key, policy, prompts, responses)
        ref_key, ref_responses = (None, None)
        if loss_fn.uses_reference_samples:
            # Base-policy samples for the same prompts; at iteration 1 this is the same cache entry.
            ref_key, ref_responses = world.samples(world.base_policy, prompts, sampling, seed)
        metrics = _iteration_metrics(responses, prefs, logps)

        inputs = {
            "parent": policy.key, "samples": samples_key, "preferences": prefs_key, "logps": logps_key,
            "ref_samples": ref_key, "loss": spec, "training": training_key(config.training), "seed": seed,
        }
        key = world.cache.key("policy", inputs)

        def train(staging: Path) -> None:
            records = _pair_records(prompts, responses, prefs, logps, ref_responses)
            if config.training.launcher is not None:
                from .train_stage import launch_training

                launch_training(
                    world, policy, records, variant, coef, iteration=iteration, seed=seed, output_dir=staging
                )
                return
            model, tokenizer = world.load_policy(policy, training=True)
            torch.manual_seed(seed)
            train_metrics = train_iteration(
                model, tokenizer, records, loss_fn, config.training, seed=seed, iteration=iteration
            )
            world.save_policy(model, tokenizer, staging)
            (staging / "train_metrics.json").write_text(json.dumps(train_metrics), encoding="utf-8")

        path = world.cache.compute("policy", key, inputs, train)
        train_metrics = world.cache.load_json("policy", key, "train_metrics.json")
        metrics.update({f"train/{name}": value for name, value in train_metrics.items()})
        policy = PolicyRef(key, path)
        if on_iteration is not None:
            on_iteration(iteration, policy, metrics)
    return policy


def _pair_records(prompts, responses, prefs, logps, ref_responses) -> list[PairRecord]:
    records = []
    for row, prompt in enumerate(prompts):
        chosen, rejected = prefs["chosen_index"][row], prefs["rejected_index"][row]
        records.append(
            PairRecord(
                prompt=prompt,
                chosen=responses[row][chosen],
                rejected=responses[row][rejected],
                chosen_win_prob=prefs["win_probs"][row][chosen],
                rejected_win_prob=prefs["win_probs"][row][rejected],
                chosen_prev_logp=logps["policy"][row][chosen],
                rejected_prev_logp=logps["policy"][row][rejected],
                chosen_ref_logp=logps["base"][row][chosen],
                rejected_ref_logp=logps["base"][row][rejected],
                ref_response=None if ref_responses is None else ref_responses[row][0],
            )
        )
    return records
