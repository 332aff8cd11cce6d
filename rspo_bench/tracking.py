"""MLflow tracking: one parent run per sweep, one child run per trial.

Runs are found again by their tags (``rspo.sweep``, ``rspo.trial``), so a rerun
of a sweep logs into the runs it created before instead of adding duplicates.
All calls go through an explicit :class:`mlflow.MlflowClient`; no global
active-run state is used.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import RunStatus

from . import __version__
from .logs import get_logger

logger = get_logger(__name__)

MAX_PARAM_LENGTH = 6000


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


class SweepTracker:
    """Creates or finds the runs of one sweep in an MLflow tracking store."""

    def __init__(self, tracking_uri: str, sweep: str, *, artifact_root: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.sweep = sweep
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(sweep)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(sweep, artifact_location=artifact_root)
        else:
            self.experiment_id = experiment.experiment_id
        self.parent_run_id = self._find_or_create_parent()

    def _search(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000)

    def _find_or_create_parent(self) -> str:
        runs = self._search(f"tags.`rspo.role` = 'sweep' AND tags.`rspo.sweep` = '{self.sweep}'")
        if runs:
            run_id = runs[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            logger.info("MLflow: reusing sweep run %s", run_id)
            return run_id
        run = self.client.create_run(
            self.experiment_id, run_name=self.sweep, tags={"rspo.role": "sweep", "rspo.sweep": self.sweep}
        )
        logger.info("MLflow: created sweep run %s in %s", run.info.run_id, self.tracking_uri)
        return run.info.run_id

    def trial_run(self, trial: str, tags: dict[str, str]) -> tuple[str, str | None]:
        """Return (run id, previous status) of the trial's child run, creating it when absent."""
        runs = self._search(
            f"tags.`rspo.role` = 'trial' AND tags.`rspo.sweep` = '{self.sweep}' AND tags.`rspo.trial` = '{trial}'"
        )
        all_tags = {
            "rspo.role": "trial", "rspo.sweep": self.sweep, "rspo.trial": trial,
            "mlflow.parentRunId": self.parent_run_id, **tags,
        }
        if runs:
            run = sorted(runs, key=lambda r: r.info.start_time)[0]
            for extra in runs[1:]:
                logger.warning("MLflow: deleting duplicate run %s of trial %s", extra.info.run_id, trial)
                self.client.delete_run(extra.info.run_id)
            self.client.update_run(run.info.run_id, status="RUNNING")
            for name, value in all_tags.items():
                self.client.set_tag(run.info.run_id, name, value)
            return run.info.run_id, run.info.status
        run = self.client.create_run(self.experiment_id, run_name=trial, tags=all_tags)
        return run.info.run_id, None

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        existing = self.client.get_run(run_id).data.params
        fresh = {key: str(value)[:MAX_PARAM_LENGTH] for key, value in params.items() if key not in existing}
        items = [mlflow.entities.Param(key, value) for key, value in fresh.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        import time

        timestamp = int(time.time() * 1000)
        items = [mlflow.entities.Metric(key, float(value), timestamp, step) for key, value in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[start : start + 500])

    def log_json(self, run_id: str, artifact_path: str, value: Any) -> None:
        """Store a JSON document as an artifact at ``artifact_path`` (folder/name.json)."""
        folder, _, name = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory() as temporary:
            path = Path(temporary) / name
            path.write_text(json.dumps(value, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
            self.client.log_artifact(run_id, str(path), artifact_path=folder or None)

    def log_text(self, run_id: str, artifact_path: str, text: str) -> None:
        folder, _, name = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory() as temporary:
            path = Path(temporary) / name
            path.write_text(text, encoding="utf-8")
            self.client.log_artifact(run_id, str(path), artifact_path=folder or None)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def finish_sweep(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_run_id, status=status)

    def trial_statuses(self) -> dict[str, str]:
        """Return {trial key: run status} of the sweep's child runs."""
        runs = self._search(f"tags.`rspo.role` = 'trial' AND tags.`rspo.sweep` = '{self.sweep}'")
        return {run.data.tags["rspo.trial"]: run.info.status for run in runs}


def is_finished(status: str | None) -> bool:
    return status == RunStatus.to_string(RunStatus.FINISHED)
