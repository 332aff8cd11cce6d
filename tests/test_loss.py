"""Loss values worked out by hand on one row (see the comments for the arithmetic)."""

import math

import pytest
import torch

from rspo_bench.methods import (
    DPOLoss,
    HardSPPOLoss,
    IPOLoss,
    PreferenceBatch,
    RegularizerTerm,
    RSPOLoss,
    SoftSPPOLoss,
    build_regularizer,
)
from rspo_bench.methods.regularizers import ChiSquared, ForwardKL, ImportanceForwardKL, ReverseKL


def one_row(**overrides):
    # Δ_w = -1.0 - (-1.5) = 0.5, Δ_l = -2.0 - (-1.0) = -1.0
    # d_w = -1.0 - (-1.2) = 0.2, d_l = -2.0 - (-2.5) = 0.5
    values = dict(
        chosen_logps=-1.0,
        rejected_logps=-2.0,
        chosen_prev_logps=-1.5,
        rejected_prev_logps=-1.0,
        chosen_ref_logps=-1.2,
        rejected_ref_logps=-2.5,
        chosen_win_probs=0.75,
        rejected_win_probs=0.25,
    )
    values.update(overrides)
    tensors = {key: torch.tensor([value], dtype=torch.float64) for key, value in values.items()}
    tensors["chosen_logps"].requires_grad_(True)
    tensors["rejected_logps"].requires_grad_(True)
    return PreferenceBatch(**tensors)


def test_soft_sppo_hand_value():
    # η = 1/0.5 = 2. Chosen: (0.5 - 2·0.25)² = 0. Rejected: (-1 - 2·(-0.25))² = 0.25. Mean: 0.125.
    loss = SoftSPPOLoss(beta=0.5)(one_row())
    assert loss.item() == pytest.approx(0.125)


def test_hard_sppo_hand_value():
    # η/2 = 1: (0.5 - 1)² + (-1 + 1)² = 0.25, whatever the win probabilities.
    assert HardSPPOLoss(beta=0.5)(one_row()).item() == pytest.approx(0.25)
    assert HardSPPOLoss(beta=0.5)(one_row(chosen_win_probs=0.1)).item() == pytest.approx(0.25)


def test_dpo_and_ipo_hand_values():
    # Margin Δ_w - Δ_l = 1.5. DPO: -log σ(0.5·1.5) = log(1 + e^-0.75). IPO: (1.5 - 1/(2·0.5))² = 0.25.
    assert DPOLoss(beta=0.5)(one_row()).item() == pytest.approx(math.log1p(math.exp(-0.75)))
    assert IPOLoss(beta=0.5)(one_row()).item() == pytest.approx(0.25)


@pytest.mark.parametrize(
    "regularizer, expected",
    [
        (ReverseKL(), 0.2**2 + 0.5**2),
        (ImportanceForwardKL(clip=10), math.exp(-0.2) + math.exp(-0.5)),
        (ChiSquared(clip=10), math.exp(0.2) + math.exp(0.5)),
    ],
)
def test_regularizer_pair_sum(regularizer, expected):
    loss = RSPOLoss(base=SoftSPPOLoss(beta=0.5), terms=[RegularizerTerm(regularizer)], coef=1.0)
    output = loss(one_row())
    assert output.metrics[f"reg/{regularizer.name}"] == pytest.approx(expected)
    assert output.loss.item() == pytest.approx(0.125 + expected)


def test_pair_mean_halves_regularizer():
    loss = RSPOLoss(
        base=SoftSPPOLoss(beta=0.5), terms=[RegularizerTerm(ReverseKL())], coef=1.0, pair_reduction="mean"
    )
    assert loss(one_row()).loss.item() == pytest.approx(0.125 + 0.5 * 0.29)


def test_headline_combination_hand_value():
    # 0.1 × (IS-forward KL + 5 × reverse KL) = 0.125 + 0.1·(1.425261 + 5·0.29)
    loss = RSPOLoss(
        base=SoftSPPOLoss(beta=0.5),
        terms=[RegularizerTerm(ImportanceForwardKL(clip=10), 1.0), RegularizerTerm(ReverseKL(), 5.0)],
        coef=0.1,
    )
    output = loss(one_row())
    expected_reg = 0.1 * (math.exp(-0.2) + math.exp(-0.5) + 5 * 0.29)
    assert output.loss.item() == pytest.approx(0.125 + expected_reg)
    assert output.metrics["reg_total"] == pytest.approx(expected_reg)


