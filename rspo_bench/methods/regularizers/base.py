"""The regularizer interface shared by every world.

A regularizer turns per-sample quantities into a per-sample estimator R̂ whose
expected gradient, over samples of the previous iterate π_t, is a known
constant times the gradient of a divergence R(π_θ, μ) to the fixed base policy
μ. The loss values themselves are not divergences; only their gradients are.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch
from torch import Tensor

SampleSource = Literal["policy", "reference"]


class Regularizer(ABC):
    """Estimator of a divergence between the trained policy and the base policy.

    Subclasses set ``name`` (the short YAML name), ``sample_source`` and
    ``gradient_constant`` and implement :meth:`estimate` and :meth:`divergence`.

    ``sample_source`` says which inputs :meth:`estimate` takes:

    - ``"policy"``: ``values`` are sequence log-ratios d(y) = log π_θ(y|x) − log μ(y|x)
      of responses sampled from the previous iterate π_t (the self-play samples).
    - ``"reference"``: ``values`` are log π_θ(y|x) of responses sampled from μ.

    ``gradient_constant`` is c in E[∇R̂] = c·∇R(π_θ, μ) at θ = θ_t; it converts a
    loss coefficient λ into the regularization strength of the game (ητ = c·λ).
    """

    name: ClassVar[str]
    sample_source: ClassVar[SampleSource] = "policy"
    gradient_constant: ClassVar[float]
    divergence_name: ClassVar[str]

    @abstractmethod
    def estimate(self, values: Tensor) -> Tensor:
        """Return the per-sample estimator R̂, elementwise over ``values``."""

    @abstractmethod
    def divergence(self, policy_probs: Tensor, ref_probs: Tensor) -> Tensor:
        """Return the exact divergence R(π, μ) of two categorical distributions over the last axis."""

    def params(self) -> dict[str, float]:
        """Return the constructor parameters, for tracking and cache keys."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.params().items())
        return f"{type(self).__name__}({args})"


def safe_log(probs: Tensor) -> Tensor:
    """Return log(p) with log(0) = -inf replaced by a large negative finite number."""
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))
