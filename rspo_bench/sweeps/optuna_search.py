"""The Optuna side of a sweep: samplers, pruners, the search space and the Pareto front.

Parameter names in the study:

- ``variant``: categorical over the variant names;
- ``<variant>/coef``: log-uniform over ``search.<variant>.coef``, or categorical
  over the variant's ``coefs`` when it lists more than one;
- ``<variant>/<regularizer>.<name>`` or ``<variant>/beta``: the conditional
  parameters, suggested only in the trials that choose that variant.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import math
import os
import re
import socket
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.trial import FrozenTrial, TrialState

from ..config import (
    OBJECTIVE_DIRECTIONS,
    MedianPrunerConfig,
    NSGA2SamplerConfig,
    ParamRange,
    RandomSamplerConfig,
    RetryConfig,
    SweepConfig,
    TPESamplerConfig,
    VariantConfig,
)
from ..logs import get_logger
from ..tracking import redact_url
from .grid import TrialSpec

logger = get_logger(__name__)

VARIANT_PARAM = "variant"
FINAL_METRIC_PREFIX = "alpaca_eval2/"


def directions(sweep: SweepConfig) -> list[str]:
    """Return the Optuna study directions of the sweep's objectives, in order."""
    return [OBJECTIVE_DIRECTIONS[name] for name in sweep.objectives]


def objective_metric(name: str) -> str:
    """Return the MLflow key of an objective: ``alpaca_eval2/<name>``, or the name when it contains '/'."""
    return name if "/" in name else FINAL_METRIC_PREFIX + name


def objective_values(sweep: SweepConfig, metrics: dict[str, float]) -> list[float]:
    """Pick the objectives from a trial's final metrics."""
    missing = [name for name in sweep.objectives if objective_metric(name) not in metrics]
    if missing:
        raise KeyError(
            f"the trial logged no final metric for objectives {missing}; logged: {sorted(metrics)}"
        )
    return [float(metrics[objective_metric(name)]) for name in sweep.objectives]


def build_sampler(
    sweep: SweepConfig, default_seed: int
) -> tuple[optuna.samplers.BaseSampler, dict[str, Any]]:
    """Return the sweep's sampler and the constructor arguments it was built with.

    Grid trials are all enqueued with fixed parameters, so a grid study's sampler
    never samples, and a seeded RandomSampler is used. GridSampler would call
    ``study.stop()`` from ``tell`` once its grid looks exhausted, which raises
    outside ``study.optimize``.
    """
    settings = sweep.sampler or TPESamplerConfig()
    seed = default_seed if settings.seed is None else settings.seed
    if sweep.kind == "grid" or isinstance(settings, RandomSamplerConfig):
        return optuna.samplers.RandomSampler(seed=seed), {"class": "RandomSampler", "seed": seed}
    if isinstance(settings, NSGA2SamplerConfig):
        kwargs = {
            "population_size": settings.population_size, "mutation_prob": settings.mutation_prob,
            "crossover_prob": settings.crossover_prob, "swapping_prob": settings.swapping_prob, "seed": seed,
        }
        return optuna.samplers.NSGAIISampler(**kwargs), {"class": "NSGAIISampler", **kwargs}
    kwargs = {
        "n_startup_trials": settings.n_startup_trials, "n_ei_candidates": settings.n_ei_candidates,
        "seed": seed, "multivariate": settings.multivariate, "group": settings.group,
        "constant_liar": settings.constant_liar,
    }
    with warnings.catch_warnings():
        # group=True is marked experimental since Optuna 2.8; the setting is recorded with the study.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(**kwargs)
    return sampler, {"class": "TPESampler", **kwargs}


def build_pruner(sweep: SweepConfig) -> tuple[optuna.pruners.BasePruner, dict[str, Any]]:
    """Return the sweep's pruner (NopPruner when none is configured) and its constructor arguments."""
    settings = sweep.pruner
    if settings is None:
        return optuna.pruners.NopPruner(), {"class": "NopPruner"}
    kwargs = settings.model_dump(exclude={"kind"})
    if isinstance(settings, MedianPrunerConfig):
        return optuna.pruners.MedianPruner(**kwargs), {"class": "MedianPruner", **kwargs}
    return optuna.pruners.SuccessiveHalvingPruner(**kwargs), {"class": "SuccessiveHalvingPruner", **kwargs}


def search_space_fingerprint(sweep: SweepConfig) -> str:
    """Return a canonical JSON of what an Optuna search samples; a study keeps it to detect changes."""
    space = {
        "variants": [variant.model_dump(mode="json", exclude={"coefs"}) | {"coefs": variant.coefs}
                     for variant in sweep.variants],
        "search": {name: entry.model_dump(mode="json") for name, entry in sorted(sweep.search.items())},
        "objectives": sweep.objectives,
        "beta": sweep.beta,
    }
    return json.dumps(space, sort_keys=True, separators=(",", ":"))


def sampled_trial_key(origin_number: int, variant: str, coef: float) -> str:
    """Return the key of a sampled trial; a retry keeps the number of the trial it retries."""
    return f"t{origin_number:03d}-{variant}-{coef:.3g}"


