"""Trials of a sweep: the expansion of a grid, and the trials every sweep kind enqueues."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import ExperimentConfig, SweepConfig, VariantConfig

BASE_TRIAL = "base"


@dataclass(frozen=True)
class TrialSpec:
    """One trial: a variant at one coefficient, or the base policy (``variant is None``).

    ``params`` contains the values an Optuna search sampled for the trial (empty
    for grid trials). They are already applied to ``variant`` and ``coef``.
    """

    key: str
    variant: VariantConfig | None
    coef: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def variant_name(self) -> str:
        return BASE_TRIAL if self.variant is None else self.variant.name

    def to_json(self) -> dict[str, Any]:
        """Return a JSON form that :meth:`from_json` turns back into an equal spec."""
        return {
            "key": self.key,
            "variant": None if self.variant is None else self.variant.model_dump(mode="json"),
            "coef": self.coef,
            "params": self.params,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialSpec:
        variant = None if data["variant"] is None else VariantConfig.model_validate(data["variant"])
        return cls(data["key"], variant, float(data["coef"]), dict(data.get("params", {})))


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


def enqueued_trials(sweep: SweepConfig) -> list[TrialSpec]:
    """Return the trials queued by key: the whole grid, or an Optuna search's base trial."""
    if sweep.kind == "grid":
        return expand_grid(sweep)
    return [TrialSpec(BASE_TRIAL, None, 0.0)] if sweep.include_base else []


def describe_trials(sweep: SweepConfig) -> str:
    """Return a one-line summary of the trials a sweep runs, for ``rspo-bench validate``."""
    if sweep.kind == "grid":
        trials = expand_grid(sweep)
        return f"{len(trials)} trials: {', '.join(t.key for t in trials)}"
    base = " + the base trial" if sweep.include_base else ""
    names = ", ".join(variant.name for variant in sweep.variants)
    objectives = ", ".join(sweep.objectives)
    return f"Optuna search, {sweep.n_trials} trials{base} over variants {names}; objectives {objectives}"


def single_trial_config(config: ExperimentConfig, variant_name: str, coef: float | None) -> ExperimentConfig:
    """Return ``config`` reduced to a grid of one trial, ``variant_name`` at ``coef``, without the base trial.

    ``coef`` None takes the variant's only coefficient. The experiment gets the name
    ``<name>.train.<trial key>``, so the trial has a study of its own and no sweep
    worker sharing the storage closes it as a trial missing from its grid.
    Raises ValueError for an unknown variant or a missing coefficient.
    """
    variants = {variant.name: variant for variant in config.sweep.variants}
    if variant_name not in variants:
        raise ValueError(
            f"variant {variant_name!r} not found in sweep.variants; choose one of {sorted(variants)}"
        )
    variant = variants[variant_name]
    if coef is None:
        if len(variant.coefs) != 1:
            listed = ", ".join(f"{value:g}" for value in variant.coefs)
            raise ValueError(f"variant {variant_name!r} has several coefs ({listed}); choose one with --coef")
        coef = variant.coefs[0]
    variant = variant.model_copy(update={"coefs": [coef]})
    sweep = SweepConfig(
        kind="grid", beta=config.sweep.beta, include_base=False, variants=[variant],
        objectives=config.sweep.objectives, retry=config.sweep.retry,
    )
    name = f"{config.name}.train.{trial_key(variant, coef)}"
    return config.model_copy(update={"name": name, "sweep": sweep})
