"""Run a sweep: workers take trials from one Optuna study, run them and record them in Optuna and MLflow.

Exactly once. Every grid point (and an Optuna search's base trial) is enqueued
once, under a study lock, as a WAITING trial keyed by the ``trial`` parameter.
Workers take WAITING trials with the storage's compare-and-set (see
:func:`~rspo_bench.sweeps.optuna_search.claim_waiting`), so any number of
``rspo-bench sweep`` processes, on any number of machines, can share one study
in PostgreSQL without running a trial twice. An Optuna search samples its
other trials with ``study.ask()`` under the same lock, which keeps the count
at ``n_trials``.

Crash safety. Each running trial records heartbeats from a thread. A worker
that dies leaves its trial RUNNING. The next worker to look (at start and
before every claim) fails that trial and queues a retry with the same
parameters and MLflow run, at most ``sweep.retry.max_retry`` times. It does so
at once when the dead worker ran on the same host, and otherwise after
``sweep.retry.grace_period`` without a heartbeat. An MLflow run left RUNNING
is closed or, when its trial is retried, reopened. A trial that raised an
error is not retried until the sweep is started again.

Starting a sweep again (with or without ``--resume``) reuses the study of
the same name: completed trials are skipped, failed ones run again.
``--resume`` only adds a check that the study already exists.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from .. import data as data_module
from ..cache import StageCache
from ..config import ExperimentConfig, flatten
from ..logs import get_logger
from ..tracking import SweepTracker, code_version, redact_url
from . import optuna_search as search
from .executors import build_executor
from .grid import TrialSpec, enqueued_trials
from .workers import InProcessLauncher, OptunaReporter, SubprocessLauncher, TrialOutcome

logger = get_logger(__name__)

TRIAL_PARAM = search.TRIAL_PARAM
OBJECTIVE = "alpaca_eval2/lc_win_rate"
DONE_STATES = {TrialState.COMPLETE, TrialState.PRUNED}
TAKEN_STATES = DONE_STATES | {TrialState.RUNNING, TrialState.WAITING}


@dataclass
class SweepPaths:
    """Locations of a sweep's state: MLflow store, Optuna storage and cache, by default under one work folder."""

    workdir: Path
    tracking_uri: str
    storage: str
    cache_dir: Path
    artifact_root: Path

    @classmethod
    def under(cls, workdir: str | Path, *, tracking_uri: str | None = None, storage: str | None = None,
              cache_dir: str | Path | None = None) -> SweepPaths:
        root = Path(workdir).resolve()
        root.mkdir(parents=True, exist_ok=True)
        return cls(
            workdir=root,
            tracking_uri=tracking_uri or f"sqlite:///{root / 'mlruns.db'}",
            storage=storage or f"sqlite:///{root / 'optuna.db'}",
            cache_dir=Path(cache_dir).resolve() if cache_dir else root / "cache",
            artifact_root=root / "mlartifacts",
        )


@dataclass
class SweepOptions:
    """Settings for running trials in this process.

    ``workers = 0`` runs trials one after another inside this process, so the
    world stays loaded between trials. ``workers = N`` keeps N trial
    subprocesses running, the i-th pinned to ``devices[i % len(devices)]``.
    """

    workers: int = 0
    devices: tuple[str, ...] = ()
    resume: bool = False
    system_metrics_interval: float = 5.0


@dataclass
class SweepResult:
    """Outcome of one invocation: trial states, the values, and how long it took."""

    name: str
    completed: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    pruned: dict[str, float | None] = field(default_factory=dict)
    seconds: float = 0.0
    # Engine time outside the trial loop: opening the study and runs, and the summary at the end.
    fixed_seconds: float = 0.0
    trial_seconds: float = 0.0
    tracking_uri: str = ""
    report: dict[str, Path] = field(default_factory=dict)
    pareto_front: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    finished: bool = False


class SweepSetupError(ValueError):
    """The study in the storage does not fit the config or the options; nothing has run."""


# Data files of the benchmarks after AlpacaEval 2.0, read only when the benchmark is enabled.
BENCHMARK_DATA_FILES = {
    "arena_hard": ("arena_hard/arena-hard-v0.1/question.jsonl", "arena_hard/arena-hard-v0.1/judge_config.yaml"),
    "mt_bench": ("mt_bench/question.jsonl", "mt_bench/judge_prompts.jsonl", "mt_bench/model_answer/gpt-4.jsonl",
                 "mt_bench/reference_answer/gpt-4.jsonl"),
}


