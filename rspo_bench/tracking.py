"""MLflow tracking: one parent run per sweep, one child run per trial.

Runs are found again by their tags (``rspo.sweep``, ``rspo.trial``), so a rerun
of a sweep logs into the runs it created before instead of adding duplicates.
All calls go through an explicit :class:`mlflow.MlflowClient`; no global
active-run state is used. Only the main process logs: in a multi-process trial
(``RANK`` set, or an initialised accelerate state) the other ranks get a
tracker whose calls do nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from . import __version__
from .logs import get_logger

logger = get_logger(__name__)

MAX_PARAM_LENGTH = 6000
STATE_TAG = "rspo.state"
TRIAL_TAG = "rspo.trial"


def code_version() -> str:
    """Return the package version and, inside a git checkout, the commit (with '+dirty' when modified)."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "--", "rspo_bench"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"rspo-bench {__version__}"
    return f"rspo-bench {__version__} (git {commit}{'+dirty' if dirty else ''})"


def is_main_process() -> bool:
    """Return whether this process is rank 0: from ``RANK``, else from an accelerate state already set up."""
    rank = os.environ.get("RANK")
    if rank is not None and rank.strip():
        return int(rank) == 0
    try:
        from accelerate.state import PartialState
    except ImportError:
        return True
    # Creating a PartialState would initialise torch.distributed, so only read one that exists.
    if not PartialState._shared_state:
        return True
    return bool(PartialState().is_main_process)


def redact_url(url: str) -> str:
    """Return a storage or tracking URL with its password replaced by ``***``."""
    return re.sub(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@]+:)[^@/]*@", r"\g<head>***@", url)


def is_finished(status: str | None) -> bool:
    return status == RunStatus.to_string(RunStatus.FINISHED)


