"""Typed experiment configuration, parsed from YAML.

Every model forbids unknown keys, so a misspelled field is an error rather than a
silently ignored setting. :func:`load_config` collects every validation error of a
file at once and reports each with its field path and the value received.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from .methods.base_losses import base_loss_class
from .methods.regularizers import regularizer_class


class StrictModel(BaseModel):
    """Base of all config models: unknown keys are rejected, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModelConfig(StrictModel):
    """Shape of the small Llama-style causal LM of the ``tiny`` world, built from a config."""

    vocab_size: int = Field(2048, ge=256, description="Size of the BPE vocabulary trained on the training prompts.")
    hidden_size: int = Field(64, ge=8)
    intermediate_size: int = Field(192, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(512, ge=32)


class WarmupConfig(StrictModel):
    """Supervised warm-up that teaches the tiny base policy to produce text before self-play."""

    num_examples: int = Field(1000, ge=1, description="UltraFeedback (prompt, chosen) pairs used for SFT.")
    epochs: int = Field(3, ge=0)
    learning_rate: float = Field(3e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    max_prompt_tokens: int = Field(96, ge=8, description="Prompts are truncated from the left to this many tokens.")
    max_response_tokens: int = Field(96, ge=8, description="Responses are truncated to this many tokens.")


class SamplingConfig(StrictModel):
    """Sampling settings for self-play generation and evaluation."""

    num_samples: int = Field(5, ge=1, description="K: responses sampled per prompt (self-play needs K >= 2).")
    temperature: float = Field(0.7, ge=0, description="0 decodes greedily (one response per prompt).")
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(64, ge=1, description="Prompts per generation batch.")

    @model_validator(mode="after")
    def _greedy_gives_one_sample(self) -> SamplingConfig:
        if self.temperature == 0 and self.num_samples != 1:
            raise ValueError(
                f"temperature 0 decodes greedily and gives one response per prompt, but num_samples is "
                f"{self.num_samples}; set num_samples to 1 or the temperature above 0"
            )
        return self


class HFModelConfig(StrictModel):
    """A Hugging Face causal LM checkpoint: a local folder or a hub id, loaded by transformers."""

    name_or_path: str = Field(description="Local folder or hub id, e.g. mistralai/Mistral-7B-Instruct-v0.2.")
    revision: str | None = Field(None, description="Hub revision (commit) to pin.")
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    gradient_checkpointing: bool = True
    lora_rank: int | None = Field(None, ge=1, description="Train LoRA adapters of this rank (peft); None trains all weights.")
    generation_backend: Literal["transformers", "vllm"] = "transformers"
    trust_remote_code: bool = False


class GameConfig(StrictModel):
    """A finite preference game: inline matrices or a named family generated from a seed."""

    family: Literal["inline", "random", "cyclic", "bradley_terry", "length_biased"] = "random"
    num_prompts: int = Field(4, ge=1)
    num_responses: int = Field(5, ge=2)
    seed: int = 0
    preferences: list[list[list[float]]] | None = Field(None, description="inline: one P matrix per prompt.")
    reference: list[list[float]] | None = Field(None, description="inline: μ per prompt; default uniform.")
    lengths: list[list[float]] | None = Field(None, description="inline: length feature per response.")
    mode: Literal["exact", "sampled"] = "exact"
    num_samples: int = Field(8, ge=2, description="sampled mode: K draws per prompt and iteration.")
    draws_per_prompt: int = Field(16, ge=1, description="sampled mode: winner/loser pairs per prompt and iteration.")
    inner_steps: int = Field(200, ge=1, description="Optimiser steps that solve each iteration's loss.")


class ModelWorldConfig(StrictModel):
    """The policy world: ``tiny`` (CPU language model), ``hf`` (any checkpoint) or ``game`` (exact tabular)."""

    kind: Literal["tiny", "hf", "game"] = "tiny"
    model: TinyModelConfig = TinyModelConfig()
    warmup: WarmupConfig = WarmupConfig()
    hf: HFModelConfig | None = None
    game: GameConfig | None = None

    @model_validator(mode="after")
    def _section_for_kind(self) -> ModelWorldConfig:
        if self.kind == "hf" and self.hf is None:
            raise ValueError("world.kind 'hf' needs a 'hf' section with at least name_or_path")
        if self.kind == "game" and self.game is None:
            raise ValueError("world.kind 'game' needs a 'game' section")
        return self


class PromptsConfig(StrictModel):
    """Source of the self-play prompts.

    ``ultrafeedback`` draws ``per_iteration`` fresh UltraFeedback prompts for each
    iteration, never overlapping the warm-up examples. ``files`` reads iteration t's
    prompts from ``files[t - 1]``, as the official SPPO recipe uses a separate prompt
    set per iteration. A relative path in ``files`` is resolved against the data
    folder (``--data-dir``, then ``$RSPO_BENCH_DATA``).
    """

    source: Literal["ultrafeedback", "files"] = "ultrafeedback"
    per_iteration: int | None = Field(
        64, ge=1,
        description="ultrafeedback: fresh prompts drawn for each iteration. files: the first N prompts of "
        "each file; null takes every prompt of the file.",
    )
    files: list[str] | None = Field(
        None, min_length=1,
        description="files: one JSONL file (optionally .gz) per iteration, each line an object with a "
        "'prompt' or 'instruction' string.",
    )

    @model_validator(mode="after")
    def _files_match_source(self) -> PromptsConfig:
        if self.source == "files" and self.files is None:
            raise ValueError(
                "prompts.source 'files' needs prompts.files, a list of one JSONL prompt file per iteration"
            )
        if self.source != "files" and self.files is not None:
            raise ValueError(
                f"prompts.files applies only to prompts.source 'files', but source is {self.source!r}; "
                f"set source: files or remove files"
            )
        if self.source == "ultrafeedback" and self.per_iteration is None:
            raise ValueError("prompts.source 'ultrafeedback' needs per_iteration, the prompts drawn per iteration")
        return self

    def check_iterations(self, iterations: int) -> None:
        """Raise ValidationError at ``prompts.files`` when there are fewer files than ``iterations``."""
        if self.files is not None and len(self.files) < iterations:
            message = (
                f"prompts.files lists {len(self.files)} file(s) but selfplay.iterations is {iterations}; "
                f"add one prompt file per iteration or lower selfplay.iterations"
            )
            raise ValidationError.from_exception_data(
                "ExperimentConfig",
                [InitErrorDetails(
                    type=PydanticCustomError("value_error", "{message}", {"message": message}),
                    loc=("prompts", "files"),
                    input=self.files,
                )],
            )


class JudgeConfig(StrictModel):
    """The preference oracle used in self-play and as the evaluation judge."""

    kind: Literal["offline", "pairrm", "reward_model", "llm"] = "offline"
    verbosity_bias: float = Field(0.5, ge=0, description="Weight of log(1 + characters/100) in the judge score.")
    model_name_or_path: str | None = Field(None, description="pairrm / reward_model: checkpoint folder or hub id.")
    base_url: str | None = Field(None, description="llm: OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")
    model: str | None = Field(None, description="llm: judge model name sent to the endpoint.")
    relevance_weight: float | None = Field(None, ge=0, description="None keeps the judge's default.")
    fluency_weight: float | None = Field(None, ge=0, description="None keeps the judge's default.")
    temperature: float | None = Field(None, gt=0, description="None keeps the judge's default.")
    revision: str | None = Field(None, description="pairrm / reward_model: hub revision (commit) to pin.")
    trust_remote_code: bool = Field(
        False,
        description="pairrm / reward_model: run the checkpoint's own modeling code, as reward models such "
        "as ArmoRM need.",
    )
    batch_size: int | None = Field(
        None, ge=1,
        description="pairrm / reward_model: inputs per forward pass; None keeps the judge's default "
        "(PairRM 16, reward model 8).",
    )

    @model_validator(mode="after")
    def _checkpoint_options(self) -> JudgeConfig:
        if self.kind in ("pairrm", "reward_model"):
            return self
        options = {"revision": self.revision, "trust_remote_code": self.trust_remote_code or None,
                   "batch_size": self.batch_size}
        options_set = sorted(name for name, value in options.items() if value is not None)
        if options_set:
            raise ValueError(
                f"judge {', '.join(options_set)} apply only to judge.kind 'pairrm' or 'reward_model', "
                f"but kind is {self.kind!r}; remove them or change judge.kind"
            )
        return self


class SelfPlayConfig(StrictModel):
    """The self-play loop: iterations and sampling of K responses per prompt."""

    iterations: int = Field(2, ge=1)
    sampling: SamplingConfig = SamplingConfig()

    @field_validator("sampling")
    @classmethod
    def _two_samples(cls, sampling: SamplingConfig) -> SamplingConfig:
        if sampling.num_samples < 2:
            raise ValueError(f"self-play needs num_samples >= 2 to pick a winner and a loser, got {sampling.num_samples}")
        return sampling


class LauncherConfig(StrictModel):
    """An ``accelerate launch`` that trains each self-play iteration in separate processes."""

    config_file: Path = Field(
        description="accelerate config file, e.g. experiments/accelerate/ddp.yaml. A relative path is resolved "
        "against the working directory of the rspo-bench process, not against the experiment file.",
    )
    num_processes: int | None = Field(
        None, ge=1, description="Processes to launch; None uses num_processes of the accelerate config file."
    )


class TrainingConfig(StrictModel):
    """Optimisation of one self-play iteration on its winner/loser pairs."""

    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"
    learning_rate: float = Field(1e-4, gt=0)
    lr_warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of steps with a linear warm-up.")
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1, description="Pairs per optimiser step (global batch).")
    per_device_batch_size: int | None = Field(
        None, ge=1,
        description="Pairs per forward pass on each process; gradients of the micro-batches are accumulated "
        "into one optimiser step. None runs each process's share of the global batch in one forward pass.",
    )
    max_grad_norm: float = Field(1.0, gt=0)
    max_prompt_tokens: int = Field(96, ge=8)
    max_response_tokens: int = Field(64, ge=8)
    launcher: LauncherConfig | None = Field(
        None,
        description="Train each iteration under accelerate launch with these settings; None trains in the "
        "sweep's own process.",
    )

    @model_validator(mode="after")
    def _micro_batches_divide_batch(self) -> TrainingConfig:
        # The process count is known only at run time; train_iteration checks the full product.
        size = self.per_device_batch_size
        if size is not None and self.batch_size % size:
            raise ValueError(
                f"training.batch_size {self.batch_size} is not divisible by training.per_device_batch_size "
                f"{size}; use a batch_size that is a multiple of processes × {size}, or a per_device_batch_size "
                f"that divides {self.batch_size}"
            )
        return self

    def accumulation_steps(self, num_processes: int) -> int:
        """Return the micro-batches each process runs per optimiser step (1 without per_device_batch_size)."""
        size = self.per_device_batch_size
        if size is None:
            return 1
        if self.batch_size % (num_processes * size):
            raise ValueError(
                f"training.batch_size {self.batch_size} is not divisible by {num_processes} processes × "
                f"training.per_device_batch_size {size} = {num_processes * size}; set batch_size to a multiple "
                f"of {num_processes * size}, or a per_device_batch_size that divides batch_size / processes"
            )
        return self.batch_size // (num_processes * size)


class RegularizerConfig(StrictModel):
    """One term of the regularizer combination."""

    name: str = Field(description="Built-in name (reverse_kl, is_forward_kl, forward_kl, chi_squared) or 'module:Class'.")
    weight: float = Field(1.0, ge=0, description="Weight inside the combination, before the sweep coefficient.")
    params: dict[str, float] = Field(default_factory=dict, description="Constructor arguments, e.g. {clip: 10}.")
    label: str = ""

    @field_validator("name")
    @classmethod
    def _known_regularizer(cls, name: str) -> str:
        regularizer_class(name)  # raises ValueError naming the choices
        return name


def _non_negative_coefficient(value: float) -> float:
    if value < 0:
        raise ValueError("coefficient λ must be >= 0. Use 0 to run the variant without its regularizers")
    return value


# Validated per item, so an error names the index of the negative value and shows it once.
Coefficient = Annotated[float, AfterValidator(_non_negative_coefficient)]


class VariantConfig(StrictModel):
    """A regularized variant; the sweep runs it once per coefficient in ``coefs``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    loss: Literal["sppo", "sppo_hard", "dpo", "ipo"] | str = "sppo"
    beta: float | None = Field(None, gt=0, description="Loss beta; None uses sweep.beta. For SPPO, η = 1/beta.")
    regularizers: list[RegularizerConfig] = Field(default_factory=list)
    coefs: list[Coefficient] = Field(default_factory=lambda: [0.0], min_length=1, description="Values of λ to run.")
    pair_reduction: Literal["sum", "mean"] = "sum"

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        base_loss_class(name)
        return name


# Directions are fixed per metric: a search never maximizes length.
OBJECTIVE_DIRECTIONS: dict[str, str] = {
    "lc_win_rate": "maximize", "win_rate": "maximize", "avg_length": "minimize",
    # Metrics logged under their full keys: the game world's, and the other benchmarks'.
    "game/final_duality_gap": "minimize",
    "arena_hard/score": "maximize", "mt_bench/score": "maximize", "armorm/score": "maximize",
    "diversity/self_bleu": "minimize",
}
ObjectiveName = Literal[
    "lc_win_rate", "win_rate", "avg_length", "game/final_duality_gap",
    "arena_hard/score", "mt_bench/score", "armorm/score", "diversity/self_bleu",
]


class TPESamplerConfig(StrictModel):
    """Optuna's TPESampler. Every argument is passed explicitly because Optuna 5.0 changed its defaults."""

    kind: Literal["tpe"] = "tpe"
    seed: int | None = Field(None, description="None uses the experiment seed.")
    n_startup_trials: int = Field(10, ge=0, description="Trials sampled at random before TPE takes over.")
    n_ei_candidates: int = Field(
        24, ge=1, description="Candidates scored by expected improvement for each sampled value."
    )
    multivariate: bool = Field(True, description="Model the parameters jointly instead of one by one.")
    group: bool = Field(
        True, description="Split the conditional search space into groups of parameters sampled together."
    )
    constant_liar: bool = Field(
        True, description="Treat running trials as bad, so parallel workers do not sample the same region."
    )

    @model_validator(mode="after")
    def _group_needs_multivariate(self) -> TPESamplerConfig:
        if self.group and not self.multivariate:
            raise ValueError("group: true needs multivariate: true (Optuna's TPESampler rejects it)")
        return self


class RandomSamplerConfig(StrictModel):
    """Optuna's RandomSampler."""

    kind: Literal["random"] = "random"
    seed: int | None = Field(None, description="None uses the experiment seed.")


class NSGA2SamplerConfig(StrictModel):
    """Optuna's NSGAIISampler, a genetic algorithm for multi-objective searches."""

    kind: Literal["nsga2"] = "nsga2"
    seed: int | None = Field(None, description="None uses the experiment seed.")
    population_size: int = Field(8, ge=2, description="Trials per generation.")
    mutation_prob: float | None = Field(None, ge=0, le=1, description="None uses 1 / number of parameters.")
    crossover_prob: float = Field(0.9, ge=0, le=1)
    swapping_prob: float = Field(0.5, ge=0, le=1)


SamplerConfig = Annotated[
    TPESamplerConfig | RandomSamplerConfig | NSGA2SamplerConfig, Field(discriminator="kind")
]


class MedianPrunerConfig(StrictModel):
    """Optuna's MedianPruner: stop a trial whose value at an iteration is below finished trials' median."""

    kind: Literal["median"] = "median"
    n_startup_trials: int = Field(5, ge=0, description="Finished trials needed before any trial is pruned.")
    n_warmup_steps: int = Field(0, ge=0, description="Iterations below this number are never pruned.")
    interval_steps: int = Field(1, ge=1, description="Check every this many iterations.")
    n_min_trials: int = Field(
        1, ge=1, description="Finished trials with a value at the iteration needed before comparing."
    )


class SuccessiveHalvingPrunerConfig(StrictModel):
    """Optuna's SuccessiveHalvingPruner (asynchronous successive halving); a rung is a self-play iteration."""

    kind: Literal["successive_halving"] = "successive_halving"
    min_resource: int = Field(1, ge=1, description="Iterations every trial runs before its first rung.")
    reduction_factor: int = Field(2, ge=2, description="Keep the top 1/reduction_factor of trials per rung.")
    min_early_stopping_rate: int = Field(0, ge=0)
    bootstrap_count: int = Field(0, ge=0, description="Trials that must reach a rung before it prunes.")


PrunerConfig = Annotated[MedianPrunerConfig | SuccessiveHalvingPrunerConfig, Field(discriminator="kind")]


class CoefRange(StrictModel):
    """Range of a variant's regularizer coefficient λ, sampled log-uniformly."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> CoefRange:
        if self.low >= self.high:
            raise ValueError(f"low must be below high, got low={self.low:g} and high={self.high:g}")
        return self


class ParamRange(StrictModel):
    """A conditional parameter: sampled only in the trials that choose its variant."""

    regularizer: str | None = Field(
        None, description="Name or label of one of the variant's regularizers; None tunes the variant's beta."
    )
    name: str = Field(
        description="'weight' or a key of the regularizer's params (e.g. clip); 'beta' without a regularizer."
    )
    low: float
    high: float
    log: bool = Field(False, description="Sample log-uniformly (needs low > 0).")

    @model_validator(mode="after")
    def _valid_range(self) -> ParamRange:
        if self.low >= self.high:
            raise ValueError(f"low must be below high, got low={self.low:g} and high={self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got low={self.low:g}")
        if self.regularizer is None and self.name != "beta":
            raise ValueError(f"without a regularizer only 'beta' can be tuned, got name {self.name!r}")
        return self


class VariantSearchConfig(StrictModel):
    """Search ranges of one variant in an ``optuna`` sweep, sampled in the trials that choose it."""

    coef: CoefRange | None = Field(None, description="λ range; None chooses among the variant's coefs.")
    params: list[ParamRange] = Field(default_factory=list)


class RetryConfig(StrictModel):
    """Detection of trials whose worker died, and their retries."""

    max_retry: int = Field(
        2, ge=0,
        description="Times a trial whose worker died is run again; a trial that raised an error runs again "
        "only when the sweep is started again.",
    )
    heartbeat_interval: int = Field(20, ge=1, description="Seconds between heartbeats of a running trial.")
    grace_period: int = Field(
        120, ge=2,
        description="Seconds without a heartbeat after which any worker fails the trial and retries it.",
    )

    @model_validator(mode="after")
    def _grace_after_heartbeat(self) -> RetryConfig:
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError(
                f"grace_period ({self.grace_period} s) must exceed "
                f"heartbeat_interval ({self.heartbeat_interval} s)"
            )
        return self


class SweepConfig(StrictModel):
    """The trials of an experiment: a grid, or an Optuna search over the variants.

    ``grid`` runs every variant at each of its coefficients. ``optuna`` samples
    ``n_trials`` trials: the variant (categorical), its coefficient (log-uniform
    in ``search.<variant>.coef``, otherwise one of its ``coefs``) and the
    variant's conditional parameters in ``search.<variant>.params``.
    """

    kind: Literal["grid", "optuna"] = "grid"
    beta: float = Field(0.1, gt=0, description="Default loss beta of the variants.")
    include_base: bool = Field(True, description="Also evaluate the base policy as trial 'base'.")
    variants: list[VariantConfig] = Field(min_length=1)
    objectives: list[ObjectiveName] = Field(
        default_factory=lambda: ["lc_win_rate"],
        min_length=1,
        description="AlpacaEval 2 metrics to optimize: lc_win_rate and win_rate up, avg_length down.",
    )
    n_trials: int | None = Field(
        None, ge=1, validate_default=True,
        description="optuna: sampled trials (the base trial and retries of dead workers are extra).",
    )
    sampler: SamplerConfig | None = Field(None, description="optuna: default tpe with the fields' defaults.")
    pruner: PrunerConfig | None = Field(
        None, description="Stop weak trials between self-play iterations (single objective only)."
    )
    search: dict[str, VariantSearchConfig] = Field(
        default_factory=dict, description="optuna: ranges per variant name."
    )
    retry: RetryConfig = RetryConfig()

    @model_validator(mode="after")
    def _unique_variant_names(self) -> SweepConfig:
        names = [variant.name for variant in self.variants]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"variant names must be unique, repeated: {duplicates}")
        if "base" in names:
            raise ValueError("variant name 'base' is reserved for the base policy")
        return self

    @field_validator("objectives")
    @classmethod
    def _unique_objectives(cls, objectives: list[str]) -> list[str]:
        if len(set(objectives)) != len(objectives):
            raise ValueError(f"objectives must not repeat a metric, got {objectives}")
        return objectives

    @field_validator("n_trials", "sampler")
    @classmethod
    def _optuna_only(cls, value: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("kind")
        if kind == "grid" and value is not None:
            raise ValueError(f"{info.field_name} applies only to sweep.kind 'optuna'; this sweep is a grid")
        if kind == "optuna" and value is None and info.field_name == "n_trials":
            raise ValueError("sweep.kind 'optuna' needs n_trials, the number of trials to sample")
        return value

    @field_validator("pruner")
    @classmethod
    def _single_objective_pruner(cls, pruner: Any, info: ValidationInfo) -> Any:
        objectives = info.data.get("objectives") or []
        if pruner is not None and len(objectives) > 1:
            raise ValueError(
                f"Optuna prunes single-objective studies only, but sweep.objectives lists {len(objectives)} "
                f"metrics {objectives}; remove sweep.pruner or keep one objective"
            )
        return pruner

    @field_validator("search")
    @classmethod
    def _search_matches_variants(cls, search: dict[str, VariantSearchConfig], info: ValidationInfo) -> dict:
        if search and info.data.get("kind") == "grid":
            raise ValueError("search applies only to sweep.kind 'optuna'; a grid runs each variant's coefs")
        variants = {variant.name: variant for variant in info.data.get("variants") or []}
        if not variants:
            return search
        for name, entry in search.items():
            if name not in variants:
                raise ValueError(
                    f"search names variant {name!r}, which is not in sweep.variants {sorted(variants)}"
                )
            terms = variants[name].regularizers
            for param in entry.params:
                if param.regularizer is None:
                    continue
                labels = [term.label or term.name for term in terms]
                if param.regularizer not in labels and param.regularizer not in [t.name for t in terms]:
                    raise ValueError(
                        f"search.{name}.params names regularizer {param.regularizer!r}, but variant {name!r} "
                        f"has {labels or 'no regularizers'}"
                    )
            if entry.coef is not None and not terms:
                raise ValueError(
                    f"search.{name}.coef is set, but variant {name!r} has no regularizer to weight"
                )
        return search


class AlpacaEvalConfig(StrictModel):
    """AlpacaEval-2 evaluation against the gpt4_1106_preview baseline outputs."""

    enabled: bool = True
    max_instructions: int | None = Field(None, ge=1, le=805, description="None evaluates all 805 instructions.")
    sampling: SamplingConfig = SamplingConfig(num_samples=1, max_new_tokens=64)
    every_iteration: bool = Field(
        False,
        description="Also evaluate after each self-play iteration (metrics eval_iter/alpaca_eval2/*); "
        "a sweep with a pruner does this whatever the setting.",
    )


class BenchmarkJudgeConfig(StrictModel):
    """The judge of Arena-Hard and MT-Bench: the offline proxy, or an OpenAI-compatible chat endpoint."""

    kind: Literal["offline", "llm"] = Field(
        "offline",
        description="offline: the proxy judge's scores mapped to verdicts and ratings (labelled proxy); "
        "llm: the benchmark's own judge prompts sent to base_url.",
    )
    base_url: str | None = Field(None, description="llm: endpoint root, e.g. http://127.0.0.1:8000/v1.")
    model: str | None = Field(None, description="llm: judge model, e.g. gpt-4-1106-preview (Arena-Hard v0.1), gpt-4.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    max_concurrency: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _llm_needs_endpoint(self) -> BenchmarkJudgeConfig:
        if self.kind == "llm" and not (self.base_url and self.model):
            raise ValueError(
                f"evaluation.judge.kind 'llm' needs base_url and model (--judge-url and --judge-model), got "
                f"base_url={self.base_url!r} and model={self.model!r}"
            )
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"evaluation.judge.base_url {self.base_url!r} lacks a scheme; write it as http://HOST:PORT/v1"
            )
        return self


class ArenaHardConfig(StrictModel):
    """Arena-Hard-Auto v0.1: answers to its 500 questions judged against gpt-4-0314's answers."""

    enabled: bool = False
    max_questions: int | None = Field(None, ge=1, le=500, description="None answers all 500 questions.")
    baseline: str = Field("gpt-4-0314", description="Baseline model whose answer file is in the data folder.")
    sampling: SamplingConfig = Field(
        SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=64),
        description="arena-hard-auto answers greedily (temperature 0) with up to 4096 new tokens.",
    )
    bootstrap_rounds: int = Field(100, ge=1, description="Bootstrap rounds of the 95% interval.")
    judge_model: str | None = Field(
        None, description="LLM judge for this benchmark; None uses evaluation.judge.model (gpt-4-1106-preview for v0.1)."
    )


