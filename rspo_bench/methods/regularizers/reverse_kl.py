"""Reverse KL, KL(π‖μ), estimated by the squared sequence log-ratio."""

from __future__ import annotations

from torch import Tensor

from .base import Regularizer, safe_log


class ReverseKL(Regularizer):
    """R̂(d) = d², with d = log π_θ(y) − log μ(y) and y ~ π_t.

    ∇R̂ = 2d·∇log π_θ(y). Its expectation under π is 2·∇KL(π‖μ), because the
    score-function gradient of KL(π‖μ) is E_π[log(π/μ)·∇log π].
    """

    name = "reverse_kl"
    gradient_constant = 2.0
    divergence_name = "KL(pi || mu)"

    def estimate(self, values: Tensor) -> Tensor:
        return values.square()

    def divergence(self, policy_probs: Tensor, ref_probs: Tensor) -> Tensor:
        return (policy_probs * (safe_log(policy_probs) - safe_log(ref_probs))).sum(-1)
