"""The trainer's optimized log-probs leave loss and gradients as a straightforward implementation gives them.

The trainer scores chosen and rejected responses in one call of ``tiny.sequence_logps``,
which groups rows by length and runs the LM head on response positions only. The
reference here scores every sequence in its own unpadded forward pass, takes
``log_softmax`` of the full logits, and writes each row's loss by hand.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
from accelerate import Accelerator

from rspo_bench import trainer
from rspo_bench.config import TinyModelConfig, TrainingConfig
from rspo_bench.methods.base_losses import SoftSPPOLoss
from rspo_bench.methods.loss import RegularizerTerm, RSPOLoss
from rspo_bench.methods.regularizers import ImportanceForwardKL, ReverseKL
from rspo_bench.worlds import tiny

BETA = 0.1
COEF = 0.1
IS_CLIP = 10.0
REVERSE_KL_WEIGHT = 5.0
MAX_PROMPT_TOKENS = 40
MAX_RESPONSE_TOKENS = 24
WORDS = ["alpha", "beta", "gamma", "delta", "policy", "reward", "sample", "answer", "why", "how", "the", "of"]


def words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


@pytest.fixture(scope="module")
def texts() -> list[tuple[str, str, str]]:
    """Prompts and responses of very different lengths, so that batches carry padding."""
    rng = random.Random(0)
    return [(words(rng, 1, 30), words(rng, 1, 25), words(rng, 1, 25)) for _ in range(6)]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return tiny.train_tokenizer([" ".join(triple) for triple in texts], vocab_size=300)


@pytest.fixture
def model(tokenizer):
    config = TinyModelConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    model = tiny.build_tiny_model(config, tokenizer, seed=0)
    model.train()
    return model


def naive_logp(model, tokenizer, prompt: str, response: str, *, average: bool = False) -> torch.Tensor:
    """Score one (prompt, response) pair alone: no padding, full log_softmax, sum over response tokens."""
    batch = tiny.tokenize_pairs(
        tokenizer, [prompt], [response], max_prompt_tokens=MAX_PROMPT_TOKENS, max_response_tokens=MAX_RESPONSE_TOKENS
    )
    input_ids = batch["input_ids"][0]
    response_mask = batch["response_mask"][0, 1:].bool()
    logits = model(input_ids=input_ids.unsqueeze(0)).logits[0, :-1]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    per_token = log_probs.gather(-1, input_ids[1:].unsqueeze(-1)).squeeze(-1)[response_mask]
    return per_token.mean() if average else per_token.sum()


def make_records(model, tokenizer, texts) -> list[trainer.PairRecord]:
    """Build pairs whose frozen log-probs sit a little off the model's own, so every loss term is active."""
    rng = random.Random(1)
    records = []
    with torch.no_grad():
        for prompt, chosen, rejected in texts:
            chosen_logp = float(naive_logp(model, tokenizer, prompt, chosen))
            rejected_logp = float(naive_logp(model, tokenizer, prompt, rejected))
            records.append(
                trainer.PairRecord(
                    prompt=prompt,
                    chosen=chosen,
                    rejected=rejected,
                    chosen_win_prob=rng.uniform(0.5, 0.9),
                    rejected_win_prob=rng.uniform(0.1, 0.5),
                    chosen_prev_logp=chosen_logp + rng.uniform(-1.0, 1.0),
                    rejected_prev_logp=rejected_logp + rng.uniform(-1.0, 1.0),
                    chosen_ref_logp=chosen_logp + rng.uniform(-1.0, 1.0),
                    rejected_ref_logp=rejected_logp + rng.uniform(-1.0, 1.0),
                )
            )
    return records


def naive_loss(model, tokenizer, records, *, regularized: bool) -> torch.Tensor:
    """Mean over rows of the soft SPPO loss, plus 0.1 × (IS-forward KL + 5 × reverse KL) when ``regularized``."""
    eta = 1.0 / BETA
    rows = []
    for record in records:
        chosen = naive_logp(model, tokenizer, record.prompt, record.chosen)
        rejected = naive_logp(model, tokenizer, record.prompt, record.rejected)
        chosen_term = (chosen - record.chosen_prev_logp - eta * (record.chosen_win_prob - 0.5)) ** 2
        rejected_term = (rejected - record.rejected_prev_logp - eta * (record.rejected_win_prob - 0.5)) ** 2
        row = 0.5 * (chosen_term + rejected_term)
        if regularized:
            chosen_ratio = chosen - record.chosen_ref_logp
            rejected_ratio = rejected - record.rejected_ref_logp
            forward_kl = torch.exp(torch.clamp(-chosen_ratio, max=IS_CLIP)) + torch.exp(
                torch.clamp(-rejected_ratio, max=IS_CLIP)
            )
            reverse_kl = chosen_ratio**2 + rejected_ratio**2
            row = row + COEF * (forward_kl + REVERSE_KL_WEIGHT * reverse_kl)
        rows.append(row)
    return torch.stack(rows).mean()


def build_loss(regularized: bool) -> RSPOLoss:
    base = SoftSPPOLoss(beta=BETA)
    if not regularized:
        return RSPOLoss(base=base)
    terms = [
        RegularizerTerm(ImportanceForwardKL(clip=IS_CLIP), 1.0),
        RegularizerTerm(ReverseKL(), REVERSE_KL_WEIGHT),
    ]
    return RSPOLoss(base=base, terms=terms, coef=COEF)