def check_data(data_dir: str | Path | None, config: ExperimentConfig | None = None) -> None:
    """Fail before any work when a file the tiny world's sweep needs is missing from the data folder."""
    for relative in (
        data_module.ULTRAFEEDBACK_TRAIN,
        data_module.ALPACA_EVAL_INSTRUCTIONS,
        data_module.ALPACA_EVAL_BASELINE,
        data_module.ALPACA_EVAL_DIFFICULTY,
    ):
        data_module.data_file(relative, data_dir)
    if config is not None:
        check_benchmark_data(data_dir, config)


def check_benchmark_data(data_dir: str | Path | None, config: ExperimentConfig) -> None:
    """Fail before any work when a file of an enabled Arena-Hard or MT-Bench evaluation is missing."""
    required: list[str] = []
    for benchmark, files in BENCHMARK_DATA_FILES.items():
        if getattr(config.evaluation, benchmark).enabled:
            required += files
    if config.evaluation.arena_hard.enabled:
        required.append(f"arena_hard/arena-hard-v0.1/model_answer/{config.evaluation.arena_hard.baseline}.jsonl.gz")
    for relative in required:
        data_module.data_file(relative, data_dir)


def per_iteration_evaluation(config: ExperimentConfig) -> bool:
    """Return whether trials evaluate after every self-play iteration (asked for, or needed by a pruner)."""
    return config.evaluation.alpaca_eval2.every_iteration or config.sweep.pruner is not None