def test_clipped_ratios_stop_gradient():
    # d = -20 < -clip: the IS ratio is clipped at e^10 and its gradient is zero.
    batch = one_row(chosen_ref_logps=19.0)  # d_w = -1 - 19 = -20
    regularizer = ImportanceForwardKL(clip=10)
    value = regularizer.estimate(batch.chosen_logratios_ref())
    assert value.item() == pytest.approx(math.exp(10))
    value.sum().backward()
    assert batch.chosen_logps.grad.item() == 0.0


def test_reverse_kl_gradient_is_two_d():
    batch = one_row()
    loss = RSPOLoss(base=SoftSPPOLoss(beta=0.5), terms=[RegularizerTerm(ReverseKL())], coef=0.3)
    loss(batch).loss.backward()
    # d/dℓ_w of the SPPO term is (Δ_w - target) = 0; of 0.3·d_w² it is 0.3·2·0.2.
    assert batch.chosen_logps.grad.item() == pytest.approx(0.3 * 2 * 0.2)
    # d/dℓ_l: SPPO gives (-1 + 0.5) = -0.5; the regularizer 0.3·2·0.5 = 0.3.
    assert batch.rejected_logps.grad.item() == pytest.approx(-0.5 + 0.3)


def test_forward_kl_reads_reference_samples():
    loss = RSPOLoss(base=SoftSPPOLoss(beta=0.5), terms=[RegularizerTerm(ForwardKL())], coef=0.5)
    assert loss.uses_reference_samples
    with pytest.raises(ValueError, match="ref_sample_logps"):
        loss(one_row())
    batch = one_row()
    batch.ref_sample_logps = torch.tensor([-3.0], dtype=torch.float64)
    assert loss(batch).loss.item() == pytest.approx(0.125 + 0.5 * 3.0)


def test_row_weights_give_weighted_mean():
    batch = PreferenceBatch(
        chosen_logps=torch.tensor([0.0, 0.0]),
        rejected_logps=torch.tensor([0.0, 0.0]),
        chosen_prev_logps=torch.tensor([-1.0, -2.0]),
        rejected_prev_logps=torch.tensor([0.0, 0.0]),
        chosen_ref_logps=torch.zeros(2),
        rejected_ref_logps=torch.zeros(2),
        chosen_win_probs=torch.tensor([0.5, 0.5]),
        rejected_win_probs=torch.tensor([0.5, 0.5]),
        weights=torch.tensor([3.0, 1.0]),
    )
    # Row losses: ½·1² = 0.5 and ½·2² = 2; weighted mean (3·0.5 + 1·2)/4 = 0.875.
    assert SoftSPPOLoss(beta=1.0)(batch).tolist() == [0.5, 2.0]
    assert RSPOLoss(base=SoftSPPOLoss(beta=1.0))(batch).loss.item() == pytest.approx(0.875)


def test_game_regularization_reverse_kl():
    # Averaged over the pair, reverse KL gives τ = λ/η; summed (the official code) 2λ/η.
    mean = RSPOLoss(base=SoftSPPOLoss(beta=0.001), terms=[RegularizerTerm(ReverseKL())], coef=0.5, pair_reduction="mean")
    total = RSPOLoss(base=SoftSPPOLoss(beta=0.001), terms=[RegularizerTerm(ReverseKL())], coef=0.5)
    assert mean.game_regularization()["reverse_kl"] == pytest.approx(0.5 / 1000)
    assert total.game_regularization()["reverse_kl"] == pytest.approx(2 * 0.5 / 1000)


def test_user_regularizer_by_import_path():
    regularizer = build_regularizer("tests.custom_regularizer:SquaredLogRatio", {"scale": 2.0})
    assert regularizer.estimate(torch.tensor([3.0])).item() == pytest.approx(18.0)


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("revrse_kl", None, "unknown regularizer 'revrse_kl'"),
        ("reverse_kl", {"clip": 3}, "invalid parameters"),
        ("is_forward_kl", {"clip": -1}, "clip must be > 0"),
        ("tests.custom_regularizer:Missing", None, "has no attribute 'Missing'"),
    ],
)
def test_build_regularizer_errors(name, params, message):
    with pytest.raises(ValueError, match=message):
        build_regularizer(name, params)


def test_negative_coef_rejected():
    with pytest.raises(ValueError, match="coef must be >= 0, got -0.1"):
        RSPOLoss(base=SoftSPPOLoss(beta=0.1), coef=-0.1)
