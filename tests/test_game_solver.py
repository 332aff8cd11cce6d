"""Exact solver of tabular preference games, checked against closed-form equilibria."""

import ast
import inspect

import numpy as np
import pytest
from scipy.optimize import minimize

from rspo_bench.worlds import game_solver
from rspo_bench.worlds.game_solver import (
    EquilibriumNotFoundError,
    GameRegularization,
    best_response,
    best_response_value,
    divergence,
    duality_gap,
    exploitability,
    nash_equilibrium,
    regularized_equilibrium,
    solve_zero_sum_game,
)

ROCK_PAPER_SCISSORS = np.array([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])

REGULARIZATIONS = [
    GameRegularization(reverse_kl=0.2),
    GameRegularization(forward_kl=0.2),
    GameRegularization(chi_squared=0.2),
    GameRegularization(reverse_kl=0.05, forward_kl=0.01),
    GameRegularization(reverse_kl=0.02, chi_squared=0.03),
    GameRegularization(forward_kl=0.02, chi_squared=0.03),
]


def random_preference(rng, size):
    upper = np.triu(rng.uniform(size=(size, size)), 1)
    preference = upper + np.tril(1.0 - upper.T, -1)
    np.fill_diagonal(preference, 0.5)
    return preference


def condorcet_preference():
    # Response 0 beats every other response with probability 0.7; responses 1-3 form a cycle.
    preference = np.full((4, 4), 0.5)
    preference[0, 1:] = 0.7
    preference[1:, 0] = 0.3
    for winner, loser in [(1, 2), (2, 3), (3, 1)]:
        preference[winner, loser] = 0.9
        preference[loser, winner] = 0.1
    return preference


def test_rock_paper_scissors_uniform_equilibrium():
    equilibrium = nash_equilibrium(ROCK_PAPER_SCISSORS)
    np.testing.assert_allclose(equilibrium, np.full(3, 1 / 3), atol=1e-9)
    assert exploitability(ROCK_PAPER_SCISSORS, equilibrium) == pytest.approx(0.0, abs=1e-9)


def test_exploitability_of_pure_rock():
    # Paper beats rock for sure: P(paper ≻ rock) − ½ = ½.
    assert exploitability(ROCK_PAPER_SCISSORS, [1.0, 0.0, 0.0]) == pytest.approx(0.5)


def test_transitive_game_pure_equilibrium():
    scores = np.array([0.3, 2.0, -1.0, 1.2])
    preference = 1.0 / (1.0 + np.exp(-(scores[:, None] - scores[None, :])))
    equilibrium = nash_equilibrium(preference)
    np.testing.assert_allclose(equilibrium, [0.0, 1.0, 0.0, 0.0], atol=1e-9)


def test_two_by_two_mixed_equilibrium():
    # Row payoff [[3, −1], [−2, 1]]: the row player mixes 3/7 : 4/7 so the column
    # player is indifferent, the column player 2/7 : 5/7, and the value is 1/7.
    solution = solve_zero_sum_game([[3.0, -1.0], [-2.0, 1.0]])
    np.testing.assert_allclose(solution.row_strategy, [3 / 7, 4 / 7], atol=1e-9)
    np.testing.assert_allclose(solution.column_strategy, [2 / 7, 5 / 7], atol=1e-9)
    assert solution.value == pytest.approx(1 / 7, abs=1e-9)


def test_weighted_cycle_interior_equilibrium():
    # P − ½ = [[0, a, −b], [−a, 0, c], [b, −c, 0]] is skew-symmetric, and
    # (P − ½)·(c, b, a) = 0, so π* ∝ (c, b, a) makes every response win exactly ½.
    a, b, c = 0.1, 0.3, 0.2
    preference = 0.5 + np.array([[0.0, a, -b], [-a, 0.0, c], [b, -c, 0.0]])
    equilibrium = nash_equilibrium(preference)
    np.testing.assert_allclose(equilibrium, np.array([c, b, a]) / (a + b + c), atol=1e-9)


def test_nash_value_is_half_on_random_games():
    rng = np.random.default_rng(7)
    for _ in range(10):
        preference = random_preference(rng, int(rng.integers(2, 8)))
        equilibrium = nash_equilibrium(preference)
        assert np.min(equilibrium @ preference) == pytest.approx(0.5, abs=1e-9)
        assert exploitability(preference, equilibrium) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("regularization", REGULARIZATIONS, ids=lambda r: str(r.as_dict()))
def test_indifferent_preference_equilibrium_is_reference(regularization):
    # With P = ½ everywhere the payoff is constant, so π*_τ minimizes R(π, μ): π = μ.
    reference = np.array([0.1, 0.6, 0.3])
    equilibrium = regularized_equilibrium(np.full((3, 3), 0.5), reference, regularization)
    np.testing.assert_allclose(equilibrium, reference, atol=1e-10)


@pytest.mark.parametrize(
    "regularization",
    [
        GameRegularization(reverse_kl=1e-3),
        GameRegularization(forward_kl=1e-3),
        GameRegularization(chi_squared=1e-3),
    ],
    ids=["reverse_kl", "forward_kl", "chi_squared"],
)
def test_condorcet_winner_small_tau(regularization):
    reference = np.array([0.1, 0.3, 0.3, 0.3])
    equilibrium = regularized_equilibrium(condorcet_preference(), reference, regularization)
    assert equilibrium[0] >= 0.99


def test_condorcet_winner_is_nash():
    np.testing.assert_allclose(nash_equilibrium(condorcet_preference()), [1.0, 0.0, 0.0, 0.0], atol=1e-9)


