"""Game-world parts of the report: convergence figures, per-iteration game metrics and final duality gaps.

The game world logs, with ``step = iteration``, the duality gap and the
exploitability of the current policy (both are 0 at an equilibrium and
otherwise positive), ``game/reverse_kl`` and other divergences to the
reference policy as ``game/<name>``, and ``game/expected_length``. Its sweep
objective is the final metric ``game/final_duality_gap``. Any other ``game/*``
history (for example the diagnostics of rspo_bench.worlds.game.policy_diagnostics
such as ``win_rate_vs_reference``) gets a panel of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rspo_bench.reporting.collect import GAME_FINAL_PREFIX, TrialData
from rspo_bench.reporting.figures import CoefMetric, CurvePanel, curve_grid

GAME_PREFIX = "game/"
DUALITY_GAP = "game/duality_gap"
EXPLOITABILITY = "game/exploitability"
AVERAGE_DUALITY_GAP = "game/average_duality_gap"
AVERAGE_EXPLOITABILITY = "game/average_exploitability"
EXPECTED_LENGTH = "game/expected_length"
KL_TO_REFERENCE = "game/reverse_kl"
FINAL_DUALITY_GAP = GAME_FINAL_PREFIX + "duality_gap"
# Divergences of the policy to the reference policy, by metric key and panel title.
DIVERGENCES = {
    KL_TO_REFERENCE: "KL to reference policy",
    "game/reverse_kl": "Reverse KL(\u03c0\u2016\u03bc)",
    "game/forward_kl": "Forward KL(\u03bc\u2016\u03c0)",
    "game/chi_squared": "\u03c7\u00b2(\u03c0\u2016\u03bc)",
}
EXPLOITABILITY_LABEL = "max\u1d67 P(y \u227b \u03c0) \u2212 \u00bd (log scale)"

CONVERGENCE_PANELS = (
    CurvePanel(DUALITY_GAP, "Duality gap per iteration", "duality gap (log scale)"),
    CurvePanel(EXPLOITABILITY, "Exploitability per iteration", EXPLOITABILITY_LABEL),
)
# Shown beside CONVERGENCE_PANELS when some trial logged the average iterate (π_1 + … + π_t)/t.
AVERAGE_PANELS = (
    CurvePanel(AVERAGE_DUALITY_GAP, "Duality gap of the average iterate", "duality gap (log scale)"),
    CurvePanel(AVERAGE_EXPLOITABILITY, "Exploitability of the average iterate", EXPLOITABILITY_LABEL),
)
_CONVERGENCE_METRICS = {panel.metric for panel in (*CONVERGENCE_PANELS, *AVERAGE_PANELS)}


def final_duality_gap(trial: TrialData) -> float | None:
    """Return the trial's final duality gap (``game/final_duality_gap``), or None when it was not logged."""
    return trial.final_metrics.get(FINAL_DUALITY_GAP)


GAME_COEF_METRICS = (
    CoefMetric("Final duality gap", "duality gap (log scale)", final_duality_gap, log_y=True),
    CoefMetric(
        "Exploitability (last iteration)",
        "exploitability (log scale)",
        lambda trial: trial.last_value(EXPLOITABILITY),
        log_y=True,
    ),
    CoefMetric(
        "KL to reference (last iteration)", "KL (nats)", lambda trial: trial.last_value(KL_TO_REFERENCE)
    ),
    CoefMetric(
        "Expected length (last iteration)", "expected length", lambda trial: trial.last_value(EXPECTED_LENGTH)
    ),
)


def convergence_panels(trials: Sequence[TrialData]) -> list[CurvePanel]:
    """Return CONVERGENCE_PANELS, then the AVERAGE_PANELS that some trial logged."""
    logged = _logged_metrics(trials)
    return [*CONVERGENCE_PANELS, *(panel for panel in AVERAGE_PANELS if panel.metric in logged)]


def convergence_figure(trials: Sequence[TrialData]) -> bytes:
    """Plot the duality gap and the exploitability per iteration on log axes, one line per trial."""
    return curve_grid(trials, convergence_panels(trials), columns=2, log_y=True)


def game_metric_panels(trials: Sequence[TrialData]) -> list[CurvePanel]:
    """Return panels of the logged divergences (KL to reference first), length, then the rest."""
    logged = _logged_metrics(trials)
    panels = [
        CurvePanel(metric, title, "divergence (nats)")
        for metric, title in DIVERGENCES.items()
        if metric in logged
    ]
    if EXPECTED_LENGTH in logged:
        panels.append(CurvePanel(EXPECTED_LENGTH, "Expected response length", "expected length"))
    known = _CONVERGENCE_METRICS | set(DIVERGENCES) | {EXPECTED_LENGTH}
    for metric in sorted(logged - known):
        if metric.startswith(GAME_PREFIX):
            panels.append(CurvePanel(metric, metric.removeprefix(GAME_PREFIX), "value"))
    return panels


def game_metric_figure(trials: Sequence[TrialData]) -> bytes | None:
    """Plot the per-iteration game metrics of game_metric_panels, or return None when none was logged."""
    panels = game_metric_panels(trials)
    if not panels:
        return None
    return curve_grid(trials, panels)


def _logged_metrics(trials: Sequence[TrialData]) -> set[str]:
    return {metric for trial in trials for metric, history in trial.histories.items() if history}


def game_table_order(trials: Sequence[TrialData]) -> list[TrialData]:
    """Sort by final duality gap, smallest first. Trials without one keep their order at the end."""
    scored = [trial for trial in trials if _finite(final_duality_gap(trial))]
    unscored = [trial for trial in trials if not _finite(final_duality_gap(trial))]
    scored.sort(key=lambda trial: final_duality_gap(trial))
    return scored + unscored


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
