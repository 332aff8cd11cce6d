"""Read a finished (or running) sweep back from MLflow.

The sweep runner writes one parent run per sweep (tags ``rspo.role = "sweep"``
and ``rspo.sweep = <name>``, experiment named after the sweep) and one child
run per trial (``rspo.role = "trial"``, ``mlflow.parentRunId`` = parent id).
Final metrics are logged under ``alpaca_eval2/`` (language-model worlds) or
``game/final_`` (the game world); every other metric is a per-iteration history
logged with ``step = iteration``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import mlflow
from mlflow.entities import Metric, Run, ViewType

from rspo_bench.logs import get_logger

log = get_logger(__name__)

ROLE_TAG = "rspo.role"
SWEEP_TAG = "rspo.sweep"
PARENT_TAG = "mlflow.parentRunId"
STATE_TAG = "rspo.state"
WORLD_TAG = "rspo.world"
FINAL_PREFIX = "alpaca_eval2/"
GAME_FINAL_PREFIX = "game/final_"
# Final metrics of the other benchmarks, logged once after training.
BENCHMARK_PREFIXES = ("arena_hard/", "mt_bench/", "armorm/", "diversity/")
FINAL_PREFIXES = (FINAL_PREFIX, GAME_FINAL_PREFIX, *BENCHMARK_PREFIXES)
BASE_VARIANT = "base"
GAME_WORLD = "game"

# Page size for MlflowClient.search_runs. Later pages are fetched with the page token.
_PAGE_SIZE = 1000
# Run ids per bulk history query. SQLite before 3.32 allows at most 999 bound parameters.
_BULK_RUNS = 500
# Row limit of one bulk history query. A result this long may be cut off, so the
# runs of that query are read again one metric at a time.
_BULK_ROW_LIMIT = 5_000_000
# Threads for per-run history reads when the store has no bulk read (file and REST stores).
_HISTORY_THREADS = 8


class SweepNotFoundError(LookupError):
    """No parent run with ``rspo.role = "sweep"`` matches the requested sweep name."""


@dataclass
class TrialData:
    """One trial (child run) of a sweep, with its tags, params and metrics."""

    key: str
    run_id: str
    variant: str
    coef: float | None
    status: str
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    # Metric key -> [(step, value)], sorted by step with one value per step.
    histories: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def is_base(self) -> bool:
        """Whether this trial is the base model before self-play."""
        return self.variant == BASE_VARIANT or self.key == BASE_VARIANT

    @property
    def judge(self) -> str:
        return self.tags.get("rspo.judge", "")

    @property
    def state(self) -> str:
        """How the sweep engine ended the trial (complete, pruned, failed, interrupted), or ''."""
        return self.tags.get(STATE_TAG, "")

    @property
    def is_pruned(self) -> bool:
        return self.state == "pruned"

    @property
    def world(self) -> str:
        return self.tags.get(WORLD_TAG, "")

    @property
    def judge_is_proxy(self) -> bool:
        return self.tags.get("rspo.judge_is_proxy", "").strip().lower() == "true"

    def final(self, name: str) -> float | None:
        """Return the final metric ``alpaca_eval2/<name>``, or None when it was not logged."""
        return self.final_metrics.get(FINAL_PREFIX + name)

    def value_at(self, metric: str, step: int) -> float | None:
        """Return the value of ``metric`` logged at ``step``, or None when that step has none."""
        for logged_step, value in self.histories.get(metric, ()):
            if logged_step == step:
                return value
        return None

    def last_value(self, metric: str) -> float | None:
        """Return the value of ``metric`` at its last logged step, or None when it has no history."""
        history = self.histories.get(metric)
        if not history:
            return None
        return history[-1][1]


@dataclass
class SweepData:
    """One sweep: its parent run and every trial logged under it."""

    name: str
    parent_run_id: str
    tracking_uri: str
    trials: list[TrialData] = field(default_factory=list)
    parent_tags: dict[str, str] = field(default_factory=dict)
    # The flattened experiment config that the sweep runner logs as parent-run params.
    parent_params: dict[str, str] = field(default_factory=dict)
    experiment_id: str = ""
    experiment_name: str = ""

    @property
    def world(self) -> str:
        """The world kind (tiny, hf, game) from the config params, else the most common trial tag."""
        kind = self.parent_params.get("world.kind")
        if kind:
            return kind
        counts: dict[str, int] = defaultdict(int)
        for trial in self.trials:
            if trial.world:
                counts[trial.world] += 1
        return max(sorted(counts), key=counts.__getitem__) if counts else ""

    @property
    def is_game(self) -> bool:
        return self.world == GAME_WORLD


def collect_sweep(tracking_uri: str, sweep: str) -> SweepData:
    """Load the parent run of ``sweep`` and all its trial runs with their metric histories.

    Raises SweepNotFoundError, naming the sweeps that do exist in the store, when
    no parent run carries ``rspo.sweep = <sweep>``. When the sweep was started
    more than once, the parent run that started last is used.
    """
    client = mlflow.MlflowClient(tracking_uri)
    experiment_ids = _experiment_ids(client)

    parents = [
        run
        for run in _search_all(client, experiment_ids, f"tags.`{ROLE_TAG}` = 'sweep'")
        if run.data.tags.get(SWEEP_TAG) == sweep
    ]
    if not parents:
        raise SweepNotFoundError(_not_found_message(client, experiment_ids, tracking_uri, sweep))
    parents.sort(key=lambda run: run.info.start_time or 0)
    parent = parents[-1]
    if len(parents) > 1:
        log.warning(
            "Sweep %r has %d parent runs in %s; using the latest one, %s",
            sweep,
            len(parents),
            tracking_uri,
            parent.info.run_id,
        )

    # run ids are hex strings, so they need no quoting in the filter.
    child_filter = f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'"
    trial_runs = [
        run
        for run in _search_all(client, [parent.info.experiment_id], child_filter)
        if run.data.tags.get(ROLE_TAG) == "trial"
    ]
    histories = _read_histories(client, trial_runs)
    trials = [_trial_from_run(run, histories.get(run.info.run_id, {})) for run in trial_runs]
    trials.sort(key=trial_sort_key)
    log.info("Collected sweep %r from %s: %d trials", sweep, tracking_uri, len(trials))

    experiment = client.get_experiment(parent.info.experiment_id)
    return SweepData(
        name=sweep,
        parent_run_id=parent.info.run_id,
        tracking_uri=tracking_uri,
        trials=trials,
        parent_tags=dict(parent.data.tags),
        parent_params=dict(parent.data.params),
        experiment_id=parent.info.experiment_id,
        experiment_name=experiment.name if experiment is not None else "",
    )


def list_sweeps(tracking_uri: str) -> list[str]:
    """Return the sorted names of all sweeps (parent runs) in the tracking store."""
    client = mlflow.MlflowClient(tracking_uri)
    return _sweep_names(client, _experiment_ids(client))


def _experiment_ids(client: mlflow.MlflowClient) -> list[str]:
    ids: list[str] = []
    page_token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, page_token=page_token)
        ids.extend(experiment.experiment_id for experiment in page)
        page_token = page.token
        if not page_token:
            return ids


def _search_all(client: mlflow.MlflowClient, experiment_ids: list[str], filter_string: str) -> Iterator[Run]:
    if not experiment_ids:
        return
    page_token = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=_PAGE_SIZE,
            page_token=page_token,
        )
        yield from page
        page_token = page.token
        if not page_token:
            return


def _sweep_names(client: mlflow.MlflowClient, experiment_ids: list[str]) -> list[str]:
    names = {
        run.data.tags.get(SWEEP_TAG, "")
        for run in _search_all(client, experiment_ids, f"tags.`{ROLE_TAG}` = 'sweep'")
    }
    names.discard("")
    return sorted(names)


def _not_found_message(
    client: mlflow.MlflowClient, experiment_ids: list[str], tracking_uri: str, sweep: str
) -> str:
    existing = _sweep_names(client, experiment_ids)
    if existing:
        known = "Sweeps in this store: " + ", ".join(repr(name) for name in existing) + "."
    else:
        known = "The store contains no sweep runs; check the tracking URI."
    return (
        f"Sweep {sweep!r} not found in MLflow tracking store {tracking_uri!r}: "
        f"no run has tags {ROLE_TAG}='sweep' and {SWEEP_TAG}={sweep!r}. {known}"
    )


def _trial_from_run(run: Run, metric_histories: dict[str, list[Metric]]) -> TrialData:
    tags = dict(run.data.tags)
    final_metrics: dict[str, float] = {}
    histories: dict[str, list[tuple[int, float]]] = {}
    for key, latest in run.data.metrics.items():
        if key.startswith(FINAL_PREFIXES):
            # run.data.metrics stores the value at the highest step, which is
            # the final value whether the runner logged it at step 0 or last.
            final_metrics[key] = latest
        else:
            histories[key] = _history(metric_histories.get(key, []))

    return TrialData(
        key=tags.get("rspo.trial") or run.info.run_name or run.info.run_id,
        run_id=run.info.run_id,
        variant=tags.get("rspo.variant", ""),
        coef=_parse_coef(tags.get("rspo.coef"), run.info.run_id),
        status=run.info.status,
        tags=tags,
        params=dict(run.data.params),
        final_metrics=final_metrics,
        histories=dict(sorted(histories.items())),
    )


def _history_keys(run: Run) -> list[str]:
    return [key for key in run.data.metrics if not key.startswith(FINAL_PREFIXES)]


def _read_histories(client: mlflow.MlflowClient, runs: Sequence[Run]) -> dict[str, dict[str, list[Metric]]]:
    """Read every per-iteration metric history of ``runs``: run id -> metric key -> logged values.

    A SQL store gets one query per metric key and batch of runs, so a sweep of
    500 trials with 15 metrics needs about 15 queries instead of 7,500
    ``get_metric_history`` calls. Other stores are read per run and metric on a thread pool.
    """
    # NOTE: the bulk read goes through the client's private ``_tracking_client.store`` (MLflow 3.x).
    # When that attribute or the store method is missing, the per-metric path runs instead.
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    bulk_read = getattr(store, "get_metric_history_bulk", None)
    if bulk_read is None:
        return _read_histories_per_metric(client, runs)

    runs_by_key: dict[str, list[str]] = defaultdict(list)
    for run in runs:
        for key in _history_keys(run):
            runs_by_key[key].append(run.info.run_id)

    histories: dict[str, dict[str, list[Metric]]] = defaultdict(lambda: defaultdict(list))
    retry: list[Run] = []
    by_id = {run.info.run_id: run for run in runs}
    for key, run_ids in runs_by_key.items():
        for start in range(0, len(run_ids), _BULK_RUNS):
            batch = run_ids[start : start + _BULK_RUNS]
            rows = bulk_read(batch, key, _BULK_ROW_LIMIT)
            if len(rows) >= _BULK_ROW_LIMIT:
                log.warning(
                    "Metric %r: bulk history read reached the %d-row limit; reading its %d runs one by one",
                    key, len(rows), len(batch),
                )
                retry += [by_id[run_id] for run_id in batch]
                continue
            for row in rows:
                histories[row.run_id][key].append(row)

    if retry:
        unique = list({run.info.run_id: run for run in retry}.values())
        histories.update(_read_histories_per_metric(client, unique))
    return histories


def _read_histories_per_metric(
    client: mlflow.MlflowClient, runs: Sequence[Run]
) -> dict[str, dict[str, list[Metric]]]:
    requests = [(run.info.run_id, key) for run in runs for key in _history_keys(run)]
    with ThreadPoolExecutor(max_workers=_HISTORY_THREADS) as pool:
        results = pool.map(lambda request: client.get_metric_history(*request), requests)
        histories: dict[str, dict[str, list[Metric]]] = defaultdict(dict)
        for (run_id, key), metrics in zip(requests, results, strict=True):
            histories[run_id][key] = list(metrics)
    return histories


def _history(metrics: list) -> list[tuple[int, float]]:
    """Sort by step and keep the latest-logged value where a step was logged twice (a resumed trial)."""
    by_step: dict[int, tuple[int, float]] = {}
    for metric in metrics:
        previous = by_step.get(metric.step)
        if previous is None or metric.timestamp >= previous[0]:
            by_step[metric.step] = (metric.timestamp, metric.value)
    return [(step, value) for step, (_, value) in sorted(by_step.items())]


def _parse_coef(text: str | None, run_id: str) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        log.warning("Ignoring invalid rspo.coef tag %r of run %s: not a number", text, run_id)
        return None
    return None if math.isnan(value) else value


def trial_sort_key(trial: TrialData) -> tuple[bool, str, float, str]:
    """Order the base model first, then by variant and coefficient."""
    coef = math.inf if trial.coef is None else trial.coef
    return (not trial.is_base, trial.variant, coef, trial.key)
