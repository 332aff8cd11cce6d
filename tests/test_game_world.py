"""Self-play of the training losses on exact tabular games, checked against the independent solver."""

import json
import math

import numpy as np
import pytest
import torch

from rspo_bench.config import GameConfig
from rspo_bench.methods import DPOLoss, RegularizerTerm, RSPOLoss, SoftSPPOLoss
from rspo_bench.methods.regularizers import ChiSquared, ForwardKL, ImportanceForwardKL, ReverseKL
from rspo_bench.worlds.game import (
    Game,
    PromptGame,
    _build_batch,
    _exact_plan,
    cyclic_game,
    final_policy_json,
    game_from_config,
    game_regularization_of,
    policy_diagnostics,
    random_game,
    run_game_selfplay,
)
from rspo_bench.worlds.game_solver import (
    GameRegularization,
    duality_gap,
    exploitability,
    nash_equilibrium,
    regularized_equilibrium,
)

# η = 1/beta = 2 and λ = 1 with the pair averaged (λ = 0.5 with the pair summed) give
# τ = 0.5 and ητ = 1. Each exact iteration then acts like a magnetic mirror descent
# step, whose distance to π*_τ shrinks by about |1 + iηω|/(1 + ητ) per iteration,
# where iω are the eigenvalues of (P − ½)·(diag π − ππᵀ) at π*_τ. In the game of
# mixed_size_game |ω| ≤ 0.17, so the factor is about 0.53, and 0.50 was measured.
# The gap is quadratic in that distance, so 40 iterations take it far below 1e-6.
BETA = 0.5
ETA = 1.0 / BETA
ITERATIONS = 40


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    # The tensors have a few dozen entries, so intra-op threads only add
    # synchronization cost, which is large on a shared CPU.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def reverse_kl_loss(coef, pair_reduction):
    return RSPOLoss(
        base=SoftSPPOLoss(beta=BETA),
        terms=[RegularizerTerm(ReverseKL())],
        coef=coef,
        pair_reduction=pair_reduction,
    )


def mixed_size_game():
    """20 random prompts with 2 to 6 responses, plus one rock-paper-scissors prompt."""
    prompts = []
    for size in range(2, 7):
        for prompt in random_game(seed=size, num_prompts=4, num_responses=size).prompts:
            prompt_id = f"random-{size}-{prompt.prompt_id}"
            prompts.append(PromptGame(prompt_id, prompt.preference, prompt.reference, prompt.lengths))
    cyclic = cyclic_game(seed=0, num_responses=3).prompts[0]
    prompts.append(PromptGame("cyclic", cyclic.preference, cyclic.reference, cyclic.lengths))
    return Game(prompts, name="mixed")


def prompt_gaps(game, policy, regularization):
    return [
        duality_gap(prompt.preference, probs, prompt.reference, regularization)
        for prompt, probs in zip(game.prompts, policy)
    ]


# ---------------------------------------------------------------------------
# Games


