"""Training of one self-play iteration on precomputed preference pairs.

The frozen log-probabilities under the previous iterate π_t and the base policy
μ are computed once per iteration, before training, and stored with the
samples; only the trained policy is in memory here. Chosen and rejected
responses go through the model in one concatenated forward pass.
The loop runs under ``accelerate``, so the same code runs in one process or
under ``accelerate launch`` with several.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, InitProcessGroupKwargs, parse_flag_from_env
from transformers import get_linear_schedule_with_warmup

from .config import TrainingConfig
from .logs import get_logger, progress_bar
from .methods import PreferenceBatch, RSPOLoss
from .worlds import tiny

logger = get_logger(__name__)


@dataclass(frozen=True)
class PairRecord:
    """One training row: a prompt, its winner and loser, their win probabilities and frozen log-probs."""

    prompt: str
    chosen: str
    rejected: str
    chosen_win_prob: float
    rejected_win_prob: float
    chosen_prev_logp: float
    rejected_prev_logp: float
    chosen_ref_logp: float
    rejected_ref_logp: float
    ref_response: str | None = None


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the policy of this iteration is not saved."""


def _build_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=config.learning_rate)
    return torch.optim.AdamW(model.parameters(), lr=config.learning_rate)


def _frozen(records: list[PairRecord], field: str) -> torch.Tensor:
    return torch.tensor([getattr(record, field) for record in records], dtype=torch.float32)


def _policy_logps(model, tokenizer, records: list[PairRecord], config: TrainingConfig, device) -> tuple:
    """Return log π_θ of the chosen and rejected responses from one concatenated forward pass."""
    prompts = [record.prompt for record in records]
    responses = [record.chosen for record in records] + [record.rejected for record in records]
    tokens = tiny.tokenize_pairs(
        tokenizer,
        prompts + prompts,
        responses,
        max_prompt_tokens=config.max_prompt_tokens,
        max_response_tokens=config.max_response_tokens,
    )
    tokens = {name: tensor.to(device) for name, tensor in tokens.items()}
    logps = tiny.sequence_logps(model, tokens["input_ids"], tokens["attention_mask"], tokens["response_mask"])
    return logps[: len(records)], logps[len(records) :]


def _reference_sample_logps(model, tokenizer, records: list[PairRecord], config: TrainingConfig, device):
    """Return the token-mean log π_θ of base-policy responses, as the official forward-KL term."""
    missing = [index for index, record in enumerate(records) if record.ref_response is None]
    if missing:
        raise ValueError(f"rows {missing[:5]} have no base-policy response, which the forward_kl regularizer needs")
    tokens = tiny.tokenize_pairs(
        tokenizer,
        [record.prompt for record in records],
        [record.ref_response for record in records],
        max_prompt_tokens=config.max_prompt_tokens,
        max_response_tokens=config.max_response_tokens,
    )
    tokens = {name: tensor.to(device) for name, tensor in tokens.items()}
    return tiny.sequence_logps(
        model, tokens["input_ids"], tokens["attention_mask"], tokens["response_mask"], average=True
    )


def build_accelerator() -> Accelerator:
    """Create the Accelerator that :func:`train_iteration` uses when the caller passes none.

    Without CUDA the processes run on CPU. Under a DeepSpeed launch they then get
    ``cpu=False`` and the gloo backend, because accelerate 1.16 ignores DeepSpeed when
    ``cpu=True``, and without an explicit backend it reports one process of rank 0 in
    every process.
    """
    # The scheduler steps once per optimiser step, while accelerate's default steps it once per process.
    if torch.cuda.is_available():
        return Accelerator(step_scheduler_with_optimizer=False)
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        gloo_backend = InitProcessGroupKwargs(backend="gloo")
        return Accelerator(step_scheduler_with_optimizer=False, kwargs_handlers=[gloo_backend])
    return Accelerator(cpu=True, step_scheduler_with_optimizer=False)


def _configure_deepspeed(accelerator: Accelerator, config: TrainingConfig) -> None:
    """Set DeepSpeed's rows per process and optimiser step, which it needs without a prepared dataloader."""
    plugin = accelerator.state.deepspeed_plugin
    accumulation = plugin.deepspeed_config.get("gradient_accumulation_steps", 1)
    if accumulation not in (1, "auto"):
        raise ValueError(
            f"DeepSpeed gradient_accumulation_steps is {accumulation}, but train_iteration accumulates the "
            f"micro-batches of training.per_device_batch_size itself. Set it to 1 in the accelerate config."
        )
    if plugin.is_auto("train_micro_batch_size_per_gpu"):
        # The trainer builds its own batches, so DeepSpeed 0.19.8 only checks this value against
        # train_batch_size and reports throughput from it.
        rows_per_process = config.batch_size // accelerator.num_processes
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = rows_per_process


