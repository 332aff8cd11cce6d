"""A sweep killed with SIGKILL in the middle of a trial, then started again, ends with every trial once.

The kill lands while a 'policy' stage is being written or right after the
first one is written, so the killed trial has MLflow metrics, an Optuna trial
left RUNNING and possibly a half-written cache folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import psutil
import pytest
from optuna.trial import TrialState

from rspo_bench.cache import StageCache
from rspo_bench.sweeps import optuna_search as search

REPO = Path(__file__).resolve().parent.parent
KEYS = ["base", "sppo-0", "reverse_kl-0.1", "is_forward_reverse-0.1"]


def sweep_command(config: Path, workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rspo_bench.cli", "sweep", str(config), "--workdir", str(workdir),
            "--format", "", *extra]


def wait_for_policy_write(process: subprocess.Popen, cache: Path, timeout: float = 600) -> str:
    """Poll until a 'policy' temporary folder or entry exists; return which one was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            code = process.returncode
            raise AssertionError(f"the sweep ended (exit code {code}) before any policy was written")
        policy = cache / "policy"
        if policy.is_dir():
            if any(path.name.startswith(".") for path in policy.glob("*/*")):
                return "temporary folder"
            if any(policy.glob("*/*/_complete.json")):
                return "entry"
        time.sleep(0.005)
    raise AssertionError(f"no policy stage was written within {timeout} s")


def check_sweep_state(workdir: Path) -> None:
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{workdir / 'optuna.db'}")
    complete = [search.trial_key_of(trial) for trial in study.get_trials(states=(TrialState.COMPLETE,))]
    assert sorted(complete) == sorted(KEYS)
    assert study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING)) == []

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("killed")
    runs = client.search_runs([experiment.experiment_id])
    children = [run for run in runs if run.data.tags.get("rspo.role") == "trial"]
    parents = [run for run in runs if run.data.tags.get("rspo.role") == "sweep"]
    assert sorted(run.data.tags["rspo.trial"] for run in children) == sorted(KEYS)
    assert {run.info.status for run in children} == {"FINISHED"}
    assert [run.info.status for run in parents] == ["FINISHED"]

    cache = StageCache(workdir / "cache")
    for stage, info in cache.size_report().items():
        entries = [m.parent for m in (cache.root / stage).glob("*/*/_complete.json")]
        assert all(not entry.name.startswith(".") for entry in entries), stage
        assert info["entries"] == len([e for e in entries if not e.name.startswith(".")])
    cache.prune()
    assert cache.temp_folders() == []


@pytest.mark.slow
@pytest.mark.parametrize("workers", [None, "1"], ids=["in-process", "trial-subprocess"])
def test_sigkill_then_rerun_runs_each_trial_once(workers, tmp_path, mini_config, data_dir):
    config = mini_config("killed")
    workdir = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RSPO_BENCH_PROGRESS": "0"}
    extra = () if workers is None else ("--workers", workers)
    # A process group of its own, so that SIGKILL below reaches only the sweep process.
    victim = subprocess.Popen(sweep_command(config, workdir, *extra), env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = wait_for_policy_write(victim, workdir / "cache")
    trial_processes = psutil.Process(victim.pid).children(recursive=True)
    victim.send_signal(signal.SIGKILL)
    victim.wait(60)
    victim.stderr.close()
    assert victim.returncode == -signal.SIGKILL, f"killed after a policy {seen} appeared"

    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 1
    if workers is not None:
        assert trial_processes, "the worker had no trial process when it was killed"
        # The trial process notices that its worker died (end of file on stdin) and exits.
        _, alive = psutil.wait_procs(trial_processes, timeout=60)
        assert alive == []

    rerun = subprocess.run(sweep_command(config, workdir, *extra), env=env, capture_output=True, text=True,
                           timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "left RUNNING by a dead worker" in rerun.stderr
    check_sweep_state(workdir)

