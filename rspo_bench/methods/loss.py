"""The RSPO loss: a self-play base loss plus a weighted sum of regularizers.

For one row (x, y_w, y_l) with the default soft SPPO base loss::

    loss = ½[(Δ_w − η(P̂_w − ½))² + (Δ_l − η(P̂_l − ½))²]
           + λ · Σ_k w_k · r_k,        r_k = R̂_k(d_w) + R̂_k(d_l)

with Δ = log π_θ − log π_t, d = log π_θ − log μ, η = 1/beta, λ = ``coef`` and
w_k the weight of regularizer k inside the combination. As in the official RSPO
code, the regularizer is summed over the chosen and rejected responses while the
SPPO term averages them (``pair_reduction="sum"``); ``"mean"`` averages both.
A regularizer on samples of μ (non-IS forward KL) contributes R̂ once per row.

The headline method of the RSPO paper (Tang et al., arXiv 2503.00030),
0.1 × (IS-forward KL + 5 × reverse KL), is
``coef=0.1`` with terms ``[(ImportanceForwardKL(clip=10), 1), (ReverseKL(), 5)]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from .base_losses import BaseLoss, SoftSPPOLoss
from .batch import PreferenceBatch
from .regularizers import Regularizer

PairReduction = Literal["sum", "mean"]


@dataclass(frozen=True)
class RegularizerTerm:
    """One regularizer inside the combination, with its weight and metric label."""

    regularizer: Regularizer
    weight: float = 1.0
    label: str = ""

    def metric_label(self) -> str:
        return self.label or self.regularizer.name


@dataclass
class LossOutput:
    """Scalar loss to minimise, the per-row losses [B] and detached scalar metrics."""

    loss: Tensor
    per_row: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class RSPOLoss:
    """Base self-play loss plus ``coef`` × the weighted sum of regularizer estimators."""

    def __init__(
        self,
        *,
        base: BaseLoss,
        terms: Sequence[RegularizerTerm] = (),
        coef: float = 0.0,
        pair_reduction: PairReduction = "sum",
    ) -> None:
        if coef < 0:
            raise ValueError(f"coef must be >= 0, got {coef}")
        if pair_reduction not in ("sum", "mean"):
            raise ValueError(f"pair_reduction must be 'sum' or 'mean', got {pair_reduction!r}")
        labels = [term.metric_label() for term in terms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"regularizer labels must be unique, got {labels}; set 'label' to tell them apart")
        self.base = base
        self.terms = tuple(terms)
        self.coef = float(coef)
        self.pair_reduction: PairReduction = pair_reduction

    @property
    def uses_reference_samples(self) -> bool:
        """Whether some term needs log π_θ of samples of the base policy μ."""
        return any(term.regularizer.sample_source == "reference" for term in self.terms)

    def regularizer_values(self, term: RegularizerTerm, batch: PreferenceBatch) -> Tensor:
        """Return r_k of each row, shape [B], before the weight and ``coef``."""
        regularizer = term.regularizer
        if regularizer.sample_source == "reference":
            if batch.ref_sample_logps is None:
                raise ValueError(
                    f"regularizer {term.metric_label()!r} needs ref_sample_logps (log π_θ of base-policy samples)"
                )
            return regularizer.estimate(batch.ref_sample_logps)
        pair = regularizer.estimate(batch.chosen_logratios_ref()) + regularizer.estimate(
            batch.rejected_logratios_ref()
        )
        return pair if self.pair_reduction == "sum" else 0.5 * pair

    def __call__(self, batch: PreferenceBatch) -> LossOutput:
        weights = batch.normalized_weights()
        base_rows = self.base(batch)
        per_row = base_rows
        metrics: dict[str, float] = {self.base.name: float((weights * base_rows).sum().detach())}

        reg_total = base_rows.new_zeros(())
        for term in self.terms:
            values = self.regularizer_values(term, batch)
            metrics[f"reg/{term.metric_label()}"] = float((weights * values).sum().detach())
            per_row = per_row + self.coef * term.weight * values
            reg_total = reg_total + self.coef * term.weight * (weights * values).sum()

        loss = (weights * per_row).sum()
        metrics["reg_total"] = float(reg_total.detach())
        metrics["loss"] = float(loss.detach())
        metrics["logratio_ref/chosen"] = float((weights * batch.chosen_logratios_ref()).sum().detach())
        metrics["logratio_ref/rejected"] = float((weights * batch.rejected_logratios_ref()).sum().detach())
        return LossOutput(loss=loss, per_row=per_row, metrics=metrics)

    def game_regularization(self) -> dict[str, float]:
        """Return τ of the regularized game E4 implied by each term, for the soft SPPO base loss.

        Linearising the SPPO square loss at θ_t gives ∇ ≈ 2∇[KL(π_θ‖π_t) − η·P(π_θ ≻ π_t)].
        A term adds coef·w·m·c·∇R, with c the estimator's gradient constant and m = 2
        when the pair is summed (1 when averaged), so its stationary point solves the
        game with τ = coef·w·m·c / (2η). For reverse KL averaged over the pair this is
        τ = λ/η. Only policy-sample terms double under ``"sum"``.
        """
        if not isinstance(self.base, SoftSPPOLoss):
            raise ValueError(f"the game mapping is derived for the soft 'sppo' loss, not {self.base.name!r}")
        eta = 1.0 / self.base.beta
        strengths = {}
        for term in self.terms:
            pair_factor = 2.0 if (self.pair_reduction == "sum" and term.regularizer.sample_source == "policy") else 1.0
            constant = term.regularizer.gradient_constant
            strengths[term.metric_label()] = self.coef * term.weight * pair_factor * constant / (2.0 * eta)
        return strengths
