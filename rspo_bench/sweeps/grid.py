"""Expansion of a grid sweep into trials."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import SweepConfig, VariantConfig

BASE_TRIAL = "base"


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a variant at one coefficient, or the base policy (``variant is None``)."""

    key: str
    variant: VariantConfig | None
    coef: float

    @property
    def variant_name(self) -> str:
        return BASE_TRIAL if self.variant is None else self.variant.name


def trial_key(variant: VariantConfig, coef: float) -> str:
    """Return the trial key, e.g. ``reverse_kl-0.5``; the coefficient uses the shortest exact form."""
    return f"{variant.name}-{coef:g}"


def expand_grid(sweep: SweepConfig) -> list[TrialSpec]:
    """Return the trials in order: the base policy first when included, then variant × coefficient."""
    trials = [TrialSpec(BASE_TRIAL, None, 0.0)] if sweep.include_base else []
    seen: set[str] = set()
    for variant in sweep.variants:
        for coef in variant.coefs:
            key = trial_key(variant, coef)
            if key in seen:
                raise ValueError(f"variant {variant.name!r} lists coefficient {coef:g} twice")
            seen.add(key)
            trials.append(TrialSpec(key, variant, coef))
    return trials