def train_iteration(
    model: torch.nn.Module,
    tokenizer,
    records: list[PairRecord],
    loss_fn: RSPOLoss,
    config: TrainingConfig,
    *,
    seed: int,
    iteration: int,
    accelerator: Accelerator | None = None,
    after_training: Callable[[torch.nn.Module], None] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for ``config.epochs`` epochs over ``records``; return mean metrics.

    Raises :class:`TrainingDivergedError` when the loss is not finite, naming the
    step and the loss terms, before the optimiser applies the bad update.

    ``after_training`` is called on every process with the prepared model (the DDP
    module or DeepSpeed engine that ``accelerator.prepare`` returned) after the last
    step. Save the policy there with ``worlds.hf.save_policy(prepared, tokenizer, path,
    accelerator=accelerator)``, which gathers the full weights under ZeRO-3 and writes
    on the main process only. Under ZeRO-3, ``model`` itself keeps only this process's
    shard of each parameter after this function returns.
    """
    if not records:
        raise ValueError(f"iteration {iteration}: no training pairs")
    accelerator = accelerator or build_accelerator()
    world_size = accelerator.num_processes
    if config.batch_size % world_size:
        raise ValueError(
            f"training.batch_size {config.batch_size} is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    accumulation_steps = config.accumulation_steps(world_size)
    optimizer = _build_optimizer(model, config)
    steps_per_epoch = math.ceil(len(records) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=int(config.lr_warmup_ratio * total_steps), num_training_steps=total_steps
    )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _configure_deepspeed(accelerator, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = defaultdict(float)
    step = 0
    logger.info(
        "iteration %d: training on %d pairs, %d steps (%s, lr %.2g), %d micro-batch(es) per step on each of "
        "%d process(es)",
        iteration, len(records), total_steps, config.optimizer, config.learning_rate, accumulation_steps, world_size,
    )
    with progress_bar(desc=f"train iter {iteration}", total=total_steps, unit="step") as bar:
        for _ in range(config.epochs):
            order = torch.randperm(len(records), generator=generator).tolist()
            for start in range(0, len(order), config.batch_size):
                global_batch = [records[index] for index in order[start : start + config.batch_size]]
                # Each process takes every world_size-th row of the global batch; DDP averages the gradients.
                # NOTE: a last batch shorter than world_size gives the spare processes its first row again,
                # because every process must run the same number of steps.
                batch_records = global_batch[accelerator.process_index :: world_size] or global_batch[:1]
                metrics = _train_step(
                    model, tokenizer, batch_records, loss_fn, config, optimizer, scheduler, accelerator,
                    iteration=iteration, step=step,
                )
                for name, value in metrics.items():
                    sums[name] += value
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4g}")
    model.eval()
    means = {name: value / step for name, value in sums.items()}
    logger.info("iteration %d: training done, mean loss %.4g", iteration, means["loss"])
    if after_training is not None:
        after_training(model)
    return means


def _micro_batch_loss(model, tokenizer, records, loss_fn, config, device):
    """Return the loss output of one forward pass over ``records``."""
    chosen_logps, rejected_logps = _policy_logps(model, tokenizer, records, config, device)
    batch = PreferenceBatch(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        chosen_prev_logps=_frozen(records, "chosen_prev_logp").to(device),
        rejected_prev_logps=_frozen(records, "rejected_prev_logp").to(device),
        chosen_ref_logps=_frozen(records, "chosen_ref_logp").to(device),
        rejected_ref_logps=_frozen(records, "rejected_ref_logp").to(device),
        chosen_win_probs=_frozen(records, "chosen_win_prob").to(device),
        rejected_win_probs=_frozen(records, "rejected_win_prob").to(device),
        ref_sample_logps=(
            _reference_sample_logps(model, tokenizer, records, config, device)
            if loss_fn.uses_reference_samples
            else None
        ),
    )
    return loss_fn(batch)


@contextmanager
def _gradient_sync(accelerator: Accelerator, model, *, sync: bool):
    """Skip the gradient all-reduce (and DeepSpeed's optimiser step) of a backward pass unless ``sync``."""
    if sync:
        yield
        return
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        # accelerate 1.16 steps the DeepSpeed engine in backward() only when sync_gradients is set;
        # accelerate's own accumulate() toggles the same flag. The slow ZeRO-3 test in
        # tests/test_accelerate_launch.py runs this branch on CPU (DeepSpeed 0.19.8).
        accelerator.gradient_state._set_sync_gradients(False)
        try:
            yield
        finally:
            accelerator.gradient_state._set_sync_gradients(True)
        return
    with accelerator.no_sync(model):
        yield


def _train_step(model, tokenizer, records, loss_fn, config, optimizer, scheduler, accelerator, *, iteration, step):
    """Run one optimiser step on this process's ``records``, in micro-batches of ``per_device_batch_size``.

    The loss is a mean over rows, so scaling each micro-batch's loss by its share of
    the rows makes the accumulated gradient equal to that of one forward pass over
    all ``records``. Only the last micro-batch's backward pass all-reduces gradients.
    """
    device = accelerator.device
    size = config.per_device_batch_size or len(records)
    chunks = [records[start : start + size] for start in range(0, len(records), size)]
    metrics: dict[str, float] = defaultdict(float)
    optimizer.zero_grad(set_to_none=True)
    for index, chunk in enumerate(chunks):
        output = _micro_batch_loss(model, tokenizer, chunk, loss_fn, config, device)
        if not torch.isfinite(output.loss):
            terms = ", ".join(f"{name}={value:.4g}" for name, value in output.metrics.items())
            where = f", micro-batch {index + 1}/{len(chunks)}" if len(chunks) > 1 else ""
            raise TrainingDivergedError(
                f"iteration {iteration}, step {step}{where}: loss is {output.loss.item()} ({terms}). "
                f"Lower training.learning_rate (now {config.learning_rate}) or raise the loss beta; "
                f"earlier iterations stay cached and a rerun resumes from them."
            )
        share = len(chunk) / len(records)
        with _gradient_sync(accelerator, model, sync=index == len(chunks) - 1):
            accelerator.backward(output.loss * share)
        # Every metric of RSPOLoss is a mean over rows, so the share-weighted sum is the full-batch mean.
        for name, value in output.metrics.items():
            metrics[name] += share * value
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
    # DeepSpeed clips inside its engine (gradient_clipping) and may return None here.
    optimizer.step()
    scheduler.step()
    metrics = dict(metrics)
    if grad_norm is not None:
        metrics["grad_norm"] = float(grad_norm)
    return metrics