def test_reverse_kl_fixed_point_equation():
    # π*_τ ∝ μ·exp(Pπ*_τ/τ) for reverse KL.
    rng = np.random.default_rng(3)
    for tau in [1.0, 0.1, 0.01]:
        preference = random_preference(rng, 6)
        reference = rng.dirichlet(np.ones(6))
        policy = regularized_equilibrium(preference, reference, GameRegularization(reverse_kl=tau))
        logits = np.log(reference) + preference @ policy / tau
        expected = np.exp(logits - logits.max())
        np.testing.assert_allclose(policy, expected / expected.sum(), atol=1e-12)


@pytest.mark.parametrize("regularization", REGULARIZATIONS, ids=lambda r: str(r.as_dict()))
def test_equilibrium_gap_is_zero(regularization):
    rng = np.random.default_rng(11)
    for _ in range(8):
        size = int(rng.integers(2, 7))
        preference = random_preference(rng, size)
        reference = rng.dirichlet(np.ones(size))
        policy = regularized_equilibrium(preference, reference, regularization)
        assert policy.sum() == pytest.approx(1.0, abs=1e-12)
        assert duality_gap(preference, policy, reference, regularization) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("tau", [1e-2, 1e-4])
def test_small_tau_equilibria_converge(tau):
    rng = np.random.default_rng(5)
    preference = random_preference(rng, 5)
    reference = rng.dirichlet(np.ones(5))
    for regularization in [
        GameRegularization(reverse_kl=tau),
        GameRegularization(forward_kl=tau),
        GameRegularization(chi_squared=tau),
    ]:
        policy = regularized_equilibrium(preference, reference, regularization)
        assert duality_gap(preference, policy, reference, regularization) <= 1e-12


def test_duality_gap_positive_off_equilibrium():
    rng = np.random.default_rng(2)
    preference = random_preference(rng, 4)
    reference = rng.dirichlet(np.ones(4))
    for regularization in REGULARIZATIONS:
        for _ in range(5):
            policy = rng.dirichlet(np.ones(4))
            assert duality_gap(preference, policy, reference, regularization) > 1e-8


def test_unregularized_gap_is_exploitability():
    rng = np.random.default_rng(4)
    preference = random_preference(rng, 5)
    policy = rng.dirichlet(np.ones(5))
    gap = duality_gap(preference, policy, np.full(5, 0.2), GameRegularization())
    assert gap == pytest.approx(exploitability(preference, policy), abs=1e-15)


@pytest.mark.parametrize("regularization", REGULARIZATIONS, ids=lambda r: str(r.as_dict()))
def test_best_response_beats_numerical_optimum(regularization):
    # An independent optimizer over softmax logits never finds a better response.
    rng = np.random.default_rng(9)
    reference = rng.dirichlet(np.ones(4))
    win_probs = rng.uniform(size=4)
    response = best_response(win_probs, reference, regularization)
    value = best_response_value(win_probs, reference, regularization)

    def negative_objective(logits):
        policy = np.exp(logits - logits.max())
        policy /= policy.sum()
        return -(policy @ win_probs - regularization.value(policy, reference))

    for start in [np.log(reference), np.zeros(4), rng.normal(size=4)]:
        options = dict(xatol=1e-10, fatol=1e-14)
        result = minimize(negative_objective, start, method="Nelder-Mead", options=options)
        assert -result.fun <= value + 1e-9
    assert value == pytest.approx(response @ win_probs - regularization.value(response, reference), abs=1e-12)


def test_reverse_kl_value_is_log_sum_exp():
    reference = np.array([0.2, 0.5, 0.3])
    win_probs = np.array([0.4, 0.9, 0.1])
    tau = 0.3
    expected = tau * np.log(np.sum(reference * np.exp(win_probs / tau)))
    value = best_response_value(win_probs, reference, GameRegularization(reverse_kl=tau))
    assert value == pytest.approx(expected)


def test_chi_squared_best_response_leaves_zeros():
    # π_y = max(0, μ_y(q_y − ν)/(2τ)): a response far behind gets probability 0.
    response = best_response([1.0, 0.9, 0.0], [1 / 3, 1 / 3, 1 / 3], GameRegularization(chi_squared=0.05))
    assert response[2] == 0.0
    assert response.sum() == pytest.approx(1.0)


def test_divergence_values():
    policy = np.array([0.5, 0.5, 0.0])
    reference = np.array([0.25, 0.25, 0.5])
    assert divergence("reverse_kl", policy, reference) == pytest.approx(np.log(2.0))
    assert divergence("forward_kl", policy, reference) == np.inf
    assert divergence("chi_squared", policy, reference) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown divergence 'hellinger'"):
        divergence("hellinger", policy, reference)


def test_regularization_rejects_negative():
    with pytest.raises(ValueError, match="reverse_kl must be a finite number >= 0"):
        GameRegularization(reverse_kl=-0.1)


def test_equilibrium_rejects_bad_shapes():
    with pytest.raises(ValueError, match="square matrix"):
        regularized_equilibrium(np.full((2, 3), 0.5), [0.5, 0.5], GameRegularization(reverse_kl=1.0))
    with pytest.raises(ValueError, match="reference has shape"):
        regularized_equilibrium(np.full((3, 3), 0.5), [0.5, 0.5], GameRegularization(reverse_kl=1.0))


def test_equilibrium_not_found_error_is_runtime_error():
    assert issubclass(EquilibriumNotFoundError, RuntimeError)


def test_solver_independent_of_losses():
    # The solver is the independent reference for the losses, so it must not import them.
    tree = ast.parse(inspect.getsource(game_solver))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    allowed = {
        "__future__",
        "math",
        "collections.abc",
        "dataclasses",
        "numpy",
        "numpy.typing",
        "scipy.optimize",
        "scipy.special",
    }
    assert imported <= allowed