def test_inline_game_builds():
    game = Game.inline(
        [
            {
                "id": "rps",
                "preference": [[0.5, 1, 0], [0, 0.5, 1], [1, 0, 0.5]],
                "reference": [0.2, 0.3, 0.5],
            },
            {"preference": [[0.5, 0.8], [0.2, 0.5]], "reference": [0.5, 0.5], "lengths": [10, 200]},
        ]
    )
    assert game.prompt_ids == ["rps", "prompt-1"]
    assert game.max_responses == 3
    np.testing.assert_array_equal(game.prompts[0].lengths, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(game.prompts[1].lengths, [10.0, 200.0])
    assert not game.prompts[0].preference.flags.writeable


VALID_PAIR = [[0.5, 0.7], [0.3, 0.5]]
HALF_HALF = [0.5, 0.5]


@pytest.mark.parametrize(
    "prompt, message",
    [
        ({"preference": [[0.5, 0.7, 0.2], [0.3, 0.5, 0.4]], "reference": HALF_HALF}, "square matrix"),
        ({"preference": [[0.5]], "reference": [1.0]}, "needs at least 2 responses"),
        (
            {"preference": [[0.5, 0.7], [0.4, 0.5]], "reference": HALF_HALF},
            r"preference\[0\]\[1\] \+ preference\[1\]\[0\] = 1.1",
        ),
        (
            {"preference": [[0.4, 0.7], [0.3, 0.5]], "reference": HALF_HALF},
            r"preference\[0\]\[0\] = 0.4, expected 0.5",
        ),
        ({"preference": [[0.5, 1.2], [-0.2, 0.5]], "reference": HALF_HALF}, "is not a probability"),
        ({"preference": VALID_PAIR, "reference": [1.0, 0.0]}, "reference must be > 0"),
        ({"preference": VALID_PAIR, "reference": [0.5, 0.6]}, "reference must sum to 1"),
        ({"preference": VALID_PAIR, "reference": [0.5, 0.5, 0.0]}, "reference has shape"),
        ({"preference": VALID_PAIR, "reference": HALF_HALF, "lengths": [1]}, "lengths has shape"),
        ({"preference": VALID_PAIR, "reference": HALF_HALF, "lengths": [1, -2]}, "lengths must be"),
        ({"reference": HALF_HALF}, "missing required key 'preference'"),
        ({"preference": VALID_PAIR, "reference": HALF_HALF, "mu": [1, 0]}, "unknown keys"),
    ],
)
def test_inline_validation_errors(prompt, message):
    with pytest.raises(ValueError, match=message) as error:
        Game.inline([{"id": "bad-prompt", **prompt}])
    assert "'bad-prompt'" in str(error.value)


def test_inline_reference_defaults_uniform():
    game = Game.inline([{"preference": [[0.5, 0.9, 0.4], [0.1, 0.5, 0.3], [0.6, 0.7, 0.5]]}])
    np.testing.assert_allclose(game.prompts[0].reference, np.full(3, 1 / 3))


def test_game_from_config_inline():
    config = GameConfig(
        family="inline",
        preferences=[[[0.5, 0.8], [0.2, 0.5]], [[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]]],
        reference=[[0.3, 0.7], [0.2, 0.2, 0.6]],
        lengths=[[5, 50], [1, 2, 3]],
    )
    game = game_from_config(config)
    assert game.prompt_ids == ["prompt-0", "prompt-1"]
    np.testing.assert_allclose(game.prompts[1].reference, [0.2, 0.2, 0.6])
    np.testing.assert_allclose(game.prompts[0].lengths, [5, 50])


def test_game_from_config_family():
    game = game_from_config(GameConfig(family="cyclic", num_prompts=2, num_responses=3, seed=4))
    assert game.name == "cyclic"
    assert game.num_prompts == 2
    with pytest.raises(ValueError, match="needs 'preferences'"):
        game_from_config(GameConfig(family="inline"))
    with pytest.raises(ValueError, match="'reference' has 1 entries, expected one per prompt"):
        game_from_config(GameConfig(family="inline", preferences=[VALID_PAIR] * 2, reference=[HALF_HALF]))


def test_duplicate_prompt_ids_rejected():
    prompt = {"id": "same", "preference": [[0.5, 0.7], [0.3, 0.5]], "reference": [0.5, 0.5]}
    with pytest.raises(ValueError, match=r"duplicates \['same'\]"):
        Game.inline([prompt, prompt])


def test_random_family_reproducible():
    first = Game.family("random", seed=3, num_prompts=4, num_responses=5)
    second = Game.family("random", seed=3, num_prompts=4, num_responses=5)
    other = Game.family("random", seed=4, num_prompts=4, num_responses=5)
    for a, b in zip(first.prompts, second.prompts):
        np.testing.assert_array_equal(a.preference, b.preference)
        np.testing.assert_array_equal(a.reference, b.reference)
    assert not np.array_equal(first.prompts[0].preference, other.prompts[0].preference)
    assert first.params["seed"] == 3


def test_random_family_has_intransitive_prompts():
    game = Game.family("random", seed=0, num_prompts=20, num_responses=5)
    supports = [int(np.sum(nash_equilibrium(prompt.preference) > 1e-9)) for prompt in game.prompts]
    assert max(supports) >= 3


def test_cyclic_family_uniform_nash():
    game = Game.family("cyclic", seed=1, num_prompts=2, num_responses=5, margin=0.3)
    preference = game.prompts[0].preference
    np.testing.assert_allclose(preference @ np.full(5, 0.2), np.full(5, 0.5))
    np.testing.assert_allclose(nash_equilibrium(preference), np.full(5, 0.2), atol=1e-9)
    assert preference[0, 1] == pytest.approx(0.8)
    assert preference[0, 3] == pytest.approx(0.2)


def test_cyclic_family_rejects_even_size():
    with pytest.raises(ValueError, match="odd num_responses"):
        Game.family("cyclic", seed=0, num_responses=4)


def test_bradley_terry_family_transitive():
    game = Game.family("bradley_terry", seed=2, num_prompts=3, num_responses=4, score_scale=2.0)
    for prompt in game.prompts:
        best = int(np.argmax(prompt.preference.sum(axis=1)))
        assert np.all(np.delete(prompt.preference[best], best) > 0.5)
        np.testing.assert_allclose(nash_equilibrium(prompt.preference), np.eye(4)[best], atol=1e-9)


def test_length_biased_family():
    game = Game.family("length_biased", seed=5, num_prompts=3, num_responses=4, length_bias=3.0)
    assert game.has_true_preference
    for prompt in game.prompts:
        assert np.all((prompt.lengths >= 100) & (prompt.lengths <= 1000))
        longer = prompt.lengths[:, None] > prompt.lengths[None, :]
        assert np.all(prompt.preference[longer] > prompt.true_preference[longer])


@pytest.mark.parametrize(
    "family, params, message",
    [
        ("tournament", {}, "unknown game family 'tournament'"),
        ("random", {"num_response": 3}, "invalid parameters"),
        ("random", {"num_responses": 1}, "num_responses must be >= 2"),
        ("bradley_terry", {"score_scale": 0}, "score_scale must be > 0"),
    ],
)
def test_family_errors(family, params, message):
    with pytest.raises(ValueError, match=message):
        Game.family(family, seed=0, **params)


# ---------------------------------------------------------------------------
# Estimator constants and the exact batch


@pytest.mark.parametrize(
    "regularizer",
    [ReverseKL(), ImportanceForwardKL(clip=10.0), ChiSquared(clip=10.0)],
    ids=lambda r: r.name,
)
def test_estimator_gradient_constant(regularizer):
    # At θ = θ_t, ∇_θ Σ_y π_t(y)·R̂(log π_θ(y) − log μ(y)) = c·∇_θ R(softmax(θ), μ).
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        logits = torch.randn(6, generator=generator, dtype=torch.float64).requires_grad_(True)
        reference = torch.softmax(torch.randn(6, generator=generator, dtype=torch.float64), dim=0)
        log_policy = torch.log_softmax(logits, dim=0)
        previous = torch.exp(log_policy).detach()
        expected_estimator = (previous * regularizer.estimate(log_policy - torch.log(reference))).sum()
        (estimator_gradient,) = torch.autograd.grad(expected_estimator, logits)
        exact = regularizer.divergence(torch.softmax(logits, dim=0), reference)
        (exact_gradient,) = torch.autograd.grad(exact, logits)
        torch.testing.assert_close(
            estimator_gradient, regularizer.gradient_constant * exact_gradient, atol=1e-8, rtol=0
        )


def test_reference_sample_estimator_gradient_constant():
    # ForwardKL reads log π_θ of μ-samples: ∇ Σ_y μ(y)·(−log π_θ(y)) = c·∇ KL(μ‖π_θ), for every θ.
    regularizer = ForwardKL()
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, generator=generator, dtype=torch.float64).requires_grad_(True)
    reference = torch.softmax(torch.randn(5, generator=generator, dtype=torch.float64), dim=0)
    expected_estimator = (reference * regularizer.estimate(torch.log_softmax(logits, dim=0))).sum()
    (estimator_gradient,) = torch.autograd.grad(expected_estimator, logits)
    exact = regularizer.divergence(torch.softmax(logits, dim=0), reference)
    (exact_gradient,) = torch.autograd.grad(exact, logits)
    torch.testing.assert_close(
        estimator_gradient, regularizer.gradient_constant * exact_gradient, atol=1e-8, rtol=0
    )