def origin_number(trial: FrozenTrial) -> int:
    """Return the number of the first trial in a retry chain (the trial's own number when not a retry)."""
    return int(trial.system_attrs.get("failed_trial", trial.number))


def suggest_trial(trial: optuna.Trial, sweep: SweepConfig, key_number: int) -> TrialSpec:
    """Sample a variant and its parameters; a retried trial gets back the values it had."""
    names = [variant.name for variant in sweep.variants]
    variant_name = trial.suggest_categorical(VARIANT_PARAM, names)
    variant = sweep.variants[names.index(variant_name)]
    search = sweep.search.get(variant_name)
    if search is not None and search.coef is not None:
        coef = trial.suggest_float(f"{variant_name}/coef", search.coef.low, search.coef.high, log=True)
    elif len(variant.coefs) > 1:
        coef = float(trial.suggest_categorical(f"{variant_name}/coef", list(variant.coefs)))
    else:
        coef = float(variant.coefs[0])
    for param in search.params if search is not None else []:
        label = "beta" if param.regularizer is None else f"{param.regularizer}.{param.name}"
        value = trial.suggest_float(f"{variant_name}/{label}", param.low, param.high, log=param.log)
        variant = apply_param(variant, param, value)
    key = sampled_trial_key(key_number, variant_name, coef)
    return TrialSpec(key, variant, coef, params=dict(trial.params))


def apply_param(variant: VariantConfig, param: ParamRange, value: float) -> VariantConfig:
    """Return a copy of the variant with one conditional parameter set."""
    if param.regularizer is None:
        return variant.model_copy(update={"beta": value})
    terms = list(variant.regularizers)
    for index, term in enumerate(terms):
        if param.regularizer in (term.label, term.name):
            if param.name == "weight":
                terms[index] = term.model_copy(update={"weight": value})
            else:
                terms[index] = term.model_copy(update={"params": {**term.params, param.name: value}})
            return variant.model_copy(update={"regularizers": terms})
    raise ValueError(f"variant {variant.name!r} has no regularizer {param.regularizer!r}")


def pareto_front(study: optuna.Study, sweep: SweepConfig) -> list[dict[str, Any]]:
    """Return the Pareto-optimal complete trials (the best trial for one objective), in trial order."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    best = study.best_trials if len(sweep.objectives) > 1 else [study.best_trial]
    front = []
    for trial in sorted(best, key=lambda item: item.number):
        values = dict(zip(sweep.objectives, trial.values, strict=True))
        if any(math.isnan(value) for value in values.values()):
            continue
        front.append({
            "number": trial.number,
            "key": trial.user_attrs.get("rspo.trial_key"),
            "values": values,
            "params": trial.params,
            "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
        })
    return front


# Storage, locking and recovery ------------------------------------------------------

TRIAL_PARAM = "trial"
KEY_ATTR = "rspo.trial_key"
# A trial closed without running (a duplicate, or a key no longer in the grid) gets this
# user attribute with the reason. Counts and reports leave such trials out.
CLOSED_ATTR = "rspo.closed"
# One token per process, so a worker can tell its own running trials from those of a
# dead process that had the same pid (pids restart from 1 in a new container).
WORKER_TOKEN = uuid.uuid4().hex
# User attribute of a running trial: {"host", "pid", "pid_started", "token"} of its worker.
WORKER_ATTR = "rspo.worker"
_ASK_HEARTBEAT_WARNING = "Heartbeat of storage is supposed to be used with Study.optimize."


def host_id() -> str:
    """Return this machine's name and boot id: pids are comparable only within one boot of one host."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()[:8]
    except OSError:
        boot = "noboot"
    return f"{socket.gethostname()}/{boot}"


def worker_identity() -> dict[str, Any]:
    """Return this worker's identity, stored with each trial it claims."""
    return {"host": host_id(), "pid": os.getpid(), "pid_started": psutil.Process().create_time(),
            "token": WORKER_TOKEN}


def make_storage(url: str, retry: RetryConfig) -> optuna.storages.RDBStorage:
    """Return the RDB storage with heartbeats on and retries of trials whose heartbeat went stale."""
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Several worker threads or processes write to one SQLite file: wait for its lock.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["pool_pre_ping"] = True
    with warnings.catch_warnings():
        # heartbeat_interval and RetryHeartbeatStaleTrialCallback are marked experimental (Optuna 2.8/2.9).
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=retry.heartbeat_interval,
            grace_period=retry.grace_period,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=retry.max_retry
            ),
        )