def _fastchat_temperatures() -> dict[str, float]:
    # FastChat's llm_judge temperature per MT-Bench category (greedy for closed-answer categories).
    return {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
            "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}


class MTBenchConfig(StrictModel):
    """MT-Bench: two-turn answers to its 80 questions, each turn graded from 1 to 10."""

    enabled: bool = False
    max_questions: int | None = Field(None, ge=1, le=80, description="None answers all 80 questions.")
    max_new_tokens: int = Field(64, ge=1, description="Per turn; FastChat uses 1024.")
    temperatures: dict[str, float] = Field(
        default_factory=_fastchat_temperatures,
        description="Sampling temperature per question category (others keep FastChat's); 0 decodes greedily.",
    )
    batch_size: int = Field(64, ge=1, description="Prompts per generation batch.")
    judge_model: str | None = Field(
        None, description="LLM judge for this benchmark; None uses evaluation.judge.model (gpt-4 in FastChat)."
    )

    @field_validator("temperatures")
    @classmethod
    def _all_categories(cls, temperatures: dict[str, float]) -> dict[str, float]:
        # Categories left out keep FastChat's temperature, so one category can be changed alone.
        temperatures = {**_fastchat_temperatures(), **temperatures}
        negative = {name: value for name, value in temperatures.items() if value < 0}
        if negative:
            raise ValueError(f"temperatures must be >= 0; the categories {sorted(negative)} have negative values")
        return temperatures


class ArmoRMConfig(StrictModel):
    """Reward-model scores of the AlpacaEval-2 outputs, as ``armorm/score`` and ``armorm/<objective>``."""

    enabled: bool = False
    model_name_or_path: str = Field(
        "RLHFlow/ArmoRM-Llama3-8B-v0.1", description="Local folder or hub id of the reward model."
    )
    revision: str | None = None
    trust_remote_code: bool = Field(True, description="ArmoRM's model card loads it with its own code.")
    batch_size: int = Field(8, ge=1)


class DiversityConfig(StrictModel):
    """Self-BLEU and distinct-n over several samples per AlpacaEval instruction."""

    enabled: bool = False
    max_prompts: int | None = Field(None, ge=1, le=805, description="None uses all 805 instructions.")
    sampling: SamplingConfig = Field(
        SamplingConfig(num_samples=16, temperature=0.7, top_p=0.9, max_new_tokens=200),
        description="The RSPO Self-BLEU script: 16 samples, temperature 0.7, top-p 0.9, 200 new tokens.",
    )
    seed: int = Field(2024, description="Sampling seed; the RSPO script uses 2024.")
    max_ngram: int = Field(3, ge=1, description="Self-BLEU n-gram order, with uniform weights.")
    distinct: list[int] = Field(default_factory=lambda: [1, 2], description="n of each distinct-n metric.")

    @field_validator("sampling")
    @classmethod
    def _two_samples(cls, sampling: SamplingConfig) -> SamplingConfig:
        if sampling.num_samples < 2:
            raise ValueError(f"Self-BLEU compares samples of one prompt, so num_samples must be >= 2, "
                             f"got {sampling.num_samples}")
        return sampling


class EvaluationConfig(StrictModel):
    judge: BenchmarkJudgeConfig = BenchmarkJudgeConfig()
    alpaca_eval2: AlpacaEvalConfig = AlpacaEvalConfig()
    arena_hard: ArenaHardConfig = ArenaHardConfig()
    mt_bench: MTBenchConfig = MTBenchConfig()
    armorm: ArmoRMConfig = ArmoRMConfig()
    diversity: DiversityConfig = DiversityConfig()


class ExperimentConfig(StrictModel):
    """A whole experiment file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = 0
    world: ModelWorldConfig = ModelWorldConfig()
    prompts: PromptsConfig = PromptsConfig()
    judge: JudgeConfig = JudgeConfig()
    selfplay: SelfPlayConfig = SelfPlayConfig()
    training: TrainingConfig = TrainingConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    sweep: SweepConfig

    @model_validator(mode="after")
    def _objective_benchmarks_enabled(self) -> ExperimentConfig:
        for objective in self.sweep.objectives:
            benchmark = objective.split("/")[0]
            settings = getattr(self.evaluation, benchmark, None)
            if settings is not None and not settings.enabled:
                raise ValueError(
                    f"sweep.objectives lists {objective!r}, but evaluation.{benchmark}.enabled is false; "
                    f"enable the benchmark or remove the objective"
                )
        return self

    @model_validator(mode="after")
    def _prompt_files_cover_iterations(self) -> ExperimentConfig:
        self.prompts.check_iterations(self.selfplay.iterations)
        return self

    @model_validator(mode="after")
    def _launcher_needs_language_model(self) -> ExperimentConfig:
        if self.training.launcher is not None and self.world.kind == "game":
            raise ValueError(
                "training.launcher applies only to world.kind 'tiny' or 'hf', because the game world trains "
                "its policy table in the sweep's process; remove training.launcher"
            )
        return self


class ConfigError(ValueError):
    """An experiment file is invalid; ``errors`` lists (field path, message, value received)."""

    def __init__(self, path: str, errors: list[tuple[str, str, Any]]) -> None:
        self.path = path
        self.errors = errors
        lines = [f"{path}: {len(errors)} invalid field(s)"]
        for location, message, value in errors:
            lines.append(f"  {location}: {message} (received: {value!r})")
        super().__init__("\n".join(lines))


def _all_field_names(model: type[BaseModel], names: set[str] | None = None) -> set[str]:
    names = set() if names is None else names
    for field_name, info in model.model_fields.items():
        names.add(field_name)
        for candidate in (info.annotation, *getattr(info.annotation, "__args__", ())):
            inner = getattr(candidate, "__args__", (candidate,))
            for item in (candidate, *inner):
                if isinstance(item, type) and issubclass(item, BaseModel) and item is not model:
                    _all_field_names(item, names)
    return names


def _unknown_field_message(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(_all_field_names(ExperimentConfig)), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; remove it or check the field names in the README"
    return f"unknown field {name!r}{hint}"


def _location(loc: tuple[Any, ...]) -> str:
    parts = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "<root>"


def parse_config(raw: Any, *, source: str = "<config>") -> ExperimentConfig:
    """Validate a parsed YAML document, raising :class:`ConfigError` with every error at once."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [("<root>", "the file must contain a mapping of fields", raw)])
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        errors = []
        for item in error.errors():
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = _unknown_field_message(str(item["loc"][-1]))
            errors.append((_location(item["loc"]), message, item.get("input")))
        raise ConfigError(source, errors) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [("<file>", "config file not found", str(path))]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(str(path), [("<yaml>", f"invalid YAML: {error}", None)]) from None
    return parse_config(raw, source=str(path))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts and lists into dotted keys, for MLflow params."""
    flat: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            flat.update(flatten(item, f"{prefix}{index}."))
        if not value:
            flat[prefix.rstrip(".")] = "[]"
    else:
        flat[prefix.rstrip(".")] = value
    return flat