@pytest.mark.parametrize("pair_reduction, pair_factor", [("sum", 2.0), ("mean", 1.0)])
def test_exact_batch_is_expectation(pair_reduction, pair_factor):
    # With chosen = rejected = y and weight π_t(y), the RSPO loss is
    # E_{y~π_t}[(Δ_y − η(P̂_y − ½))² + λ·m·d_y²], m = 2 for the pair sum.
    game = Game.family("random", seed=8, num_prompts=2, num_responses=4)
    padded = game.padded()
    previous_log_policy = torch.log_softmax(torch.randn(2, 4, dtype=torch.float64), dim=-1)
    log_policy = torch.log_softmax(torch.randn(2, 4, dtype=torch.float64), dim=-1)
    log_reference = torch.log(padded.reference)
    previous = torch.exp(previous_log_policy)
    win_probs = torch.einsum("pij,pj->pi", padded.preference, previous)
    loss = reverse_kl_loss(0.3, pair_reduction)
    plan = _exact_plan(previous, win_probs, padded, needs_reference_samples=False)
    value = loss(_build_batch(plan, log_policy, previous_log_policy, log_reference)).loss
    sppo_term = (log_policy - previous_log_policy - ETA * (win_probs - 0.5)).square()
    regularizer_term = 0.3 * pair_factor * (log_policy - log_reference).square()
    per_response = sppo_term + regularizer_term
    expected = (previous * per_response).sum(-1).mean()
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)


