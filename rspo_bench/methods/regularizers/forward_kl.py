"""Forward KL, KL(μ‖π), by importance sampling on π_t samples or by NLL on μ samples."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Regularizer, safe_log


def _forward_kl(policy_probs: Tensor, ref_probs: Tensor) -> Tensor:
    return (ref_probs * (safe_log(ref_probs) - safe_log(policy_probs))).sum(-1)


class ImportanceForwardKL(Regularizer):
    """R̂(d) = exp(min(−d, clip)) = min(μ/π_θ, e^clip), with y ~ π_t.

    ∇R̂ = −(μ/π_θ)·∇log π_θ(y) below the clip and 0 above it, so its expectation
    under π is ∇KL(μ‖π) = −E_μ[∇log π] while no ratio is clipped. The ratio is
    sequence-level, as in the official RSPO code, where clip = 10 is the default.
    """

    name = "is_forward_kl"
    gradient_constant = 1.0
    divergence_name = "KL(mu || pi)"

    def __init__(self, *, clip: float = 10.0) -> None:
        if clip <= 0:
            raise ValueError(f"is_forward_kl: clip must be > 0, got {clip}; the official default is 10")
        self.clip = float(clip)

    def estimate(self, values: Tensor) -> Tensor:
        return torch.exp(torch.clamp(-values, max=self.clip))

    def divergence(self, policy_probs: Tensor, ref_probs: Tensor) -> Tensor:
        return _forward_kl(policy_probs, ref_probs)

    def params(self) -> dict[str, float]:
        return {"clip": self.clip}


class ForwardKL(Regularizer):
    """R̂ = −log π_θ(y), with y ~ μ: supervised NLL on responses of the base policy.

    Its expected gradient is −E_μ[∇log π] = ∇KL(μ‖π). The official code averages
    the token log-probabilities of each reference response; pass token-mean
    log-probs to follow it, or sequence sums for the exact sequence-level KL.
    """

    name = "forward_kl"
    sample_source = "reference"
    gradient_constant = 1.0
    divergence_name = "KL(mu || pi)"

    def estimate(self, values: Tensor) -> Tensor:
        return -values

    def divergence(self, policy_probs: Tensor, ref_probs: Tensor) -> Tensor:
        return _forward_kl(policy_probs, ref_probs)