class _DisabledClient:
    """Replacement of MlflowClient on ranks other than 0: every method call does nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class SweepTracker:
    """Creates or finds the runs of one sweep in an MLflow tracking store."""

    def __init__(self, tracking_uri: str, sweep: str, *, artifact_root: str | None = None,
                 parent_run_id: str | None = None, enabled: bool | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.enabled = is_main_process() if enabled is None else enabled
        if not self.enabled:
            self.client: Any = _DisabledClient()
            self.experiment_id = ""
            self.parent_run_id = parent_run_id or ""
            return
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = self._experiment_id(artifact_root)
        if parent_run_id is not None and self._run_exists(parent_run_id):
            self.parent_run_id = parent_run_id
            self.client.update_run(parent_run_id, status="RUNNING")
        else:
            self.parent_run_id = self._find_or_create_parent()

    @classmethod
    def attach(cls, tracking_uri: str, sweep: str, parent_run_id: str) -> SweepTracker:
        """Return a tracker for a trial process: it logs into runs the sweep worker created."""
        tracker = cls.__new__(cls)
        tracker.tracking_uri = tracking_uri
        tracker.sweep = sweep
        tracker.enabled = is_main_process()
        if tracker.enabled:
            tracker.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        else:
            tracker.client = _DisabledClient()
        tracker.experiment_id = ""
        tracker.parent_run_id = parent_run_id
        return tracker

    def _experiment_id(self, artifact_root: str | None) -> str:
        experiment = self.client.get_experiment_by_name(self.sweep)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(self.sweep, artifact_location=artifact_root)
        except MlflowException:
            # Another worker created it between the lookup and the create.
            experiment = self.client.get_experiment_by_name(self.sweep)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _run_exists(self, run_id: str) -> bool:
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return False
        return run.info.lifecycle_stage == "active"

    def _search(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000)

    def _find_or_create_parent(self) -> str:
        runs = self._search(f"tags.`rspo.role` = 'sweep' AND tags.`rspo.sweep` = '{self.sweep}'")
        if runs:
            run_id = sorted(runs, key=lambda run: run.info.start_time)[-1].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            logger.info("MLflow: reusing sweep run %s", run_id)
            return run_id
        run = self.client.create_run(
            self.experiment_id, run_name=self.sweep, tags={"rspo.role": "sweep", "rspo.sweep": self.sweep}
        )
        logger.info("MLflow: created sweep run %s in %s", run.info.run_id, redact_url(self.tracking_uri))
        return run.info.run_id

    def _trial_runs(self, trial: str | None = None) -> list:
        query = f"tags.`rspo.role` = 'trial' AND tags.`rspo.sweep` = '{self.sweep}'"
        if trial is not None:
            query += f" AND tags.`{TRIAL_TAG}` = '{trial}'"
        return self._search(query)

    def trial_run(self, trial: str, tags: dict[str, str]) -> tuple[str, str | None]:
        """Return (run id, previous status) of the trial's child run, creating it when absent."""
        if not self.enabled:
            return "", None
        runs = self._trial_runs(trial)
        all_tags = {
            "rspo.role": "trial", "rspo.sweep": self.sweep, TRIAL_TAG: trial,
            "mlflow.parentRunId": self.parent_run_id, **tags,
        }
        if runs:
            run = sorted(runs, key=lambda r: r.info.start_time)[0]
            for extra in runs[1:]:
                logger.warning("MLflow: deleting duplicate run %s of trial %s", extra.info.run_id, trial)
                self.client.delete_run(extra.info.run_id)
            self.client.update_run(run.info.run_id, status="RUNNING")
            self.set_tags(run.info.run_id, all_tags)
            return run.info.run_id, run.info.status
        run = self.client.create_run(self.experiment_id, run_name=trial, tags=all_tags)
        return run.info.run_id, None

    def close_orphaned_runs(
        self, live_trials: set[str], finished: dict[str, tuple[str, str]]
    ) -> dict[str, str]:
        """Terminate child runs left RUNNING by dead processes; return {trial key: status set}.

        ``live_trials`` are keys a live worker is running (left alone). ``finished``
        maps a key whose Optuna trial ended to (MLflow status, ``rspo.state``).
        A RUNNING run of any other key becomes KILLED (state ``interrupted``),
        and a later retry of its trial reopens it.
        """
        closed: dict[str, str] = {}
        if not self.enabled:
            return closed
        for run in self._trial_runs():
            key = run.data.tags.get(TRIAL_TAG, "")
            if run.info.status != "RUNNING" or key in live_trials:
                continue
            status, state = finished.get(key, ("KILLED", "interrupted"))
            self.client.set_tag(run.info.run_id, STATE_TAG, state)
            self.client.set_terminated(run.info.run_id, status=status)
            logger.warning("MLflow: run %s of trial %s was left RUNNING by a dead process; set to %s (%s)",
                           run.info.run_id, key, status, state)
            closed[key] = status
        return closed

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        items = [mlflow.entities.RunTag(key, str(value)) for key, value in tags.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, tags=items[start : start + 100])

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        if not self.enabled:
            return
        existing = self.client.get_run(run_id).data.params
        fresh = {key: str(value)[:MAX_PARAM_LENGTH] for key, value in params.items() if key not in existing}
        items = [mlflow.entities.Param(key, value) for key, value in fresh.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        timestamp = int(time.time() * 1000)
        items = [mlflow.entities.Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        self._log_metric_items(run_id, items)

    def _log_metric_items(self, run_id: str, items: list) -> None:
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])

    def log_json(self, run_id: str, artifact_path: str, value: Any) -> None:
        """Store a JSON document as an artifact at ``artifact_path`` (folder/name.json)."""
        self.log_text(run_id, artifact_path, json.dumps(value, indent=1, ensure_ascii=False, default=str))

    def log_text(self, run_id: str, artifact_path: str, text: str) -> None:
        if not self.enabled:
            return
        folder, _, name = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory() as temporary:
            path = Path(temporary) / name
            path.write_text(text, encoding="utf-8")
            self.client.log_artifact(run_id, str(path), artifact_path=folder or None)

    def log_system_samples(self, run_id: str, samples: list[dict[str, float]]) -> None:
        """Log a :class:`SystemMonitor`'s samples as metric histories with step = seconds into the trial."""
        items = []
        for sample in samples:
            step = int(sample["seconds"])
            timestamp = int(sample["time"] * 1000)
            items += [mlflow.entities.Metric(f"system/{name}", value, timestamp, step)
                      for name, value in sample.items() if name not in ("seconds", "time")]
        self._log_metric_items(run_id, items)

    def finish(self, run_id: str, status: str = "FINISHED", state: str | None = None) -> None:
        """Terminate a run; ``state`` (complete, pruned, failed, interrupted) goes into tag ``rspo.state``."""
        if state is not None:
            self.client.set_tag(run_id, STATE_TAG, state)
        self.client.set_terminated(run_id, status=status)

    def finish_sweep(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run_id, status=status)

    def trial_statuses(self) -> dict[str, str]:
        """Return {trial key: run status} of the sweep's child runs."""
        if not self.enabled:
            return {}
        return {run.data.tags[TRIAL_TAG]: run.info.status for run in self._trial_runs()}


class SystemMonitor:
    """Samples this process's CPU use and resident memory from a thread while a trial runs.

    Each sample contains ``seconds`` (since start), ``time`` (epoch), ``cpu_percent``
    (of one core, so up to 100 × cores) and ``rss_mib``; ``peak_rss_mib`` is the
    maximum over the samples. Children of the process are not included.
    """

    def __init__(self, interval: float = 5.0) -> None:
        import psutil  # a dependency of accelerate

        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="system-monitor", daemon=True)
        self._started = 0.0

    def __enter__(self) -> SystemMonitor:
        self._started = time.perf_counter()
        self._process.cpu_percent(None)  # the first call only sets the reference point
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        self.samples.append({
            "seconds": time.perf_counter() - self._started,
            "time": time.time(),
            "cpu_percent": float(self._process.cpu_percent(None)),
            "rss_mib": self._process.memory_info().rss / 2**20,
        })

    @property
    def peak_rss_mib(self) -> float:
        return max((sample["rss_mib"] for sample in self.samples), default=0.0)