# ---------------------------------------------------------------------------
# Convergence of the exact update


@pytest.mark.parametrize("pair_reduction, coef", [("mean", 1.0), ("sum", 0.5)])
def test_reverse_kl_last_iterate_reaches_equilibrium(pair_reduction, coef):
    game = mixed_size_game()
    loss = reverse_kl_loss(coef, pair_reduction)
    tau = loss.game_regularization()["reverse_kl"]
    # Averaged pair: τ = λ/η. Summed pair: the regularizer counts twice, τ = 2λ/η.
    expected_tau = coef / ETA if pair_reduction == "mean" else 2.0 * coef / ETA
    assert tau == pytest.approx(expected_tau)
    assert tau == pytest.approx(0.5)

    result = run_game_selfplay(game, loss, iterations=ITERATIONS, mode="exact")

    assert result.regularization == GameRegularization(reverse_kl=tau)
    assert result.inner_failures == 0
    gaps = prompt_gaps(game, result.final_policy, result.regularization)
    assert max(gaps) <= 1e-6
    assert gaps[game.prompt_ids.index("cyclic")] <= 1e-6
    assert result.diagnostics[-1]["duality_gap"] <= 1e-6
    assert result.diagnostics[0]["duality_gap"] > 1e-3


def test_pair_sum_doubles_tau():
    # The same λ summed over the pair lands on the τ = 2λ/η equilibrium, not on λ/η.
    game = Game.family("random", seed=12, num_prompts=4, num_responses=4)
    coef = 0.5
    summed = run_game_selfplay(game, reverse_kl_loss(coef, "sum"), iterations=ITERATIONS)
    averaged = run_game_selfplay(game, reverse_kl_loss(coef, "mean"), iterations=2 * ITERATIONS)
    doubled_game = GameRegularization(reverse_kl=2.0 * coef / ETA)
    single_game = GameRegularization(reverse_kl=coef / ETA)
    assert max(prompt_gaps(game, summed.final_policy, doubled_game)) <= 1e-6
    assert max(prompt_gaps(game, averaged.final_policy, single_game)) <= 1e-6
    assert max(prompt_gaps(game, summed.final_policy, single_game)) > 1e-4