class GradientRecorder(torch.optim.Optimizer):
    """An optimizer whose step copies the gradients instead of changing the parameters."""

    def __init__(self, params) -> None:
        super().__init__(params, {"lr": 0.0})
        self.gradients: list[torch.Tensor] = []

    def step(self, closure=None):
        self.gradients = [p.grad.detach().clone() for group in self.param_groups for p in group["params"]]


def trainer_step(model, tokenizer, records, regularized: bool) -> tuple[float, list[torch.Tensor]]:
    """Run the trainer's own step on ``records`` and return its loss and the gradients it produced."""
    config = TrainingConfig(
        batch_size=len(records),
        max_grad_norm=1e12,  # never clip, so the recorded gradients are the raw ones
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        max_response_tokens=MAX_RESPONSE_TOKENS,
    )
    optimizer = GradientRecorder(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    metrics = trainer._train_step(
        model, tokenizer, records, build_loss(regularized), config, optimizer, scheduler,
        Accelerator(cpu=True), iteration=1, step=0,
    )
    return metrics["loss"], optimizer.gradients


class FullLogitsModel(torch.nn.Module):
    """A causal LM behind a wrapper that ``sequence_logps`` does not recognise, so it scores every position."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs):
        return self.inner(**kwargs)


SCORING_PATHS = {
    # name: (MAX_LENGTH_GROUPS, wrap the model so that the full-logits path runs)
    "response_logits_4_groups": (4, False),
    "response_logits_2_groups": (2, False),
    "response_logits_1_group": (1, False),
    "full_logits": (4, True),
}


@pytest.mark.parametrize("regularized", [False, True], ids=["sppo", "is_forward_reverse_kl"])
@pytest.mark.parametrize("scoring", list(SCORING_PATHS))
def test_trainer_step_matches_naive_loss(model, tokenizer, texts, monkeypatch, regularized, scoring) -> None:
    max_groups, full_logits = SCORING_PATHS[scoring]
    monkeypatch.setattr(tiny, "MAX_LENGTH_GROUPS", max_groups)
    records = make_records(model, tokenizer, texts)

    trained = FullLogitsModel(model) if full_logits else model
    loss, gradients = trainer_step(trained, tokenizer, records, regularized)

    model.zero_grad(set_to_none=True)
    reference = naive_loss(model, tokenizer, records, regularized=regularized)
    reference.backward()
    reference_gradients = [parameter.grad for parameter in model.parameters()]

    assert math.isfinite(loss)
    assert loss == pytest.approx(reference.item(), rel=1e-5)
    assert len(gradients) == len(reference_gradients)
    names = [name for name, _ in model.named_parameters()]
    for name, gradient, expected in zip(names, gradients, reference_gradients, strict=True):
        scale = expected.abs().max()
        assert scale > 0, f"reference gradient of {name} is zero, so the check is vacuous"
        # Both sides sum ~100 float32 token terms in different orders. The unoptimized code
        # showed relative gradient errors of ~3e-5 here too, so 1e-4 of the largest entry is float noise.
        torch.testing.assert_close(gradient, expected, rtol=1e-3, atol=1e-4 * float(scale), msg=lambda m, n=name: f"{n}: {m}")
        relative_error = float((gradient - expected).norm() / expected.norm())
        assert relative_error < 1e-4, f"{name}: relative gradient error {relative_error:.2e}"


def test_sequence_logps_mean_matches_naive(model, tokenizer, texts) -> None:
    prompts = [prompt for prompt, _, _ in texts]
    responses = [chosen for _, chosen, _ in texts]
    batch = tiny.tokenize_pairs(
        tokenizer, prompts, responses, max_prompt_tokens=MAX_PROMPT_TOKENS, max_response_tokens=MAX_RESPONSE_TOKENS
    )
    with torch.no_grad():
        means = tiny.sequence_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], average=True
        )
        expected = torch.stack(
            [naive_logp(model, tokenizer, prompt, response, average=True) for prompt, response in zip(prompts, responses)]
        )
    torch.testing.assert_close(means, expected, rtol=1e-5, atol=1e-5)


def test_sequence_logps_bfloat16_matches_full_logits(model, tokenizer, texts) -> None:
    """Half-precision logits take the chunked float32 upcast; it agrees with scoring every position."""
    model = model.to(torch.bfloat16)
    prompts = [prompt for prompt, _, _ in texts]
    responses = [rejected for _, _, rejected in texts]
    batch = tiny.tokenize_pairs(
        tokenizer, prompts, responses, max_prompt_tokens=MAX_PROMPT_TOKENS, max_response_tokens=MAX_RESPONSE_TOKENS
    )
    with torch.no_grad():
        totals = tiny.sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        per_token = tiny.token_logps(model, batch["input_ids"], batch["attention_mask"])
        mask = batch["response_mask"][:, 1:].bool()
        expected = torch.where(mask, per_token, torch.zeros_like(per_token)).sum(-1)
    assert totals.dtype == torch.float32
    # bfloat16 keeps 8 significant bits. The grouped forward passes see other padding, so their
    # hidden states differ in the last bits, and sums of up to 24 tokens differ by about 1%.
    torch.testing.assert_close(totals, expected, rtol=2e-2, atol=0.5)
