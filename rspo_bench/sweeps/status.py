"""State of a sweep read from its Optuna study: trials by state, the best trial and the Pareto front.

Only the storage is read, so the status works while workers run and on a
machine that has neither the data nor the MLflow store. optuna-dashboard
reads the same storage: ``optuna-dashboard <storage URL>``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..tracking import redact_url
from . import optuna_search as search

STATE_ORDER = ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")


@dataclass
class TrialRow:
    """One trial of the study as the status table shows it."""

    number: int
    key: str
    state: str
    values: list[float] | None
    last_intermediate: tuple[int, float] | None
    seconds: float | None
    retry_of: int | None
    mlflow_run_id: str | None


@dataclass
class SweepStatus:
    """Trials by state, the best trial (one objective) or the Pareto front (several), and where they live."""

    study_name: str
    storage: str
    objectives: list[str]
    directions: list[str]
    states: dict[str, int] = field(default_factory=dict)
    closed: int = 0
    trials: list[TrialRow] = field(default_factory=list)
    pareto_front: list[TrialRow] = field(default_factory=list)
    user_attrs: dict[str, Any] = field(default_factory=dict)


class StudyNotFoundError(LookupError):
    """The storage has no study of the requested name."""


def _row(trial: FrozenTrial) -> TrialRow:
    intermediate = trial.intermediate_values
    last = (max(intermediate), intermediate[max(intermediate)]) if intermediate else None
    seconds = None
    if trial.datetime_start is not None and trial.datetime_complete is not None:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
    return TrialRow(
        number=trial.number,
        key=search.trial_key_of(trial) or f"#{trial.number}",
        state=trial.state.name,
        values=list(trial.values) if trial.values else None,
        last_intermediate=last,
        seconds=seconds,
        retry_of=trial.system_attrs.get("failed_trial"),
        mlflow_run_id=trial.user_attrs.get("mlflow_run_id"),
    )


def collect_status(storage_url: str, study_name: str) -> SweepStatus:
    """Read study ``study_name`` from ``storage_url``; raises StudyNotFoundError naming the studies there."""
    storage = optuna.storages.RDBStorage(storage_url)

    names = optuna.study.get_all_study_names(storage)
    if study_name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise StudyNotFoundError(
            f"no study named {study_name!r} in {redact_url(storage_url)}; studies there: {known}"
        )

    study = optuna.load_study(study_name=study_name, storage=storage)
    attrs = study.user_attrs
    directions = [direction.name.lower() for direction in study.directions]
    objectives = list(attrs.get("rspo.objectives") or ["lc_win_rate"][: len(directions)])
    all_trials = study.get_trials(deepcopy=False)
    counted = [trial for trial in all_trials if search.CLOSED_ATTR not in trial.user_attrs]
    states = Counter(trial.state.name for trial in counted)

    status = SweepStatus(
        study_name=study_name,
        storage=redact_url(storage_url),
        objectives=objectives,
        directions=directions,
        states={state: states[state] for state in STATE_ORDER if states.get(state)},
        closed=len(all_trials) - len(counted),
        trials=[_row(trial) for trial in counted],
        user_attrs=dict(attrs),
    )

    complete = [trial for trial in counted if trial.state == TrialState.COMPLETE and trial.values]
    if complete:
        best = study.best_trials if len(directions) > 1 else [study.best_trial]
        status.pareto_front = [_row(trial) for trial in sorted(best, key=lambda item: item.number)
                               if not any(math.isnan(value) for value in trial.values)]
    return status


def format_values(values: list[float] | None) -> str:
    if not values:
        return ""
    return ", ".join(f"{value:.2f}" for value in values)