class StudyLock:
    """A lock around a study that holds across threads, processes and, on PostgreSQL, machines.

    PostgreSQL: a session-level advisory lock, released by the server when the
    holder's connection drops, so a killed worker never leaves it held. SQLite:
    ``flock`` on a file beside the database, released by the kernel when the
    holder dies. Other databases get a lock inside this process only.
    """

    def __init__(self, storage_url: str, study_name: str) -> None:
        self._thread_lock = threading.RLock()
        self._url = storage_url
        digest = hashlib.sha256(f"rspo-bench:{study_name}".encode()).digest()
        self._advisory_key = int.from_bytes(digest[:8], "big", signed=True)
        self._engine = None
        self._lock_file: Path | None = None
        if storage_url.startswith("postgresql"):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self._engine = sqlalchemy.create_engine(storage_url, poolclass=NullPool)
        elif storage_url.startswith("sqlite:///") and ":memory:" not in storage_url:
            self._lock_file = Path(storage_url.removeprefix("sqlite:///") + ".rspo-lock")
        else:
            logger.warning("storage %s supports no cross-process lock here; run one worker process per study",
                           redact_url(storage_url))

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            if self._engine is not None:
                import sqlalchemy

                with self._engine.connect() as connection:
                    key = {"key": self._advisory_key}
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
                    try:
                        yield
                    finally:
                        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
                return
            if self._lock_file is not None:
                self._lock_file.parent.mkdir(parents=True, exist_ok=True)
                with open(self._lock_file, "a+") as handle:
                    fcntl.flock(handle, fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        fcntl.flock(handle, fcntl.LOCK_UN)
                return
            yield

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def trial_key_of(trial: FrozenTrial) -> str | None:
    """Return a trial's key: its user attribute, else the fixed or suggested ``trial`` parameter."""
    if KEY_ATTR in trial.user_attrs:
        return str(trial.user_attrs[KEY_ATTR])
    if TRIAL_PARAM in trial.params:
        return str(trial.params[TRIAL_PARAM])
    fixed = trial.system_attrs.get("fixed_params") or {}
    return str(fixed[TRIAL_PARAM]) if TRIAL_PARAM in fixed else None


def is_keyed(trial: FrozenTrial) -> bool:
    """Return whether the trial was enqueued by key (a grid point or the base trial) rather than sampled."""
    fixed = trial.system_attrs.get("fixed_params") or {}
    return TRIAL_PARAM in fixed or TRIAL_PARAM in trial.params


def counted_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Return the study's trials without those closed unrun (see ``CLOSED_ATTR``)."""
    return [trial for trial in study.get_trials(deepcopy=False) if CLOSED_ATTR not in trial.user_attrs]


def _worker_alive(trial: FrozenTrial, own_trial_ids: set[int], grace_period: float) -> bool:
    worker = trial.user_attrs.get(WORKER_ATTR)
    if not isinstance(worker, dict):
        # Claimed but its worker never wrote who it is: dead once older than the grace period.
        started = trial.datetime_start
        return started is None or (datetime.now() - started).total_seconds() <= grace_period
    if worker.get("token") == WORKER_TOKEN:
        return trial._trial_id in own_trial_ids
    # NOTE: two containers with the same host name on one machine share the boot id but
    # not the pid namespace, so each would judge the other's trials by pids it cannot see.
    if worker.get("host") != host_id():
        return True  # another machine: its heartbeats decide
    try:
        process = psutil.Process(int(worker.get("pid", -1)))
        started = float(worker.get("pid_started", process.create_time()))
        return abs(process.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def fail_dead_trials(study: optuna.Study, storage: optuna.storages.RDBStorage, own_trial_ids: set[int],
                     grace_period: float) -> list[int]:
    """Fail RUNNING trials whose worker is gone and queue their retries; return the failed trial numbers.

    Heartbeats catch dead workers on any machine after the grace period. On this
    host a worker's pid and its start time show at once that it is gone. Both
    paths go through the storage's compare-and-set, so when several workers
    notice the same dead trial, only one fails it and queues one retry.
    """
    failed: list[int] = []
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed += [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
               if t.number not in before]
    retry = storage.get_heartbeat_stale_trial_callback()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _worker_alive(trial, own_trial_ids, grace_period):
            continue
        try:
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        if retry is not None:
            retry(study, copy.deepcopy(storage.get_trial(trial._trial_id)))
    for number in failed:
        logger.warning("trial #%d was left RUNNING by a dead worker; failed it and queued a retry "
                       "(at most sweep.retry.max_retry per trial)", number)
    return failed


def claim_waiting(study: optuna.Study, storage: optuna.storages.RDBStorage) -> optuna.Trial | None:
    """Take the lowest-numbered WAITING trial, or return None when the queue is empty.

    This makes the same compare-and-set that ``study.ask()`` makes (WAITING to
    RUNNING, a row lock on PostgreSQL), so two workers never take the same trial.
    Unlike ``ask()`` it creates no new trial when the queue is empty: a grid
    worker that finds nothing left leaves no stray sampled trial behind.
    """
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not storage.set_trial_state_values(frozen._trial_id, TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        return optuna.Trial(study, frozen._trial_id)
    return None


def ask_sampled(study: optuna.Study) -> optuna.Trial:
    """Return ``study.ask()``; heartbeats of its trial are recorded by the worker's own thread."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(_ASK_HEARTBEAT_WARNING))
        return study.ask()


def sampled_slots(study: optuna.Study) -> int:
    """Return how many trials of ``n_trials`` are used: sampled trials, not retries or keyed trials."""
    return sum(
        1 for trial in counted_trials(study)
        if not is_keyed(trial) and "failed_trial" not in trial.system_attrs
    )