class _Heartbeat:
    """Records a running trial's heartbeat in the storage from a thread (ask/tell has no built-in one)."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int, interval: float) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        failures = 0
        while not self._stop.wait(self._interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
                failures = 0
            except Exception as error:  # noqa: BLE001 - a missed beat is retried; the grace period covers it
                failures += 1
                if failures in (1, 10, 100):
                    logger.warning("heartbeat of trial id %d failed (%d in a row): %s",
                                   self._trial_id, failures, error)


class SweepEngine:
    """One sweep process: opens the study, runs worker loops until no trial is left for it, then sums up."""

    def __init__(self, config: ExperimentConfig, paths: SweepPaths, options: SweepOptions,
                 data_dir: str | Path | None) -> None:
        self.config = config
        self.sweep = config.sweep
        self.paths = paths
        self.options = options
        self.data_dir = data_dir
        self.version = code_version()
        self.cache = StageCache(paths.cache_dir)
        self.lock = search.StudyLock(paths.storage, config.name)
        self.storage: optuna.storages.RDBStorage | None = None
        self.specs = {spec.key: spec for spec in enqueued_trials(self.sweep)}
        self.per_iteration = per_iteration_evaluation(config)
        self.own_trial_ids: set[int] = set()
        self.worker = search.worker_identity()
        self.result = SweepResult(name=config.name, tracking_uri=paths.tracking_uri)
        self.stopping = threading.Event()
        self._result_lock = threading.Lock()
        self._cache_counts = Counter()
        self.study: optuna.Study
        self.tracker: SweepTracker

    # Set-up -------------------------------------------------------------------------

    def open(self) -> None:
        """Open the study and the MLflow runs, recover from dead workers and enqueue the keyed trials."""
        started = time.perf_counter()
        with self.lock.hold():
            # Under the lock, so workers starting together on an empty database do not race
            # to create Optuna's (and then MLflow's) tables.
            self.storage = search.make_storage(self.paths.storage, self.sweep.retry)
            self.study = self._open_study()
            self.tracker = self._open_tracker()
            self._fail_dead_trials()
            self._close_orphaned_runs()
            self._enqueue_missing()
        self._log_done_before()
        self.result.fixed_seconds += time.perf_counter() - started

    def _open_study(self) -> optuna.Study:
        name, storage_url = self.config.name, redact_url(self.paths.storage)
        sampler, sampler_args = search.build_sampler(self.sweep, self.config.seed)
        pruner, pruner_args = search.build_pruner(self.sweep)
        existing = name in optuna.study.get_all_study_names(self.storage)
        if self.options.resume and not existing:
            raise SweepSetupError(
                f"--resume: no study named {name!r} in {storage_url}; "
                "start the sweep without --resume to create it"
            )
        expected = search.directions(self.sweep)
        study = optuna.create_study(study_name=name, storage=self.storage, sampler=sampler, pruner=pruner,
                                    directions=expected, load_if_exists=True)

        found = [direction.name.lower() for direction in study.directions]
        if found != expected:
            raise SweepSetupError(
                f"study {name!r} in {storage_url} optimizes {found}, but sweep.objectives "
                f"{self.sweep.objectives} needs {expected}; give the experiment another name"
            )

        attrs = study.user_attrs
        # Studies written before the kind was recorded were all grids.
        kind = attrs.get("rspo.kind", "grid" if existing else self.sweep.kind)
        if kind != self.sweep.kind:
            raise SweepSetupError(
                f"study {name!r} in {storage_url} is a {kind} sweep, but sweep.kind is {self.sweep.kind!r}; "
                "give the experiment another name"
            )
        if self.sweep.kind == "optuna":
            fingerprint = search.search_space_fingerprint(self.sweep)
            if attrs.get("rspo.search_space", fingerprint) != fingerprint:
                raise SweepSetupError(
                    f"study {name!r} in {storage_url} was sampled from another search space "
                    "(sweep.variants, sweep.search or sweep.objectives changed); "
                    "give the experiment another name to start a new search"
                )
            study.set_user_attr("rspo.search_space", fingerprint)

        study.set_user_attr("rspo.kind", self.sweep.kind)
        study.set_user_attr("rspo.objectives", self.sweep.objectives)
        study.set_user_attr("rspo.sampler", {**sampler_args, "optuna_version": optuna.__version__})
        study.set_user_attr("rspo.pruner", pruner_args)
        logger.info("Optuna study %s in %s (%s): sampler %s, pruner %s", name, storage_url,
                    "resumed" if existing else "created", sampler_args, pruner_args)
        return study

    def _open_tracker(self) -> SweepTracker:
        remote = self.paths.tracking_uri.startswith(("http://", "https://"))
        tracker = SweepTracker(
            self.paths.tracking_uri, self.config.name,
            artifact_root=None if remote else self.paths.artifact_root.as_uri(),
            parent_run_id=self.study.user_attrs.get("mlflow_parent_run_id"),
        )
        parent = tracker.parent_run_id
        tracker.log_params(parent, flatten(self.config.model_dump(mode="json")))
        tracker.set_tags(parent, {
            "rspo.code_version": self.version,
            "rspo.optuna_storage": redact_url(self.paths.storage),
            "rspo.optuna_study": self.config.name,
            "rspo.sweep_kind": self.sweep.kind,
            "rspo.objectives": ",".join(self.sweep.objectives),
            "rspo.sampler": str(self.study.user_attrs["rspo.sampler"]),
            "rspo.pruner": str(self.study.user_attrs["rspo.pruner"]),
        })
        self.study.set_user_attr("mlflow_tracking_uri", redact_url(self.paths.tracking_uri))
        self.study.set_user_attr("mlflow_parent_run_id", parent)
        return tracker

    def _trials_by_key(self) -> dict[str, list[optuna.trial.FrozenTrial]]:
        groups: dict[str, list[optuna.trial.FrozenTrial]] = defaultdict(list)
        for trial in search.counted_trials(self.study):
            key = search.trial_key_of(trial)
            if key is not None:
                groups[key].append(trial)
        return groups

    def _close_orphaned_runs(self) -> None:
        live: set[str] = set()
        finished: dict[str, tuple[str, str]] = {}
        for key, trials in self._trials_by_key().items():
            states = {trial.state for trial in trials}
            if TrialState.RUNNING in states:
                live.add(key)
            elif TrialState.COMPLETE in states:
                finished[key] = ("FINISHED", "complete")
            elif TrialState.PRUNED in states:
                finished[key] = ("KILLED", "pruned")
        self.tracker.close_orphaned_runs(live, finished)

    def _enqueue_missing(self) -> None:
        by_key = self._trials_by_key()
        added = []
        for key in self.specs:
            if {trial.state for trial in by_key.get(key, [])} & TAKEN_STATES:
                continue
            self.study.enqueue_trial({TRIAL_PARAM: key}, user_attrs={search.KEY_ATTR: key})
            added.append(key)
        if added:
            logger.info("sweep %s: enqueued %d trials: %s", self.config.name, len(added), ", ".join(added))

    def _log_done_before(self) -> None:
        by_key = self._trials_by_key()
        total = len(self.specs) if self.sweep.kind == "grid" else len(self.specs) + self.sweep.n_trials
        done = 0
        for index, key in enumerate(self.specs, start=1):
            trials = [trial for trial in by_key.get(key, []) if trial.state == TrialState.COMPLETE]
            if trials:
                done += 1
                value = trials[0].values[0]
                self.result.skipped[key] = value
                logger.info("trial %d/%d %s: already complete (%s %.2f), skipping", index, len(self.specs),
                            key, _objective_label(self.sweep.objectives[0]), value)
        for key, trials in by_key.items():
            if key not in self.specs and any(trial.state == TrialState.COMPLETE for trial in trials):
                done += 1
                self.result.skipped[key] = next(t.values[0] for t in trials if t.state == TrialState.COMPLETE)
        logger.info("sweep %s: %d trials, %d already complete", self.config.name, total, done)

    # Worker loops ----------------------------------------------------------------------

    def run_workers(self) -> None:
        """Run trials until none is left for this process: in-process, or ``workers`` trial subprocesses."""
        if self.options.workers <= 0:
            self._work(self._in_process_launcher())
            return
        launch_defaults = {
            "config": self.config.model_dump(mode="json"),
            "parent_run_id": self.tracker.parent_run_id,
            "tracking_uri": self.paths.tracking_uri,
            "cache_dir": str(self.paths.cache_dir),
            "data_dir": None if self.data_dir is None else str(Path(self.data_dir).resolve()),
            "code_version": self.version,
            "report_intermediate": self.per_iteration,
            "system_metrics_interval": self.options.system_metrics_interval,
        }
        devices = list(self.options.devices)
        launchers = [
            SubprocessLauncher(launch_defaults, device=devices[index % len(devices)] if devices else None)
            for index in range(self.options.workers)
        ]
        errors: list[BaseException] = []

        def work(launcher: SubprocessLauncher) -> None:
            try:
                self._work(launcher)
            except BaseException as error:  # noqa: BLE001 - re-raised in the main thread
                errors.append(error)
                self.stopping.set()

        threads = [threading.Thread(target=work, args=(launcher,), name=f"worker-{index}")
                   for index, launcher in enumerate(launchers)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(timeout=0.5)
        except KeyboardInterrupt:
            logger.warning("interrupted: stopping %d trial processes", len(launchers))
            self.stopping.set()
            for launcher in launchers:
                launcher.terminate()
            for thread in threads:
                thread.join()
            self.tracker.finish_sweep("KILLED")
            raise
        if errors:
            raise errors[0]

    def _in_process_launcher(self) -> InProcessLauncher:
        executor = build_executor(self.config, self.cache, self.data_dir)
        return InProcessLauncher(
            executor, self.tracker, self.config, version=self.version, cache=self.cache,
            monitor_interval=self.options.system_metrics_interval,
            record_usage=lambda key, entries: self.cache.record_usage(self.config.name, key, entries),
        )

    def _work(self, launcher: InProcessLauncher | SubprocessLauncher) -> None:
        while not self.stopping.is_set():
            with self.lock.hold():
                self._fail_dead_trials()
                trial = self._claim()
            if trial is None:
                return
            try:
                with _Heartbeat(self.storage, trial._trial_id, self.sweep.retry.heartbeat_interval):
                    self._run_claimed(trial, launcher)
            finally:
                self.own_trial_ids.discard(trial._trial_id)

    def _fail_dead_trials(self) -> None:
        search.fail_dead_trials(self.study, self.storage, self.own_trial_ids, self.sweep.retry.grace_period)

    def _claim(self) -> optuna.Trial | None:
        """Take a queued trial, or sample one while the search has budget left; None when nothing is left."""
        trial = search.claim_waiting(self.study, self.storage)
        budget_left = self.sweep.kind == "optuna" and search.sampled_slots(self.study) < self.sweep.n_trials
        if trial is None and budget_left:
            trial = search.ask_sampled(self.study)
        if trial is None:
            return None
        # Still under the study lock: no other worker checks this trial before it names its worker.
        self.own_trial_ids.add(trial._trial_id)
        self.storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr(search.WORKER_ATTR, self.worker)
        return trial

    def _spec_for(self, trial: optuna.Trial) -> TrialSpec | None:
        """Return the claimed trial's spec with its parameters fixed, or None after closing it unrun."""
        frozen = self.storage.get_trial(trial._trial_id)
        if not search.is_keyed(frozen):
            return search.suggest_trial(trial, self.sweep, search.origin_number(frozen))
        key = search.trial_key_of(frozen)
        if key not in self.specs:
            self._close(trial, f"trial {key!r} is no longer in the sweep config")
            return None
        if TRIAL_PARAM not in frozen.params:
            trial.suggest_categorical(TRIAL_PARAM, list(self.specs))
        done = [other.number for other in self._trials_by_key().get(key, [])
                if other.state in DONE_STATES and other.number != trial.number]
        if done:
            self._close(trial, f"duplicate of finished trial #{done[0]}")
            return None
        return self.specs[key]

    def _close(self, trial: optuna.Trial, reason: str) -> None:
        logger.warning("Optuna trial #%d closed without running: %s", trial.number, reason)
        trial.set_user_attr(search.CLOSED_ATTR, reason)
        self.study.tell(trial, state=TrialState.FAIL)

    def _run_claimed(self, trial: optuna.Trial, launcher: InProcessLauncher | SubprocessLauncher) -> None:
        spec = self._spec_for(trial)
        if spec is None:
            return
        attrs = trial.user_attrs
        if attrs.get(search.KEY_ATTR) != spec.key:
            trial.set_user_attr(search.KEY_ATTR, spec.key)

        tags = {
            "rspo.optuna_trial_number": str(trial.number),
            "rspo.optuna_study": self.config.name,
            "rspo.optuna_storage": redact_url(self.paths.storage),
            "rspo.variant": spec.variant_name,
            "rspo.coef": f"{spec.coef:g}",
        }
        run_id, previous = self.tracker.trial_run(spec.key, tags)
        if previous is not None:
            logger.info("trial %s: resuming MLflow run %s (was %s)", spec.key, run_id, previous)
        if attrs.get("mlflow_run_id") != run_id:
            trial.set_user_attr("mlflow_run_id", run_id)

        reporter = None
        if self.per_iteration:
            single = len(self.sweep.objectives) == 1
            reporter = OptunaReporter(trial, self.sweep.objectives[0], single_objective=single)
        logger.info("trial %s (Optuna #%d): starts", spec.key, trial.number)
        try:
            outcome = launcher.run(spec, run_id, reporter)
        except KeyboardInterrupt:
            self._tell(trial, spec, state=TrialState.FAIL)
            self.tracker.finish(run_id, "KILLED", "interrupted")
            self.tracker.finish_sweep("KILLED")
            raise
        self._record(trial, spec, run_id, outcome)

    def _tell(self, trial: optuna.Trial, spec: TrialSpec, **kwargs: Any) -> bool:
        try:
            self.study.tell(trial, **kwargs)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as error:
            # Another worker failed this trial after its heartbeat went stale and queued a retry,
            # which will run the trial again in the same MLflow run.
            logger.warning("trial %s (Optuna #%d) was already ended by another worker: %s",
                           spec.key, trial.number, error)
            return False
        return True

    def _record(self, trial: optuna.Trial, spec: TrialSpec, run_id: str, outcome: TrialOutcome) -> None:
        with self._result_lock:
            self.result.trial_seconds += outcome.seconds
            self._cache_counts.update(hits=outcome.cache_hits, misses=outcome.cache_misses)
        if outcome.status == "complete":
            try:
                values = search.objective_values(self.sweep, outcome.metrics)
            except KeyError as error:
                outcome = TrialOutcome("failed", error=str(error), seconds=outcome.seconds)
            else:
                if self._tell(trial, spec, values=values):
                    self.tracker.finish(run_id, "FINISHED", "complete")
                    self.result.completed[spec.key] = values[0]
                    logger.info("trial %s: done in %.0f s, %s", spec.key, outcome.seconds, _format_values(
                        self.sweep.objectives, values))
                return
        if outcome.status == "pruned":
            last = trial.storage.get_trial(trial._trial_id).intermediate_values
            value = last[max(last)] if last else None
            if self._tell(trial, spec, state=TrialState.PRUNED):
                self.tracker.finish(run_id, "KILLED", "pruned")
                self.result.pruned[spec.key] = value
                logger.info("trial %s: pruned after %.0f s", spec.key, outcome.seconds)
            return
        status, state = ("KILLED", "interrupted") if self.stopping.is_set() else ("FAILED", "failed")
        logger.error("trial %s failed: %s", spec.key, outcome.error)
        if self._tell(trial, spec, state=TrialState.FAIL):
            self.tracker.finish(run_id, status, state)
            self.result.failed[spec.key] = outcome.error

    # Summary -------------------------------------------------------------------------------

    def finish(self) -> SweepResult:
        """Record the Pareto front and the states; end the parent run when no trial is left anywhere."""
        started = time.perf_counter()
        counted = search.counted_trials(self.study)
        states = Counter(trial.state.name for trial in counted)
        self.result.states = dict(sorted(states.items()))

        front = search.pareto_front(self.study, self.sweep)
        self.result.pareto_front = front
        document = {
            "objectives": self.sweep.objectives, "directions": search.directions(self.sweep), "trials": front,
        }
        self.study.set_user_attr("rspo.pareto_front", front)
        parent = self.tracker.parent_run_id
        self.tracker.log_json(parent, "sweep/pareto_front.json", document)
        self.tracker.set_tags(parent, {
            "rspo.pareto_front": ",".join(str(item["key"]) for item in front)[:4000],
            "rspo.trial_states": ", ".join(f"{count} {state}" for state, count in sorted(states.items())),
        })

        self.result.finished = not (states.get("RUNNING", 0) or states.get("WAITING", 0))
        if self.result.finished:
            by_key = self._trials_by_key()
            unfinished = [key for key in self.specs
                          if not {trial.state for trial in by_key.get(key, [])} & DONE_STATES]
            self.tracker.finish_sweep("FAILED" if unfinished or self.result.failed else "FINISHED")
        else:
            logger.info("sweep %s: %d trials still running or queued in other workers", self.config.name,
                        states.get("RUNNING", 0) + states.get("WAITING", 0))

        hits = self.cache.hits + self._cache_counts["hits"]
        misses = self.cache.misses + self._cache_counts["misses"]
        logger.info("stage cache: %d hits, %d misses", hits, misses)
        self.result.fixed_seconds += time.perf_counter() - started
        return self.result

    def close(self) -> None:
        self.lock.close()
        if self.storage is not None:
            self.storage.remove_session()
            self.storage.engine.dispose()


