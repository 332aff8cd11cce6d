"""Pairwise self-play losses against the previous iterate π_t.

Every loss here returns one value per (prompt, chosen, rejected) row. In
iterative self-play the "reference" of these losses is the previous iterate
π_t, as in the SPPO code, never the fixed base policy μ (regularizers use μ).

- ``sppo``: the soft SPPO square loss (SPPO paper, practical form): each
  response's log-ratio log π_θ/π_t regresses onto η·(P̂(y ≻ π_t) − ½), with
  η = 1/beta, and the row loss is the mean of the chosen and rejected terms.
- ``sppo_hard``: TRL's hard-label variant: the targets are +η/2 and −η/2
  whatever the win probabilities, and the two terms are added.
- ``dpo``: −log σ(β·(Δ_chosen − Δ_rejected)), Δ = log π_θ − log π_t.
- ``ipo``: (Δ_chosen − Δ_rejected − 1/(2β))².
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from .batch import PreferenceBatch
from .registry import resolve_class


class BaseLoss(ABC):
    """A pairwise loss. ``uses_win_probs`` is True when the loss reads P̂ from the oracle."""

    name: ClassVar[str]
    uses_win_probs: ClassVar[bool] = False

    def __init__(self, *, beta: float) -> None:
        if beta <= 0:
            raise ValueError(f"{self.name}: beta must be > 0, got {beta}")
        self.beta = float(beta)

    @abstractmethod
    def __call__(self, batch: PreferenceBatch) -> Tensor:
        """Return the loss of each row, shape [B]."""

    def params(self) -> dict[str, float]:
        return {"beta": self.beta}


class SoftSPPOLoss(BaseLoss):
    """Soft SPPO: ½[(Δ_w − η(P̂_w − ½))² + (Δ_l − η(P̂_l − ½))²], η = 1/beta."""

    name = "sppo"
    uses_win_probs = True

    def __call__(self, batch: PreferenceBatch) -> Tensor:
        eta = 1.0 / self.beta
        chosen_target = eta * (batch.chosen_win_probs - 0.5)
        rejected_target = eta * (batch.rejected_win_probs - 0.5)
        chosen_term = (batch.chosen_logratios_prev() - chosen_target).square()
        rejected_term = (batch.rejected_logratios_prev() - rejected_target).square()
        return 0.5 * (chosen_term + rejected_term)


class HardSPPOLoss(BaseLoss):
    """Hard-label SPPO as TRL's ``sppo_hard``: (Δ_w − η/2)² + (Δ_l + η/2)², η = 1/beta."""

    name = "sppo_hard"

    def __call__(self, batch: PreferenceBatch) -> Tensor:
        half_eta = 0.5 / self.beta
        return (batch.chosen_logratios_prev() - half_eta).square() + (
            batch.rejected_logratios_prev() + half_eta
        ).square()


class DPOLoss(BaseLoss):
    """Iterative DPO with π_t as the reference: −log σ(β(Δ_w − Δ_l))."""

    name = "dpo"

    def __call__(self, batch: PreferenceBatch) -> Tensor:
        margin = batch.chosen_logratios_prev() - batch.rejected_logratios_prev()
        return -F.logsigmoid(self.beta * margin)


class IPOLoss(BaseLoss):
    """Iterative IPO with π_t as the reference: (Δ_w − Δ_l − 1/(2β))²."""

    name = "ipo"

    def __call__(self, batch: PreferenceBatch) -> Tensor:
        margin = batch.chosen_logratios_prev() - batch.rejected_logratios_prev()
        return (margin - 0.5 / self.beta).square()


BUILTIN_BASE_LOSSES: dict[str, type[BaseLoss]] = {
    cls.name: cls for cls in (SoftSPPOLoss, HardSPPOLoss, DPOLoss, IPOLoss)
}


def base_loss_class(name: str) -> type[BaseLoss]:
    """Return the class for a built-in loss name or an import path."""
    return resolve_class(name, BUILTIN_BASE_LOSSES, BaseLoss, "loss type")
