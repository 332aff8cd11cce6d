"""Exact equilibria, best responses and duality gaps of tabular preference games.

This module is an independent check of the self-play losses, so it uses only
numpy and scipy and never imports the training code.

One prompt is one game. It has n responses and a preference matrix P with
P[i, j] = P(i ≻ j), P[i, j] + P[j, i] = 1 and P[i, i] = ½, which need not be
transitive. A policy π is a probability vector over the responses, and
q = Pπ contains the win probabilities q[y] = P(y ≻ π). The payoff of π against π'
is P(π ≻ π') = πᵀPπ', and πᵀPπ = ½ for every π.

The regularized game with reference policy μ has the payoff

    J(π, π') = P(π ≻ π') − R(π) + R(π'),    R(π) = Σ_k τ_k D_k(π, μ),

with D_k among KL(π‖μ), KL(μ‖π) and χ²(π‖μ). Its equilibrium π*_τ is the
policy that is a best response to itself, π*_τ = argmax_π [P(π ≻ π*_τ) − R(π)].
The duality gap of a policy π is

    gap(π) = max_π' [P(π' ≻ π) − R(π')] − [P(π ≻ π) − R(π)]  ≥ 0,

which is zero only at π*_τ when R is strictly convex. With R = 0 it is the
exploitability max_y P(y ≻ π) − ½.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import linprog
from scipy.special import logsumexp

FloatArray = NDArray[np.float64]

DIVERGENCE_KINDS = ("reverse_kl", "forward_kl", "chi_squared")


class EquilibriumNotFoundError(RuntimeError):
    """Raised when the regularized equilibrium solver does not reach its tolerance."""


@dataclass(frozen=True)
class GameRegularization:
    """Strength τ_k of each divergence in the regularizer R(π) = Σ_k τ_k D_k(π, μ).

    ``reverse_kl`` weights KL(π‖μ), ``forward_kl`` weights KL(μ‖π) and
    ``chi_squared`` weights χ²(π‖μ) = Σ π²/μ − 1.
    """

    reverse_kl: float = 0.0
    forward_kl: float = 0.0
    chi_squared: float = 0.0

    def __post_init__(self) -> None:
        for kind in DIVERGENCE_KINDS:
            value = getattr(self, kind)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"GameRegularization.{kind} must be a finite number >= 0, got {value}")

    @property
    def is_zero(self) -> bool:
        return self.reverse_kl == 0 and self.forward_kl == 0 and self.chi_squared == 0

    @property
    def total(self) -> float:
        """Sum of the strengths, the τ of a single-divergence game."""
        return self.reverse_kl + self.forward_kl + self.chi_squared

    def scaled(self, factor: float) -> GameRegularization:
        return GameRegularization(
            reverse_kl=self.reverse_kl * factor,
            forward_kl=self.forward_kl * factor,
            chi_squared=self.chi_squared * factor,
        )

    def as_dict(self) -> dict[str, float]:
        return {kind: getattr(self, kind) for kind in DIVERGENCE_KINDS}

    def value(self, policy: ArrayLike, reference: ArrayLike) -> float:
        """Compute R(π) = Σ_k τ_k D_k(π, μ), which is infinite where a weighted divergence is."""
        total = 0.0
        for kind in DIVERGENCE_KINDS:
            strength = getattr(self, kind)
            if strength > 0:
                total += strength * divergence(kind, policy, reference)
        return total


@dataclass(frozen=True)
class MatrixGameSolution:
    """Maximin strategies and value of a two-player zero-sum matrix game."""

    row_strategy: FloatArray
    column_strategy: FloatArray
    value: float


# ---------------------------------------------------------------------------
# Divergences


def divergence(kind: str, policy: ArrayLike, reference: ArrayLike) -> float:
    """Compute the divergence ``kind`` between two probability vectors.

    ``reverse_kl`` is KL(π‖μ), ``forward_kl`` is KL(μ‖π) and ``chi_squared`` is
    χ²(π‖μ), with the convention 0·log 0 = 0. The result is infinite where π puts
    mass outside the support of μ (reverse KL, χ²) or μ outside that of π (forward KL).
    """
    policy = np.asarray(policy, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if kind == "reverse_kl":
        return _kl(policy, reference)
    if kind == "forward_kl":
        return _kl(reference, policy)
    if kind == "chi_squared":
        support = policy > 0
        if np.any(reference[support] <= 0):
            return math.inf
        return float(np.sum(policy[support] ** 2 / reference[support]) - 1.0)
    raise ValueError(f"unknown divergence {kind!r}; use one of {', '.join(DIVERGENCE_KINDS)}")


def _kl(first: FloatArray, second: FloatArray) -> float:
    support = first > 0
    if np.any(second[support] <= 0):
        return math.inf
    return float(np.sum(first[support] * (np.log(first[support]) - np.log(second[support]))))


# ---------------------------------------------------------------------------
# Unregularized game: linear programming


def solve_zero_sum_game(payoff: ArrayLike) -> MatrixGameSolution:
    """Solve the zero-sum game where the row player receives xᵀAy, by two linear programs.

    The row strategy x maximizes min_j (Aᵀx)_j and the column strategy y minimizes
    max_i (Ay)_i. Both programs are solved by HiGHS through ``scipy.optimize.linprog``.
    """
    matrix = np.asarray(payoff, dtype=np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"payoff must be a non-empty 2-D matrix, got shape {matrix.shape}")
    row_strategy, row_value = _maximin_strategy(matrix)
    column_strategy, column_value = _maximin_strategy(-matrix.T)
    return MatrixGameSolution(
        row_strategy=row_strategy,
        column_strategy=column_strategy,
        value=0.5 * (row_value - column_value),
    )


def _maximin_strategy(matrix: FloatArray) -> tuple[FloatArray, float]:
    """Maximize v subject to (Aᵀx)_j ≥ v for every column j and x in the simplex."""
    rows, columns = matrix.shape
    objective = np.zeros(rows + 1)
    objective[-1] = -1.0
    inequality = np.hstack([-matrix.T, np.ones((columns, 1))])
    equality = np.hstack([np.ones((1, rows)), np.zeros((1, 1))])
    bounds = [(0.0, None)] * rows + [(None, None)]
    result = linprog(
        objective,
        A_ub=inequality,
        b_ub=np.zeros(columns),
        A_eq=equality,
        b_eq=np.ones(1),
        bounds=bounds,
        method="highs",
    )
    if result.status != 0:
        raise RuntimeError(f"linear program of the matrix game failed: {result.message}")
    strategy = np.clip(result.x[:rows], 0.0, None)
    return strategy / strategy.sum(), float(result.x[-1])


def nash_equilibrium(preference: ArrayLike) -> FloatArray:
    """Return a Nash equilibrium (von Neumann winner) π* = argmax_π min_y P(π ≻ y).

    The column player's payoff min_j Σ_i π_i P[i, j] uses P[i, j] = P(i ≻ j). The
    game is symmetric, so (π*, π*) is an equilibrium and its value is ½. When the
    equilibrium is not unique the solver returns one of them.
    """
    matrix = _check_preference(preference)
    return solve_zero_sum_game(matrix).row_strategy


def exploitability(preference: ArrayLike, policy: ArrayLike) -> float:
    """Compute max_y P(y ≻ π) − P(π ≻ π), which equals max_y P(y ≻ π) − ½ and is ≥ 0."""
    matrix = _check_preference(preference)
    policy = np.asarray(policy, dtype=np.float64)
    win_probs = matrix @ policy
    return float(np.max(win_probs) - policy @ win_probs)


# ---------------------------------------------------------------------------
# Best response of the regularized game


def best_response(
    win_probs: ArrayLike, reference: ArrayLike, regularization: GameRegularization
) -> FloatArray:
    """Return argmax_π [πᵀq − R(π)] for the win probabilities q = P(· ≻ opponent).

    Reverse KL alone has the closed form π ∝ μ·exp(q/τ). χ² alone is solved by
    water-filling and may leave responses at probability 0. Forward KL alone gives
    π_y = τμ_y/(ν − q_y) with the multiplier ν > max q found by a root search. Other
    combinations have an interior solution found by a nested root search.
    Without regularization the response is uniform over the maximizers of q.
    """
    win_probs = np.asarray(win_probs, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if regularization.is_zero:
        maximizers = win_probs >= win_probs.max() - 1e-15
        return maximizers / maximizers.sum()
    if regularization.forward_kl == 0 and regularization.chi_squared == 0:
        return _softmax(_safe_log(reference) + win_probs / regularization.reverse_kl)
    if regularization.reverse_kl == 0 and regularization.forward_kl == 0:
        return _water_filling(win_probs, reference, regularization.chi_squared)
    if regularization.reverse_kl == 0 and regularization.chi_squared == 0:
        return _forward_kl_best_response(win_probs, reference, regularization.forward_kl)
    return _interior_best_response(win_probs, reference, regularization)


def best_response_value(
    win_probs: ArrayLike, reference: ArrayLike, regularization: GameRegularization
) -> float:
    """Compute max_π [πᵀq − R(π)] (closed form log-sum-exp for reverse KL alone)."""
    win_probs = np.asarray(win_probs, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if regularization.is_zero:
        return float(np.max(win_probs))
    if regularization.forward_kl == 0 and regularization.chi_squared == 0:
        tau = regularization.reverse_kl
        return float(tau * logsumexp(win_probs / tau, b=reference))
    response = best_response(win_probs, reference, regularization)
    return float(response @ win_probs - regularization.value(response, reference))


def duality_gap(
    preference: ArrayLike, policy: ArrayLike, reference: ArrayLike, regularization: GameRegularization
) -> float:
    """Compute max_π' [P(π' ≻ π) − R(π')] − [P(π ≻ π) − R(π)], the regularized duality gap.

    It is ≥ 0, and zero only at the regularized equilibrium when R is strictly
    convex. With zero regularization it equals :func:`exploitability`.
    """
    matrix = _check_preference(preference)
    policy = np.asarray(policy, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    win_probs = matrix @ policy
    best_value = best_response_value(win_probs, reference, regularization)
    own_value = float(policy @ win_probs) - regularization.value(policy, reference)
    return best_value - own_value


def _softmax(logits: FloatArray) -> FloatArray:
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


def _safe_log(values: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore"):
        return np.log(values)


def _water_filling(win_probs: FloatArray, reference: FloatArray, tau: float) -> FloatArray:
    """Maximize πᵀq − τ(Σ π²/μ − 1): π_y = max(0, μ_y(q_y − ν)/(2τ)) with Σπ = 1."""
    candidates = np.flatnonzero(reference > 0)
    order = candidates[np.argsort(-win_probs[candidates], kind="stable")]
    sorted_q = win_probs[order]
    sorted_mu = reference[order]
    mass = np.cumsum(sorted_mu)
    weighted = np.cumsum(sorted_mu * sorted_q)
    multiplier = sorted_q[-1]
    for count in range(1, order.size + 1):
        # With the top `count` responses active, Σ μ(q − ν) = 2τ gives ν.
        candidate = (weighted[count - 1] - 2.0 * tau) / mass[count - 1]
        next_q = sorted_q[count] if count < order.size else -math.inf
        if candidate >= next_q:
            multiplier = candidate
            break
    policy = np.zeros_like(win_probs)
    policy[order] = np.maximum(sorted_mu * (sorted_q - multiplier) / (2.0 * tau), 0.0)
    return policy / policy.sum()


def _forward_kl_best_response(win_probs: FloatArray, reference: FloatArray, tau: float) -> FloatArray:
    """Maximize πᵀq − τ·KL(μ‖π): π_y = τμ_y/(ν − q_y), with Σπ = 1 fixing ν > max q."""
    if np.any(reference <= 0):
        raise ValueError("a best response with a KL term needs a reference policy with full support")

    def mass_deficit(multiplier: FloatArray) -> tuple[FloatArray, FloatArray]:
        ratios = tau * reference / (multiplier[0] - win_probs)
        return np.array([1.0 - ratios.sum()]), np.array([np.sum(ratios**2 / (tau * reference))])

    # At ν = max(q + τμ) every π_y ≤ 1, with equality for one y. At ν = max(q + nτμ) every π_y ≤ 1/n.
    low = float(np.max(win_probs + tau * reference))
    high = float(np.max(win_probs + win_probs.size * tau * reference))
    multiplier = _find_increasing_root(
        mass_deficit, np.array([low]), low=np.array([low]), high=np.array([high])
    )
    policy = tau * reference / (multiplier[0] - win_probs)
    return policy / policy.sum()


def _interior_best_response(
    win_probs: FloatArray, reference: FloatArray, regularization: GameRegularization
) -> FloatArray:
    """Maximize πᵀq − R(π) over the simplex when R contains a KL term.

    R is separable and ∂R/∂π_y is strictly increasing with limit −∞ at π_y = 0,
    so the maximizer is interior: ∂R/∂π_y(π_y) = q_y − ν for each y, with the
    multiplier ν set by Σπ = 1. The total mass decreases in ν, so ν is found by a
    safeguarded Newton search. Each π_y is solved for in log-space, where a
    reverse-KL best response may underflow to 0 without harm.
    """
    if np.any(reference <= 0):
        raise ValueError("a best response with a KL term needs a reference policy with full support")
    size = win_probs.size
    log_policy = np.log(reference)
    # For ν inside the bracket below every root has log π_y ≤ 0, so the ceiling 1 only
    # guards intermediate steps. The forward-KL term τ_f·μ/π would overflow below
    # log π = −700 (π ≈ 1e-304).
    floor = -700.0 if regularization.forward_kl > 0 else -math.inf

    def solve_log_policy(multiplier: float) -> FloatArray:
        targets = win_probs - multiplier

        def residual(log_values: FloatArray) -> tuple[FloatArray, FloatArray]:
            return (
                _regularizer_marginal(log_values, reference, regularization) - targets,
                _regularizer_log_slope(log_values, reference, regularization),
            )

        return _find_increasing_root(residual, log_policy, floor=floor, ceiling=1.0)

    def mass_deficit(multiplier: NDArray[np.float64]) -> tuple[FloatArray, FloatArray]:
        nonlocal log_policy
        log_policy = solve_log_policy(float(multiplier[0]))
        mass = np.exp(log_policy).sum()
        slope = _regularizer_inverse_curvature(log_policy, reference, regularization).sum()
        return np.array([1.0 - mass]), np.array([slope])

    # At ν = max_y(q_y − ∂R/∂π_y(1)) one response gets π_y = 1 and none more, so the mass
    # is ≥ 1. At ν = max_y(q_y − ∂R/∂π_y(1/n)) every π_y ≤ 1/n, so the mass is ≤ 1.
    low = np.max(win_probs - _regularizer_marginal(np.zeros(size), reference, regularization))
    uniform = np.full(size, -math.log(size))
    high = np.max(win_probs - _regularizer_marginal(uniform, reference, regularization))
    multiplier = _find_increasing_root(
        mass_deficit, np.array([0.5 * (low + high)]), low=np.array([low]), high=np.array([high])
    )
    policy = np.exp(solve_log_policy(float(multiplier[0])))
    return policy / policy.sum()


def _find_increasing_root(
    function: Callable[[FloatArray], tuple[FloatArray, FloatArray]],
    start: FloatArray,
    *,
    low: FloatArray | None = None,
    high: FloatArray | None = None,
    floor: float = -math.inf,
    ceiling: float = math.inf,
    max_iterations: int = 300,
) -> FloatArray:
    """Solve function(x) = 0 elementwise for an increasing function that returns (value, derivative).

    An element without a bracket [low, high] steps towards the root by twice its
    Newton step, doubling the step while the sign stays the same. Inside a bracket,
    Newton steps run with bisection, as in Numerical Recipes' rtsafe, whenever a
    step leaves the bracket or is not at most half the step before the last (the
    slow far tail of exp(−u) needs this). An element stops once its Newton step or
    its bracket is at rounding level. Estimates are kept in [floor, ceiling], and an
    element whose root lies outside returns the nearer limit.
    """
    estimate = np.array(start, dtype=np.float64)
    low = np.full_like(estimate, -math.inf) if low is None else np.array(low, dtype=np.float64)
    high = np.full_like(estimate, math.inf) if high is None else np.array(high, dtype=np.float64)
    search_width = np.zeros_like(estimate)
    older_step = np.full_like(estimate, math.inf)
    last_step = np.full_like(estimate, math.inf)
    for _ in range(max_iterations):
        value, slope = function(estimate)
        low = np.where(value <= 0, np.maximum(low, estimate), low)
        high = np.where(value >= 0, np.minimum(high, estimate), high)
        newton = estimate - value / slope
        newton_step = np.abs(newton - estimate)
        resolution = 4.0 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(estimate))
        done = (value == 0) | (high - low <= resolution) | (newton_step <= resolution)
        done |= ((estimate <= floor) & (value > 0)) | ((estimate >= ceiling) & (value < 0))
        if np.all(done):
            return estimate

        bracketed = np.isfinite(low) & np.isfinite(high)
        search_width = np.maximum(2.0 * search_width, 2.0 * newton_step)
        searched = estimate - np.sign(value) * search_width
        useful = (newton > low) & (newton < high) & (newton_step <= 0.5 * older_step)
        refined = np.where(useful, newton, 0.5 * (low + high))
        updated = np.clip(np.where(bracketed, refined, searched), floor, ceiling)

        older_step = np.where(bracketed, last_step, older_step)
        last_step = np.where(bracketed, np.abs(updated - estimate), last_step)
        estimate = np.where(done, estimate, updated)
    return estimate


def _regularizer_marginal(
    log_policy: FloatArray, reference: FloatArray, regularization: GameRegularization
) -> FloatArray:
    """Return ∂R/∂π_y at log π = ``log_policy``."""
    marginal = 2.0 * regularization.chi_squared * np.exp(log_policy) / reference
    if regularization.reverse_kl > 0:
        marginal = marginal + regularization.reverse_kl * (log_policy - np.log(reference) + 1.0)
    if regularization.forward_kl > 0:
        marginal = marginal - regularization.forward_kl * reference * np.exp(-log_policy)
    return marginal


def _regularizer_log_slope(
    log_policy: FloatArray, reference: FloatArray, regularization: GameRegularization
) -> FloatArray:
    """Return the derivative of ∂R/∂π_y with respect to log π_y.

    It is π_y·∂²R/∂π_y² = τ_r + τ_f·μ_y/π_y + 2τ_c·π_y/μ_y.
    """
    slope = regularization.reverse_kl + 2.0 * regularization.chi_squared * np.exp(log_policy) / reference
    if regularization.forward_kl > 0:
        slope = slope + regularization.forward_kl * reference * np.exp(-log_policy)
    return slope


def _regularizer_inverse_curvature(
    log_policy: FloatArray, reference: FloatArray, regularization: GameRegularization
) -> FloatArray:
    """Return 1/(∂²R/∂π_y²) at log π = ``log_policy``, the inverse diagonal Hessian of the separable R.

    It is computed as π_y/(π_y·∂²R/∂π_y²), which is 0 rather than NaN where π_y underflows.
    """
    return np.exp(log_policy) / _regularizer_log_slope(log_policy, reference, regularization)


def _best_response_jacobian(
    response: FloatArray, reference: FloatArray, regularization: GameRegularization
) -> FloatArray:
    """Return ∂BR(q)/∂q = diag(w) − wwᵀ/Σw, with w_y = 1/(∂²R/∂π_y²) on the support of BR(q), else 0."""
    support = response > 0
    weights = np.zeros_like(response)
    weights[support] = _regularizer_inverse_curvature(
        np.log(response[support]), reference[support], regularization
    )
    return np.diag(weights) - np.outer(weights, weights) / weights.sum()


# ---------------------------------------------------------------------------
# Regularized equilibrium


def regularized_equilibrium(
    preference: ArrayLike,
    reference: ArrayLike,
    regularization: GameRegularization,
    *,
    tolerance: float = 1e-12,
    max_newton_steps: int = 30,
) -> FloatArray:
    """Solve for π*_τ, the policy that is a best response to itself in the regularized game.

    The fixed point π = BR(Pπ) is solved for q = Pπ with Newton's method on
    H(q) = q − P·BR(q) (for reverse KL alone this is π ∝ μ·exp(Pπ/τ)). Its
    Jacobian I − P·∂BR/∂q has eigenvalues 1 − iω because P − ½ is
    skew-symmetric and ∂BR/∂q is symmetric positive semidefinite, so it is
    never singular. Newton steps run until rounding stops them, and the result
    is accepted when its :func:`duality_gap` is at most ``tolerance``.

    χ² alone has a piecewise-linear BR, so it is solved through smoothed games
    with an added ε·KL(π‖μ), ε → 0, and finished by solving the linear
    optimality conditions on the support that the smoothed solution suggests.

    Raises :class:`EquilibriumNotFoundError` when the gap stays above the tolerance.
    Zero regularization returns :func:`nash_equilibrium`.
    """
    matrix = _check_preference(preference)
    reference = np.asarray(reference, dtype=np.float64)
    if reference.shape != (matrix.shape[0],):
        raise ValueError(f"reference has shape {reference.shape}, expected ({matrix.shape[0]},)")
    if regularization.is_zero:
        return nash_equilibrium(matrix)
    if regularization.reverse_kl == 0 and regularization.forward_kl == 0:
        policy = _chi_squared_equilibrium(matrix, reference, regularization.chi_squared, max_newton_steps)
    else:
        start = matrix @ reference
        win_probs = _solve_smooth_fixed_point(matrix, reference, regularization, start, max_newton_steps)
        policy = best_response(win_probs, reference, regularization)
    gap = duality_gap(matrix, policy, reference, regularization)
    if not gap <= tolerance:
        raise EquilibriumNotFoundError(
            f"regularized equilibrium not found: duality gap {gap:.3e} > tolerance {tolerance:.1e} "
            f"for regularization {regularization.as_dict()}"
        )
    return policy


# Residual max|q − P·BR(q)| below which a Newton solve counts as converged. Newton steps
# continue past it until rounding stops them, and the caller checks the duality gap.
_RESIDUAL_TOLERANCE = 1e-9


def _solve_smooth_fixed_point(
    matrix: FloatArray,
    reference: FloatArray,
    regularization: GameRegularization,
    start: FloatArray,
    max_steps: int,
) -> FloatArray:
    """Return a root q of H(q) = q − P·BR(q), for a regularization with a smooth BR.

    When Newton's method fails from ``start`` a continuation path takes over. It
    first solves the game with the regularization scaled up by 2^k, where BR is
    nearly constant, then lowers the scale back to 1, starting each solve from the
    previous one. The scale ratio between solves doubles after a success and
    shrinks to its square root after a failure.
    """
    win_probs, residual = _newton_fixed_point(matrix, reference, regularization, start, max_steps)
    if residual <= _RESIDUAL_TOLERANCE:
        return win_probs
    # Scale until the total strength is well above the payoff range [0, 1].
    scale = 2.0 ** max(0, math.ceil(math.log2(4.0 / regularization.total)))
    strong = regularization.scaled(scale)
    win_probs, residual = _newton_fixed_point(matrix, reference, strong, start, max_steps)
    ratio = 2.0
    while scale > 1.0 and residual <= _RESIDUAL_TOLERANCE:
        next_scale = max(1.0, scale / ratio)
        candidate, candidate_residual = _newton_fixed_point(
            matrix, reference, regularization.scaled(next_scale), win_probs, max_steps
        )
        if candidate_residual <= _RESIDUAL_TOLERANCE:
            scale, win_probs, residual = next_scale, candidate, candidate_residual
            ratio = min(2.0 * ratio, 16.0)
        elif ratio > 1.001:
            ratio = math.sqrt(ratio)
        else:
            residual = candidate_residual
            break
    if scale > 1.0 or residual > _RESIDUAL_TOLERANCE:
        raise EquilibriumNotFoundError(
            f"regularized equilibrium not found: continuation stopped at scale {scale:.4g} with residual "
            f"max|q − P·BR(q)| = {residual:.3e}; regularization {regularization.as_dict()}"
        )
    return win_probs


def _chi_squared_equilibrium(
    matrix: FloatArray, reference: FloatArray, tau: float, max_steps: int
) -> FloatArray:
    """Solve the χ²-regularized game, whose BR is piecewise linear in q.

    A candidate support is accepted when the optimality conditions on it have an
    exact solution. The candidates are, in order: the support after semismooth
    Newton steps from q = Pμ, the support of the unregularized Nash equilibrium,
    and then, for ε = 1, 1/10, …, the supports of the smooth game with an added
    ε·KL(π‖μ) and of semismooth Newton steps started from its solution.
    """
    if np.any(reference <= 0):
        raise ValueError("the χ² equilibrium solver needs a reference policy with full support")
    unsmoothed = GameRegularization(chi_squared=tau)
    win_probs = matrix @ reference
    semismooth, _residual = _newton_fixed_point(matrix, reference, unsmoothed, win_probs, max_steps)
    policy = _chi_squared_on_support(matrix, reference, tau, _water_filling(semismooth, reference, tau) > 0)
    if policy is not None:
        return policy
    # For small τ the support is often that of the unregularized Nash equilibrium.
    policy = _chi_squared_on_support(matrix, reference, tau, nash_equilibrium(matrix) > 1e-9)
    if policy is not None:
        return policy

    smoothing = 1.0
    for _ in range(20):
        smoothed = GameRegularization(reverse_kl=smoothing, chi_squared=tau)
        win_probs = _solve_smooth_fixed_point(matrix, reference, smoothed, win_probs, max_steps)
        semismooth, _residual = _newton_fixed_point(matrix, reference, unsmoothed, win_probs, max_steps)
        for win_probs_candidate in (win_probs, semismooth):
            support = _water_filling(win_probs_candidate, reference, tau) > 0
            policy = _chi_squared_on_support(matrix, reference, tau, support)
            if policy is not None:
                return policy
        smoothing *= 0.1
    raise EquilibriumNotFoundError(
        f"χ² equilibrium not found: no support passed the optimality check down to smoothing "
        f"{smoothing:.1e}, tau {tau}"
    )


def _chi_squared_on_support(
    matrix: FloatArray, reference: FloatArray, tau: float, support: NDArray[np.bool_]
) -> FloatArray | None:
    """Solve the χ² optimality conditions with π = 0 off ``support``, or return None when they fail.

    On the support 2τπ_y/μ_y − (Pπ)_y + ν = 0 and Σπ = 1. The solution is accepted
    when π > 0 on the support and no response off it wins more, (Pπ)_y ≤ ν + 1e-12.
    """
    indices = np.flatnonzero(support)
    size = indices.size
    system = np.zeros((size + 1, size + 1))
    system[:size, :size] = np.diag(2.0 * tau / reference[indices]) - matrix[np.ix_(indices, indices)]
    system[:size, size] = 1.0
    system[size, :size] = 1.0
    right_side = np.zeros(size + 1)
    right_side[size] = 1.0
    try:
        solution = np.linalg.solve(system, right_side)
    except np.linalg.LinAlgError:
        return None
    policy = np.zeros_like(reference)
    policy[indices] = solution[:size]
    multiplier = solution[size]
    if np.any(policy[indices] <= 0):
        return None
    if np.any(matrix[~support] @ policy > multiplier + 1e-12):
        return None
    return policy


def _fixed_point_residual(
    matrix: FloatArray, reference: FloatArray, regularization: GameRegularization, win_probs: FloatArray
) -> FloatArray:
    return win_probs - matrix @ best_response(win_probs, reference, regularization)


def _newton_fixed_point(
    matrix: FloatArray,
    reference: FloatArray,
    regularization: GameRegularization,
    start: FloatArray,
    max_steps: int,
) -> tuple[FloatArray, float]:
    """Run damped Newton steps on H(q) = q − P·BR(q) and return the last q and max|H(q)|.

    Steps stop when the residual reaches rounding level (1e-15), when backtracking
    finds no step that reduces it, or after ``max_steps``.
    """
    win_probs = start.copy()
    residual = _fixed_point_residual(matrix, reference, regularization, win_probs)
    norm = float(np.abs(residual).max())
    identity = np.eye(matrix.shape[0])
    for _ in range(max_steps):
        if norm <= 1e-15:
            break
        response = best_response(win_probs, reference, regularization)
        jacobian = identity - matrix @ _best_response_jacobian(response, reference, regularization)
        step = np.linalg.solve(jacobian, -residual)
        accepted = False
        scale = 1.0
        for _ in range(16):
            candidate = win_probs + scale * step
            candidate_residual = _fixed_point_residual(matrix, reference, regularization, candidate)
            candidate_norm = float(np.abs(candidate_residual).max())
            if candidate_norm < (1.0 - 1e-4 * scale) * norm:
                accepted = True
                break
            scale *= 0.5
        if not accepted:
            break
        win_probs, residual, norm = candidate, candidate_residual, candidate_norm
    return win_probs, norm


# ---------------------------------------------------------------------------
# Input checks


def _check_preference(preference: ArrayLike) -> FloatArray:
    matrix = np.asarray(preference, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"preference must be a non-empty square matrix, got shape {matrix.shape}")
    return matrix