def _objective_label(objective: str) -> str:
    labels = {"lc_win_rate": "LC win rate", "win_rate": "win rate", "avg_length": "avg length"}
    return labels.get(objective, objective)


def _format_values(objectives: list[str], values: list[float]) -> str:
    pairs = zip(objectives, values, strict=True)
    return ", ".join(f"{_objective_label(name)} {value:.2f}" for name, value in pairs)


def run_sweep(
    config: ExperimentConfig,
    paths: SweepPaths,
    *,
    data_dir: str | Path | None = None,
    report_formats: tuple[str, ...] = ("html",),
    report_dir: Path | None = None,
    options: SweepOptions | None = None,
) -> SweepResult:
    """Run the trials of a sweep that no worker has finished, then write the report once none is left."""
    started = time.perf_counter()
    options = options or SweepOptions()
    if config.world.kind == "tiny":
        check_data(data_dir, config)
    elif config.world.kind == "hf":
        check_benchmark_data(data_dir, config)
    engine = SweepEngine(config, paths, options, data_dir)
    try:
        engine.open()
        engine.run_workers()
        result = engine.finish()
        if report_formats and result.finished:
            with engine.lock.hold():
                result.report = write_sweep_report(
                    paths.tracking_uri, [config.name], report_dir, report_formats
                )
        elif report_formats:
            logger.info("report not written while trials run in other workers; "
                        "run `rspo-bench report %s` when they are done", config.name)
    finally:
        engine.close()
    result.seconds = time.perf_counter() - started
    return result


def write_sweep_report(tracking_uri: str, sweeps: list[str], output_dir: Path | None,
                       formats: tuple[str, ...]) -> dict[str, Any]:
    """Collect the sweeps from MLflow and write the report files."""
    from ..reporting.collect import collect_sweep
    from ..reporting.html import write_report

    output_dir = Path(output_dir or Path("reports") / "-".join(sweeps))
    data = [collect_sweep(tracking_uri, sweep) for sweep in sweeps]
    paths = write_report(data, output_dir, formats=tuple(formats))
    for kind, path in paths.items():
        logger.info("report (%s): %s", kind, path)
    return paths
