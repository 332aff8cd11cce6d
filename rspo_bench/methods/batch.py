"""The tensors a self-play loss consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class PreferenceBatch:
    """One row per (prompt, chosen, rejected) triple; every tensor has shape [B].

    ``*_logps`` are sequence log-probabilities under the trained policy π_θ
    (differentiable), ``*_prev_logps`` under the previous iterate π_t and
    ``*_ref_logps`` under the fixed base policy μ (both frozen).
    ``*_win_probs`` are P̂(y ≻ π_t | x) from the preference oracle.
    ``ref_sample_logps`` contains log π_θ of responses sampled from μ, for
    regularizers whose ``sample_source`` is ``"reference"``.
    ``weights`` (default uniform) weight the rows in the batch mean; the game
    world uses them to feed exact expectations.
    """

    chosen_logps: Tensor
    rejected_logps: Tensor
    chosen_prev_logps: Tensor
    rejected_prev_logps: Tensor
    chosen_ref_logps: Tensor
    rejected_ref_logps: Tensor
    chosen_win_probs: Tensor
    rejected_win_probs: Tensor
    ref_sample_logps: Tensor | None = None
    weights: Tensor | None = None

    def chosen_logratios_prev(self) -> Tensor:
        return self.chosen_logps - self.chosen_prev_logps

    def rejected_logratios_prev(self) -> Tensor:
        return self.rejected_logps - self.rejected_prev_logps

    def chosen_logratios_ref(self) -> Tensor:
        return self.chosen_logps - self.chosen_ref_logps

    def rejected_logratios_ref(self) -> Tensor:
        return self.rejected_logps - self.rejected_ref_logps

    def normalized_weights(self) -> Tensor:
        """Return row weights that sum to 1."""
        if self.weights is None:
            size = self.chosen_logps.shape[0]
            return torch.full((size,), 1.0 / size, dtype=self.chosen_logps.dtype, device=self.chosen_logps.device)
        return self.weights / self.weights.sum()
