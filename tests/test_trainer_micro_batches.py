"""Gradient accumulation over per-device micro-batches gives the update of one full-batch forward pass.

The loss is a mean over rows, and the trainer scales each micro-batch's loss by its
share of the rows, so the accumulated gradient equals the full-batch gradient up to
float32 rounding. That rounding differs because the micro-batches pad to other lengths
and add the rows in another order. The gradients agree within 1e-5 relative (measured: 1.5e-7 on a 2-core x86 CPU).
RMSprop divides each gradient by the root of its running square, which magnifies the
rounding of gradients near its eps of 1e-8, so after five steps at lr 1e-3 the weights
differ by up to 8e-6 (same machine) while training moves them by more than 3e-2.
WEIGHT_TOLERANCE leaves a margin above that.
"""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from pydantic import ValidationError

from rspo_bench.config import ConfigError, TinyModelConfig, TrainingConfig, parse_config
from rspo_bench.methods import RegularizerTerm, RSPOLoss, SoftSPPOLoss, build_regularizer
from rspo_bench import trainer
from rspo_bench.trainer import PairRecord, train_iteration
from rspo_bench.worlds import tiny

TEXTS = [
    "Write a short poem about the sea and the wind.",
    "Explain how photosynthesis turns light into chemical energy.",
    "The capital of France is Paris, on the river Seine.",
    "List three prime numbers larger than ten: 11, 13 and 17.",
] * 8
NUM_RECORDS = 10
WEIGHT_TOLERANCE = 5e-5


def headline_loss() -> RSPOLoss:
    return RSPOLoss(
        base=SoftSPPOLoss(beta=0.1),
        terms=[
            RegularizerTerm(build_regularizer("is_forward_kl", {"clip": 10.0}), 1.0),
            RegularizerTerm(build_regularizer("reverse_kl", {}), 5.0),
        ],
        coef=0.1,
    )


def make_records() -> list[PairRecord]:
    """Rows whose responses differ in length, so that micro-batches pad differently from the full batch."""
    return [
        PairRecord(
            prompt=TEXTS[index % 4] + f" Variant {index}.",
            chosen=TEXTS[(index + 1) % 4],
            rejected=TEXTS[(index + 2) % 4][: 10 + 3 * index],
            chosen_win_prob=0.6 + 0.03 * index,
            rejected_win_prob=0.4 - 0.03 * index,
            chosen_prev_logp=-40.0 - index,
            rejected_prev_logp=-20.0 + index,
            chosen_ref_logp=-41.0 - index,
            rejected_ref_logp=-19.0 + index,
        )
        for index in range(NUM_RECORDS)
    ]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("policy")
    tokenizer = tiny.train_tokenizer(TEXTS, vocab_size=300)
    model_config = TinyModelConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    tiny.save_policy(tiny.build_tiny_model(model_config, tokenizer, seed=0), tokenizer, folder)
    return folder


def train(policy_dir, per_device_batch_size: int | None) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    model, tokenizer = tiny.load_policy(policy_dir)
    config = TrainingConfig(
        batch_size=4,  # 10 rows: steps of 4, 4 and 2 rows, so the last step has one micro-batch of 2
        per_device_batch_size=per_device_batch_size,
        epochs=2,
        learning_rate=1e-3,
        lr_warmup_ratio=0.0,
        max_prompt_tokens=48,
        max_response_tokens=24,
    )
    torch.manual_seed(0)
    metrics = train_iteration(
        model, tokenizer, make_records(), headline_loss(), config, seed=0, iteration=1,
        accelerator=Accelerator(cpu=True, step_scheduler_with_optimizer=False),
    )
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return weights, metrics