def test_headline_combination_reaches_mixed_equilibrium():
    # 0.1 × (IS-forward KL + 5 × reverse KL), pair summed, η = 2:
    # τ_forward = 0.1·1·2·1/(2·2) = 0.05 and τ_reverse = 0.1·5·2·2/(2·2) = 0.5.
    loss = RSPOLoss(
        base=SoftSPPOLoss(beta=BETA),
        terms=[RegularizerTerm(ImportanceForwardKL(clip=10.0), 1.0), RegularizerTerm(ReverseKL(), 5.0)],
        coef=0.1,
    )
    regularization = game_regularization_of(loss)
    assert regularization.forward_kl == pytest.approx(0.05)
    assert regularization.reverse_kl == pytest.approx(0.5)
    game = Game.family("random", seed=6, num_prompts=4, num_responses=5)
    result = run_game_selfplay(game, loss, iterations=ITERATIONS)
    assert max(prompt_gaps(game, result.final_policy, regularization)) <= 1e-6


def test_unregularized_cyclic_average_rate():
    # Soft SPPO without a regularizer on rock-paper-scissors with η = 0.5: the
    # average iterate's exploitability falls at least like 1/√T while the last
    # iterate keeps cycling.
    game = Game.family("cyclic", seed=0, num_responses=3)
    loss = RSPOLoss(base=SoftSPPOLoss(beta=2.0))
    iterations = 200
    result = run_game_selfplay(game, loss, iterations=iterations)
    assert result.regularization.is_zero
    steps = np.arange(1, iterations + 1)
    average = np.array([record["average_exploitability"] for record in result.diagnostics[1:]])
    last = np.array([record["exploitability"] for record in result.diagnostics[1:]])

    late = steps >= 10
    slope = np.polyfit(np.log(steps[late]), np.log(average[late]), 1)[0]
    assert slope <= -0.45
    assert np.max(average[late] * np.sqrt(steps[late])) <= 2.0
    assert np.min(last[iterations // 2 :]) >= 0.1


@pytest.mark.parametrize("regularizer", [ImportanceForwardKL(clip=10.0), ForwardKL()], ids=lambda r: r.name)
@pytest.mark.parametrize("mode", ["exact", "sampled"])
def test_forward_kl_runs_finite(regularizer, mode):
    # Forward KL is not relatively strongly convex, so no convergence is asserted.
    loss = RSPOLoss(base=SoftSPPOLoss(beta=BETA), terms=[RegularizerTerm(regularizer)], coef=1.0)
    game = Game.family("random", seed=1, num_prompts=3, num_responses=4)
    result = run_game_selfplay(game, loss, iterations=5, mode=mode, draws_per_prompt=64)
    assert result.regularization.forward_kl > 0
    assert len(result.diagnostics) == 6
    for record in result.diagnostics:
        assert all(math.isfinite(value) for value in record.values())


# ---------------------------------------------------------------------------
# Sampled mode


def test_sampled_reverse_kl_near_equilibrium():
    # 256 winner/loser rows per prompt and iteration (K = 5). The regression target of
    # each response does not depend on how often it is drawn, so selecting the best
    # and worst of K moves the fixed point only through the normalization of the
    # softmax. Measured with this seed: total variation 0.005 and duality gap 5e-5,
    # with no change from 64 to 1024 draws. The bounds leave a factor 10.
    game = Game.family("random", seed=1, num_prompts=5, num_responses=4)
    loss = reverse_kl_loss(1.0, "mean")
    result = run_game_selfplay(
        game, loss, iterations=30, mode="sampled", num_samples=5, draws_per_prompt=256, seed=0
    )
    assert result.diagnostics[-1]["equilibrium_tv"] <= 0.05
    assert result.diagnostics[-1]["duality_gap"] <= 1e-3
    assert result.diagnostics[0]["equilibrium_tv"] > 0.05


def test_sampled_mode_uses_seed():
    game = Game.family("random", seed=2, num_prompts=2, num_responses=4)
    loss = reverse_kl_loss(1.0, "mean")
    first = run_game_selfplay(game, loss, iterations=2, mode="sampled", draws_per_prompt=16, seed=5)
    second = run_game_selfplay(game, loss, iterations=2, mode="sampled", draws_per_prompt=16, seed=5)
    other = run_game_selfplay(game, loss, iterations=2, mode="sampled", draws_per_prompt=16, seed=6)
    np.testing.assert_array_equal(first.final_policy[0], second.final_policy[0])
    assert not np.array_equal(first.final_policy[0], other.final_policy[0])


def test_sample_mean_win_probs_run():
    game = Game.family("cyclic", seed=0, num_prompts=2, num_responses=3)
    loss = reverse_kl_loss(1.0, "mean")
    result = run_game_selfplay(
        game, loss, iterations=3, mode="sampled", draws_per_prompt=32, win_prob_estimate="sample_mean"
    )
    assert result.settings["win_prob_estimate"] == "sample_mean"
    assert all(math.isfinite(value) for value in result.diagnostics[-1].values())


def test_sampled_mode_accepts_dpo():
    game = Game.family("random", seed=0, num_prompts=2, num_responses=3)
    result = run_game_selfplay(game, RSPOLoss(base=DPOLoss(beta=0.5)), iterations=1, mode="sampled")
    assert len(result.diagnostics) == 2


# ---------------------------------------------------------------------------
# Diagnostics and outputs


def test_diagnostics_match_hand_computation():
    game = Game.family("length_biased", seed=4, num_prompts=2, num_responses=3)
    loss = reverse_kl_loss(0.5, "sum")
    result = run_game_selfplay(game, loss, iterations=3)
    record = result.diagnostics[-1]
    policy = result.final_policy

    pairs = list(zip(policy, game.prompts))
    references = [prompt.reference for prompt in game.prompts]
    expected_length = np.mean([probs @ prompt.lengths for probs, prompt in pairs])
    true_win_rate = np.mean([probs @ prompt.true_preference @ prompt.reference for probs, prompt in pairs])
    reverse_kl = np.mean([np.sum(probs * np.log(probs / prompt.reference)) for probs, prompt in pairs])
    forward_kl = np.mean([np.sum(mu * np.log(mu / probs)) for probs, mu in zip(policy, references)])
    chi_squared = np.mean([np.sum(probs**2 / prompt.reference) - 1 for probs, prompt in pairs])
    exploitabilities = np.mean([exploitability(prompt.preference, probs) for probs, prompt in pairs])
    assert record["expected_length"] == pytest.approx(expected_length)
    assert record["true_win_rate_vs_reference"] == pytest.approx(true_win_rate)
    assert record["reverse_kl"] == pytest.approx(reverse_kl)
    assert record["forward_kl"] == pytest.approx(forward_kl)
    assert record["chi_squared"] == pytest.approx(chi_squared)
    assert record["exploitability"] == pytest.approx(exploitabilities)
    assert record["iteration"] == 3
    assert record["inner_steps"] >= 1


def test_initial_diagnostics_describe_reference():
    game = Game.family("length_biased", seed=4, num_prompts=2, num_responses=3)
    result = run_game_selfplay(game, reverse_kl_loss(0.5, "sum"), iterations=1)
    start = result.diagnostics[0]
    assert start["iteration"] == 0
    assert start["reverse_kl"] == pytest.approx(0.0, abs=1e-12)
    assert start["chi_squared"] == pytest.approx(0.0, abs=1e-12)
    assert start["win_rate_vs_reference"] == pytest.approx(0.5)
    assert start["true_win_rate_vs_reference"] == pytest.approx(0.5)


def test_equilibrium_distance_uses_solver():
    game = Game.family("random", seed=9, num_prompts=2, num_responses=3)
    regularization = GameRegularization(reverse_kl=0.5)
    equilibrium = [
        regularized_equilibrium(prompt.preference, prompt.reference, regularization)
        for prompt in game.prompts
    ]
    record = policy_diagnostics(game, equilibrium, regularization, equilibrium=equilibrium)
    assert record["equilibrium_tv"] == 0.0
    assert record["duality_gap"] == pytest.approx(0.0, abs=1e-12)


def test_final_policy_json():
    game = Game.family("random", seed=0, num_prompts=3, num_responses=4)
    result = run_game_selfplay(game, reverse_kl_loss(1.0, "mean"), iterations=2)
    content = final_policy_json(result)
    assert list(content) == ["prompt-0", "prompt-1", "prompt-2"]
    for probs in content.values():
        assert len(probs) == 4
        assert sum(probs) == pytest.approx(1.0)
    assert json.loads(json.dumps(content)) == content


# ---------------------------------------------------------------------------
# Arguments


def test_tau_float_overrides_single_family():
    game = Game.family("random", seed=0, num_prompts=1, num_responses=3)
    result = run_game_selfplay(game, reverse_kl_loss(1.0, "mean"), iterations=1, tau=0.125)
    assert result.regularization == GameRegularization(reverse_kl=0.125)


def test_tau_float_rejected_for_mixture():
    loss = RSPOLoss(
        base=SoftSPPOLoss(beta=BETA),
        terms=[RegularizerTerm(ImportanceForwardKL(), 1.0), RegularizerTerm(ReverseKL(), 5.0)],
        coef=0.1,
    )
    game = Game.family("random", seed=0, num_prompts=1, num_responses=3)
    with pytest.raises(ValueError, match="ambiguous"):
        run_game_selfplay(game, loss, iterations=1, tau=0.1)
    explicit = GameRegularization(reverse_kl=0.2, forward_kl=0.1)
    assert run_game_selfplay(game, loss, iterations=1, tau=explicit).regularization == explicit


def test_unregularized_loss_has_zero_tau():
    game = Game.family("random", seed=0, num_prompts=1, num_responses=3)
    result = run_game_selfplay(game, RSPOLoss(base=SoftSPPOLoss(beta=BETA)), iterations=1)
    assert result.regularization.is_zero
    assert result.equilibrium is None
    assert result.diagnostics[-1]["duality_gap"] == pytest.approx(result.diagnostics[-1]["exploitability"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"iterations": -1}, "iterations must be >= 0"),
        ({"iterations": 1, "mode": "online"}, "mode must be 'exact' or 'sampled'"),
        ({"iterations": 1, "num_samples": 1}, "num_samples"),
        ({"iterations": 1, "draws_per_prompt": 0}, "draws_per_prompt must be >= 1"),
        ({"iterations": 1, "win_prob_estimate": "pairrm"}, "win_prob_estimate"),
        ({"iterations": 1, "inner_tolerance": 0.0}, "inner_tolerance must be > 0"),
        ({"iterations": 1, "initial_policy": [[0.5, 0.5]]}, "initial_policy for prompt 'prompt-0'"),
    ],
)
def test_run_argument_errors(arguments, message):
    game = Game.family("random", seed=0, num_prompts=1, num_responses=3)
    with pytest.raises(ValueError, match=message):
        run_game_selfplay(game, reverse_kl_loss(1.0, "mean"), **arguments)


def test_exact_mode_rejects_dpo():
    game = Game.family("random", seed=0, num_prompts=1, num_responses=3)
    with pytest.raises(ValueError, match="use mode='sampled' for 'dpo'"):
        run_game_selfplay(game, RSPOLoss(base=DPOLoss(beta=0.5)), iterations=1)


def test_initial_policy_is_used():
    game = Game.family("random", seed=0, num_prompts=1, num_responses=3)
    start = [np.array([0.2, 0.3, 0.5])]
    result = run_game_selfplay(game, reverse_kl_loss(1.0, "mean"), iterations=0, initial_policy=start)
    np.testing.assert_allclose(result.final_policy[0], start[0])
