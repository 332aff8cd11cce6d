"""Warnings that a reader must see before trusting a sweep's numbers, within one sweep and across sweeps."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rspo_bench.reporting.collect import SweepData, TrialData
from rspo_bench.reporting.game import FINAL_DUALITY_GAP, final_duality_gap

FINISHED = "FINISHED"
# A trial whose LC and raw win rates differ by more than this many percentage
# points gets a warning, because the length correction then dominates the result.
LC_RAW_GAP_POINTS = 10.0
N_INSTRUCTIONS = "n_instructions"


ALPACA_EVAL_INSTRUCTIONS = 805


def sweep_warnings(sweep: SweepData) -> list[str]:
    """List the problems a reader must know before trusting the sweep's numbers."""
    warnings: list[str] = []
    if not sweep.trials:
        warnings.append(f"Sweep {sweep.name!r} has no trial runs under parent run {sweep.parent_run_id}.")

    judges = judge_names(sweep.trials)
    if len(judges) > 1:
        warnings.append(
            "Mixed judges: trials use different judges (" + ", ".join(judges) + "); "
            "win rates are comparable only between trials scored by the same judge."
        )
    misaligned = instruction_counts(sweep.trials)
    if len(misaligned) > 1:
        warnings.append(
            "Misaligned instructions: trials were scored on different numbers of AlpacaEval 2 instructions ("
            + _describe_counts(misaligned)
            + "); win rates over different instruction sets are not comparable."
        )
    subset = sorted(
        {int(count) for count in misaligned if _finite(count) and 0 < count < ALPACA_EVAL_INSTRUCTIONS}
    )
    if subset:
        warnings.append(
            "Instruction subset: trials were scored on "
            + ", ".join(str(count) for count in subset)
            + f" of the {ALPACA_EVAL_INSTRUCTIONS} AlpacaEval 2 instructions, so their LC win rates "
            "are not comparable to the leaderboard's."
        )
    for tag, label in (("rspo.data", "evaluation data"), ("rspo.code_version", "code versions")):
        values = distinct_tag_values(sweep.trials, tag)
        if len(values) > 1:
            warnings.append(f"Trials use different {label}: " + "; ".join(values) + ".")

    for trial in sweep.trials:
        warnings += _trial_warnings(trial, is_game=sweep.is_game)
    return warnings


def cross_sweep_warnings(sweeps: Sequence[SweepData]) -> list[str]:
    """List the differences between sweeps that make their numbers hard to compare."""
    if len(sweeps) < 2:
        return []
    warnings: list[str] = []
    trials = [trial for sweep in sweeps for trial in sweep.trials]
    judges = judge_names(trials)
    if len(judges) > 1:
        warnings.append(
            "Mixed judges: the sweeps in this report use different judges (" + ", ".join(judges) + "); "
            "win rates are comparable only between trials scored by the same judge."
        )
    per_sweep = {sweep.name: sorted(instruction_counts(sweep.trials)) for sweep in sweeps}
    if len({count for counts in per_sweep.values() for count in counts}) > 1:
        listed = "; ".join(
            f"{name}: {', '.join(f'{count:g}' for count in counts) or 'none logged'}"
            for name, counts in per_sweep.items()
        )
        warnings.append(
            "Misaligned instructions: the sweeps scored different numbers of AlpacaEval 2 instructions "
            f"({listed}); compare win rates only over the same instructions."
        )
    worlds = sorted({sweep.world or "(unknown)" for sweep in sweeps})
    if len(worlds) > 1:
        warnings.append(
            "The sweeps run in different worlds (" + ", ".join(worlds) + "), so equal trial keys "
            "are not the same experiment."
        )
    return warnings


def judge_names(trials: Sequence[TrialData]) -> list[str]:
    """Return the sorted judge names of ``trials``, '(unknown)' for trials without a judge tag."""
    return sorted({trial.judge or "(unknown)" for trial in trials})


def instruction_counts(trials: Sequence[TrialData]) -> dict[float, list[str]]:
    """Map each logged ``alpaca_eval2/n_instructions`` value to the keys of the trials that logged it."""
    counts: dict[float, list[str]] = {}
    for trial in trials:
        count = trial.final(N_INSTRUCTIONS)
        if count is not None and math.isfinite(count):
            counts.setdefault(count, []).append(trial.key)
    return counts


def distinct_tag_values(trials: Sequence[TrialData], tag: str) -> list[str]:
    return sorted({trial.tags[tag] for trial in trials if trial.tags.get(tag)})


def state_label(trial: TrialData) -> str:
    """Return the MLflow status and any ``rspo.state`` other than complete, e.g. ``KILLED (pruned)``."""
    if trial.state and trial.state != "complete":
        return f"{trial.status} ({trial.state})"
    return trial.status


def last_iteration(trial: TrialData) -> int | None:
    """Return the highest step any per-iteration metric of the trial reached, or None without histories."""
    steps = [history[-1][0] for history in trial.histories.values() if history]
    return max(steps) if steps else None


def _trial_warnings(trial: TrialData, *, is_game: bool) -> list[str]:
    warnings: list[str] = []
    if trial.is_pruned:
        iteration = last_iteration(trial)
        after = f" after iteration {iteration}" if iteration is not None else ""
        last_lc = trial.last_value("eval_iter/alpaca_eval2/lc_win_rate")
        detail = f"; its last per-iteration LC win rate was {last_lc:.1f}%" if _finite(last_lc) else ""
        warnings.append(
            f"Trial {trial.key} was pruned{after} (state pruned, MLflow status {trial.status}){detail}."
        )
    elif trial.status != FINISHED:
        verb = "failed" if trial.status == "FAILED" else "did not finish"
        state = f", state {trial.state}" if trial.state else ""
        warnings.append(f"Trial {trial.key} {verb} (status {trial.status}{state}).")
    elif is_game and final_duality_gap(trial) is None:
        warnings.append(f"Trial {trial.key} finished but logged no final duality gap ({FINAL_DUALITY_GAP}).")
    elif not is_game and trial.final("win_rate") is None:
        warnings.append(f"Trial {trial.key} finished but logged no final AlpacaEval 2 win rate.")

    win_rate = trial.final("win_rate")
    lc_win_rate = trial.final("lc_win_rate")
    if _finite(win_rate) and _finite(lc_win_rate) and abs(lc_win_rate - win_rate) > LC_RAW_GAP_POINTS:
        warnings.append(
            f"Trial {trial.key}: LC win rate {lc_win_rate:.1f}% differs from raw win rate "
            f"{win_rate:.1f}% by {abs(lc_win_rate - win_rate):.1f} points "
            f"(more than {LC_RAW_GAP_POINTS:g}); response length drives much of its result."
        )
    return warnings


def _describe_counts(counts: dict[float, list[str]]) -> str:
    parts = []
    for count, keys in sorted(counts.items(), key=lambda item: -len(item[1])):
        listed_keys = ", ".join(keys[:4])
        if len(keys) > 4:
            listed_keys += f" and {len(keys) - 4} more"
        parts.append(f"{count:g} for {listed_keys}")
    return "; ".join(parts)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
