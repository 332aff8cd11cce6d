"""χ² divergence, χ²(π‖μ) = E_π[π/μ] − 1, estimated by a clipped density ratio."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Regularizer


class ChiSquared(Regularizer):
    """R̂(d) = exp(min(d, clip)) = min(π_θ/μ, e^clip), with y ~ π_t.

    ∇R̂ = (π_θ/μ)·∇log π_θ(y); under π its expectation is E_π[(π/μ)∇log π], half
    of ∇χ²(π‖μ) = 2·E_π[(π/μ)∇log π]. The official code clips at 10.
    """

    name = "chi_squared"
    gradient_constant = 0.5
    divergence_name = "chi2(pi || mu)"

    def __init__(self, *, clip: float = 10.0) -> None:
        if clip <= 0:
            raise ValueError(f"chi_squared: clip must be > 0, got {clip}; the official default is 10")
        self.clip = float(clip)

    def estimate(self, values: Tensor) -> Tensor:
        return torch.exp(torch.clamp(values, max=self.clip))

    def divergence(self, policy_probs: Tensor, ref_probs: Tensor) -> Tensor:
        ratio_sq = policy_probs.square() / ref_probs.clamp_min(torch.finfo(ref_probs.dtype).tiny)
        return ratio_sq.sum(-1) - 1.0

    def params(self) -> dict[str, float]:
        return {"clip": self.clip}
