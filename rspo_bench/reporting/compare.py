"""Cross-sweep comparison: the same trial keys of several sweeps side by side, with differences.

Every sweep after the first is compared with the first one: each difference is
``later sweep - first sweep``. Keys present in only some sweeps get an empty
cell in the others.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rspo_bench.reporting.collect import SweepData, TrialData, trial_sort_key
from rspo_bench.reporting.game import EXPLOITABILITY, final_duality_gap

MISSING = "\u2014"


@dataclass(frozen=True)
class ComparedMetric:
    """One metric of the comparison table: header, value of a trial and number format."""

    header: str
    value: Callable[[TrialData], float | None]
    # Decimal places. None formats with 3 significant digits, for values spanning many orders of magnitude.
    digits: int | None
    # Whether a larger value is better, which sets the color of differences. None leaves them uncolored.
    higher_is_better: bool | None


LM_METRICS = (
    ComparedMetric("LC (%)", lambda trial: trial.final("lc_win_rate"), 1, True),
    ComparedMetric("WR (%)", lambda trial: trial.final("win_rate"), 1, True),
    ComparedMetric("Length", lambda trial: trial.final("avg_length"), 0, None),
)
GAME_METRICS = (
    ComparedMetric("Final gap", final_duality_gap, None, False),
    ComparedMetric("Exploit. (last iter.)", lambda trial: trial.last_value(EXPLOITABILITY), None, False),
)


@dataclass
class CellView:
    """One formatted number, with ``better``/``worse`` set on differences that have a preferred sign."""

    text: str
    tone: str = ""


@dataclass
class ComparisonRowView:
    """One trial key: its values in every sweep, then its differences to the first sweep."""

    key: str
    variant: str
    coef: str
    is_base: bool
    values: list[list[CellView]]
    differences: list[list[CellView]]
    present_in: list[bool]


@dataclass
class ComparisonView:
    """The comparison table of two or more sweeps."""

    sweep_names: list[str]
    metric_headers: list[str]
    rows: list[ComparisonRowView]
    common_keys: int

    @property
    def difference_labels(self) -> list[str]:
        first = self.sweep_names[0]
        return [f"{name} \u2212 {first}" for name in self.sweep_names[1:]]


def compared_metrics(sweeps: Sequence[SweepData]) -> tuple[ComparedMetric, ...]:
    """Compare final duality gaps when every sweep is a game-world sweep, else AlpacaEval 2 metrics."""
    return GAME_METRICS if all(sweep.is_game for sweep in sweeps) else LM_METRICS


def compare_sweeps(sweeps: Sequence[SweepData]) -> ComparisonView:
    """Build the comparison table of ``sweeps``. Raises ValueError for fewer than two sweeps."""
    if len(sweeps) < 2:
        raise ValueError(f"A comparison needs at least two sweeps, got {len(sweeps)}.")
    metrics = compared_metrics(sweeps)
    by_sweep = [{trial.key: trial for trial in sweep.trials} for sweep in sweeps]

    representatives: dict[str, TrialData] = {}
    for trials in by_sweep:
        for key, trial in trials.items():
            representatives.setdefault(key, trial)
    ordered = sorted(representatives.values(), key=trial_sort_key)

    rows = []
    for representative in ordered:
        key = representative.key
        trials = [trials_of_sweep.get(key) for trials_of_sweep in by_sweep]
        values = [[_value_cell(trial, metric) for metric in metrics] for trial in trials]
        differences = [
            [_difference_cell(trials[0], trial, metric) for metric in metrics] for trial in trials[1:]
        ]
        rows.append(
            ComparisonRowView(
                key=key,
                variant=representative.variant or MISSING,
                coef=MISSING if representative.coef is None else f"{representative.coef:g}",
                is_base=representative.is_base,
                values=values,
                differences=differences,
                present_in=[trial is not None for trial in trials],
            )
        )
    common = sum(all(row.present_in) for row in rows)
    return ComparisonView(
        sweep_names=[sweep.name for sweep in sweeps],
        metric_headers=[metric.header for metric in metrics],
        rows=rows,
        common_keys=common,
    )


def _value_cell(trial: TrialData | None, metric: ComparedMetric) -> CellView:
    if trial is None:
        return CellView("not run")
    value = metric.value(trial)
    if _finite(value):
        return CellView(_format(value, metric.digits))
    if trial.status == "FINISHED":
        return CellView(MISSING)
    # A pruned, failed or unfinished trial has no final metrics, so the cell shows its state instead.
    return CellView(trial.state or trial.status.lower())


def _difference_cell(first: TrialData | None, other: TrialData | None, metric: ComparedMetric) -> CellView:
    if first is None or other is None:
        return CellView(MISSING)
    first_value, other_value = metric.value(first), metric.value(other)
    if not _finite(first_value) or not _finite(other_value):
        return CellView(MISSING)
    delta = other_value - first_value
    if delta == 0 or (metric.digits is not None and round(delta, metric.digits) == 0):
        return CellView(_format(0.0, metric.digits))
    text = _format(delta, metric.digits, signed=True)
    if metric.higher_is_better is None:
        return CellView(text)
    better = (delta > 0) == metric.higher_is_better
    return CellView(text, "better" if better else "worse")


def _format(value: float, digits: int | None, *, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if digits is None:
        return f"{value:{sign}.3g}"
    return f"{value:{sign},.{digits}f}"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