def test_micro_batch_weights_match(policy_dir):
    full, full_metrics = train(policy_dir, None)
    micro, micro_metrics = train(policy_dir, 2)
    initial, _ = tiny.load_policy(policy_dir)
    initial_state = initial.state_dict()

    largest_update = max((full[name] - initial_state[name]).abs().max().item() for name in full)
    assert largest_update > 100 * WEIGHT_TOLERANCE, "training barely moved the weights, so the comparison is empty"
    for name, tensor in full.items():
        difference = (micro[name] - tensor).abs().max().item()
        assert difference <= WEIGHT_TOLERANCE, f"{name}: micro-batch and full-batch weights differ by {difference:.3g}"
    assert micro_metrics["loss"] == pytest.approx(full_metrics["loss"], rel=1e-5)
    assert micro_metrics["grad_norm"] == pytest.approx(full_metrics["grad_norm"], rel=1e-4)


class GradientRecorder(torch.optim.Optimizer):
    """An optimizer whose step copies the gradients instead of changing the parameters."""

    def __init__(self, params) -> None:
        super().__init__(params, {"lr": 0.0})
        self.gradients: list[torch.Tensor] = []

    def step(self, closure=None):
        self.gradients = [p.grad.detach().clone() for group in self.param_groups for p in group["params"]]


def step_gradients(model, tokenizer, records, per_device_batch_size) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Run one trainer step without clipping and return its metrics and the gradients it produced."""
    config = TrainingConfig(
        batch_size=len(records), per_device_batch_size=per_device_batch_size, max_grad_norm=1e12,
        max_prompt_tokens=48, max_response_tokens=24,
    )
    optimizer = GradientRecorder(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    metrics = trainer._train_step(
        model, tokenizer, records, headline_loss(), config, optimizer, scheduler, Accelerator(cpu=True),
        iteration=1, step=0,
    )
    return metrics, optimizer.gradients


@pytest.mark.parametrize("per_device_batch_size", [1, 2, 4])
def test_micro_batch_gradients_match(policy_dir, per_device_batch_size):
    model, tokenizer = tiny.load_policy(policy_dir)
    model.train()
    records = make_records()[:8]
    full_metrics, full = step_gradients(model, tokenizer, records, None)
    micro_metrics, micro = step_gradients(model, tokenizer, records, per_device_batch_size)

    assert micro_metrics["loss"] == pytest.approx(full_metrics["loss"], rel=1e-5)
    assert micro_metrics["grad_norm"] == pytest.approx(full_metrics["grad_norm"], rel=1e-5)
    names = [name for name, _ in model.named_parameters()]
    for name, gradient, expected in zip(names, micro, full, strict=True):
        assert expected.norm() > 0, f"full-batch gradient of {name} is zero, so the check is vacuous"
        relative_error = float((gradient - expected).norm() / expected.norm())
        assert relative_error < 1e-5, f"{name}: relative gradient error {relative_error:.2e}"


def test_batch_not_divisible_by_micro_batch():
    with pytest.raises(ValidationError) as error:
        TrainingConfig(batch_size=8, per_device_batch_size=3)
    message = str(error.value)
    assert "training.batch_size 8" in message
    assert "training.per_device_batch_size 3" in message


def test_config_error_names_micro_batch():
    raw = {"name": "x", "training": {"batch_size": 64, "per_device_batch_size": 5}, "sweep": {"variants": [{"name": "sppo"}]}}
    with pytest.raises(ConfigError) as error:
        parse_config(raw)
    assert error.value.errors[0][0] == "training"
    assert "per_device_batch_size 5" in error.value.errors[0][1]


def test_accumulation_steps_per_process():
    config = TrainingConfig(batch_size=64, per_device_batch_size=2)
    assert config.accumulation_steps(1) == 32
    assert config.accumulation_steps(4) == 8
    assert TrainingConfig(batch_size=64).accumulation_steps(4) == 1


def test_accumulation_rejects_indivisible_batch():
    config = TrainingConfig(batch_size=12, per_device_batch_size=4)
    with pytest.raises(ValueError) as error:
        config.accumulation_steps(2)
    message = str(error.value)
    assert "training.batch_size 12" in message
    assert "training.per_device_batch_size 4" in message
    assert "multiple of 8" in message
