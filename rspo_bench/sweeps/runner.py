"""Run a grid sweep: every trial is a self-play run plus its evaluation.

Trials are recorded in an Optuna study (grid sampler, SQLite storage by
default), so a rerun skips every trial that completed before. A trial left
RUNNING by a killed process on this host is marked failed and run again. Each
trial's stages come from the shared stage cache, so a rerun of a partly
finished trial resumes at its first missing stage.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from .. import data as data_module
from ..cache import StageCache
from ..config import ExperimentConfig, flatten
from ..logs import get_logger
from ..tracking import SweepTracker, code_version
from .executors import TrialExecutor, build_executor
from .grid import TrialSpec, expand_grid

logger = get_logger(__name__)

TRIAL_PARAM = "trial"
OBJECTIVE = "alpaca_eval2/lc_win_rate"


@dataclass
class SweepPaths:
    """Where a sweep keeps its state; every default lives under one work folder."""

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
class SweepResult:
    """Outcome of one invocation: trial states, the values, and how long it took."""

    name: str
    completed: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    tracking_uri: str = ""
    report: dict[str, Path] = field(default_factory=dict)


def check_data(data_dir: str | Path | None) -> None:
    """Fail before any work when a file the sweep needs is missing from the data folder."""
    for relative in (
        data_module.ULTRAFEEDBACK_TRAIN,
        data_module.ALPACA_EVAL_INSTRUCTIONS,
        data_module.ALPACA_EVAL_BASELINE,
        data_module.ALPACA_EVAL_DIFFICULTY,
    ):
        data_module.data_file(relative, data_dir)


def _open_study(config: ExperimentConfig, storage: str, trials: list[TrialSpec]) -> optuna.Study:
    sampler = optuna.samplers.GridSampler({TRIAL_PARAM: [trial.key for trial in trials]}, seed=config.seed)
    study = optuna.create_study(
        study_name=config.name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
    )
    _fail_dead_trials(study)
    return study


def _fail_dead_trials(study: optuna.Study) -> None:
    """Mark RUNNING trials whose process on this host is gone as FAIL, so they run again."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get("host") != host:
            continue
        pid = trial.user_attrs.get("pid")
        if pid is not None and _process_alive(int(pid)):
            continue
        logger.warning("trial %s (Optuna #%d) was left running by a dead process; marking it failed",
                       trial.params.get(TRIAL_PARAM), trial.number)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def _completed_keys(study: optuna.Study) -> dict[str, float]:
    return {
        trial.params[TRIAL_PARAM]: trial.value
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if TRIAL_PARAM in trial.params
    }


def _run_trial(executor: TrialExecutor, tracker: SweepTracker, spec: TrialSpec, config: ExperimentConfig,
               version: str) -> float:
    tags = {
        "rspo.variant": spec.variant_name,
        "rspo.coef": f"{spec.coef:g}",
        "rspo.world": config.world.kind,
        "rspo.code_version": version,
        **executor.tags(spec),
    }
    run_id, previous = tracker.trial_run(spec.key, tags)
    if previous is not None:
        logger.info("trial %s: resuming MLflow run %s (was %s)", spec.key, run_id, previous)
    started = time.perf_counter()
    try:
        trial_config = config.model_dump(mode="json")
        trial_config["trial"] = {"key": spec.key, "variant": spec.variant_name, "coef": spec.coef}
        params = {key: value for key, value in flatten(trial_config).items() if not key.startswith("sweep.variants")}
        tracker.log_params(run_id, params)
        tracker.log_text(run_id, "config/resolved.yaml", yaml.safe_dump(trial_config, sort_keys=False))
        value = executor.run(spec, tracker, run_id)
        tracker.log_metrics(run_id, {"trial/seconds": time.perf_counter() - started})
        tracker.finish(run_id, "FINISHED")
        return value
    except KeyboardInterrupt:
        tracker.finish(run_id, "KILLED")
        raise
    except Exception:
        tracker.finish(run_id, "FAILED")
        raise


def run_sweep(
    config: ExperimentConfig,
    paths: SweepPaths,
    *,
    data_dir: str | Path | None = None,
    report_formats: tuple[str, ...] = ("html",),
    report_dir: Path | None = None,
) -> SweepResult:
    """Run every trial of a grid sweep that has not completed, then write the report."""
    started = time.perf_counter()
    if config.world.kind == "tiny":
        check_data(data_dir)
    trials = expand_grid(config.sweep)
    cache = StageCache(paths.cache_dir)
    executor = build_executor(config, cache, data_dir)
    version = code_version()
    tracker = SweepTracker(paths.tracking_uri, config.name, artifact_root=paths.artifact_root.as_uri())
    tracker.log_params(tracker.parent_run_id, {k: v for k, v in flatten(config.model_dump(mode="json")).items()})
    tracker.client.set_tag(tracker.parent_run_id, "rspo.code_version", version)
    tracker.client.set_tag(tracker.parent_run_id, "rspo.optuna_storage", paths.storage)
    study = _open_study(config, paths.storage, trials)
    study.set_user_attr("mlflow_tracking_uri", paths.tracking_uri)
    study.set_user_attr("mlflow_parent_run_id", tracker.parent_run_id)

    result = SweepResult(name=config.name, tracking_uri=paths.tracking_uri)
    done = _completed_keys(study)
    logger.info("sweep %s: %d trials, %d already complete", config.name, len(trials), len(done))
    for index, spec in enumerate(trials, start=1):
        if spec.key in done:
            logger.info("trial %d/%d %s: already complete (LC win rate %.2f), skipping",
                        index, len(trials), spec.key, done[spec.key])
            result.skipped[spec.key] = done[spec.key]
            continue
        logger.info("trial %d/%d %s: starts", index, len(trials), spec.key)
        study.enqueue_trial({TRIAL_PARAM: spec.key})
        trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        trial.suggest_categorical(TRIAL_PARAM, [t.key for t in trials])
        trial_started = time.perf_counter()
        try:
            value = _run_trial(executor, tracker, spec, config, version)
        except KeyboardInterrupt:
            study.tell(trial, state=TrialState.FAIL)
            tracker.finish_sweep("KILLED")
            raise
        except Exception as error:  # noqa: BLE001 - one failed trial must not stop the sweep
            logger.error("trial %s failed: %s: %s", spec.key, type(error).__name__, error)
            study.tell(trial, state=TrialState.FAIL)
            result.failed[spec.key] = f"{type(error).__name__}: {error}"
            continue
        study.tell(trial, value)
        result.completed[spec.key] = value
        logger.info("trial %s: done in %.0f s, LC win rate %.2f", spec.key, time.perf_counter() - trial_started, value)

    tracker.finish_sweep("FAILED" if result.failed else "FINISHED")
    result.seconds = time.perf_counter() - started
    logger.info("stage cache: %d hits, %d misses", cache.hits, cache.misses)
    if report_formats:
        result.report = write_sweep_report(paths.tracking_uri, [config.name], report_dir, report_formats)
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
