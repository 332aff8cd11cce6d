"""Several sweep workers on one study in a real PostgreSQL server started by this module.

The server runs from a temporary folder on a free 127.0.0.1 port and is
stopped at the end. initdb refuses to run as root, so as root the server runs
as the ``postgres`` user (created by Debian's postgresql package).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from rspo_bench.config import parse_config
from rspo_bench.sweeps import optuna_search as search
from rspo_bench.sweeps import runner
from rspo_bench.sweeps.runner import SweepPaths, run_sweep
from tests.test_sweep_engine import FakeExecutor

REPO = Path(__file__).resolve().parent.parent
USER = "rspo"


def postgres_bindir() -> Path | None:
    """Return the folder with initdb and pg_ctl: pg_config's bindir, Debian's layout, or PATH."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        output = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if output:
            candidates.append(Path(output))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PostgresServer:
    port: int

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres():
    """Start a PostgreSQL server with databases 'optuna' and 'mlflow' (MLflow tables made); stop it after."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; "
                    "install Debian's postgresql package")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="rspo-pg-"))
    if os.geteuid() == 0:
        try:
            import pwd

            account = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and no 'postgres' user exists to run initdb as")
        os.chown(root, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"] if shutil.which("runuser") else []
    port = free_port()
    data = root / "data"

    def run(*command: str) -> None:
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "start",
        "-o", f"-h 127.0.0.1 -p {port} -k {root} -F")
    try:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE optuna")
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        server = PostgresServer(port)
        mlflow.MlflowClient(tracking_uri=server.url("mlflow")).search_experiments()
        yield server
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def grid_config(name: str, coefs: list[float], grace_period: int = 10) -> dict:
    return {
        "name": name,
        "sweep": {
            "variants": [
                {"name": "sppo"},
                {"name": "rkl", "regularizers": [{"name": "reverse_kl"}], "coefs": coefs},
            ],
            "retry": {"heartbeat_interval": 1, "grace_period": grace_period},
        },
    }


class SlowFakeExecutor(FakeExecutor):
    """The fake executor, slowed so that workers' claims interleave."""

    def run(self, spec, tracker, run_id, reporter=None):
        time.sleep(0.3)
        return super().run(spec, tracker, run_id, reporter)


def fake_worker(raw: dict, workdir: str, storage: str, tracking_uri: str) -> None:
    runner.build_executor = lambda config, cache, data_dir: SlowFakeExecutor()
    runner.check_data = lambda *args: None
    paths = SweepPaths.under(workdir, storage=storage, tracking_uri=tracking_uri)
    run_sweep(parse_config(raw), paths, report_formats=())


def trial_keys(study: optuna.Study, state: TrialState) -> list[str]:
    return [search.trial_key_of(trial) for trial in study.get_trials(states=(state,))]


def mlflow_children(tracking_uri: str, name: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return [run for run in runs if run.data.tags.get("rspo.role") == "trial"]


@pytest.mark.slow
def test_concurrent_fake_workers_run_each_point_once(postgres, tmp_path):
    """Three processes start together on a fresh study; the lock and the claim keep every trial single."""
    raw = grid_config("fakegrid", [0.1, 0.2, 0.5, 1.0, 2.0, 5.0])
    keys = ["base", "sppo-0", "rkl-0.1", "rkl-0.2", "rkl-0.5", "rkl-1", "rkl-2", "rkl-5"]
    # spawn, not fork: a forked child would share this process's pooled database connections.
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=fake_worker, args=(raw, str(tmp_path / f"w{index}"), postgres.url("optuna"),
                                                  postgres.url("mlflow")))
        for index in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(600)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]

    study = optuna.load_study(study_name="fakegrid", storage=postgres.url("optuna"))
    assert sorted(trial_keys(study, TrialState.COMPLETE)) == sorted(keys)
    assert len(study.trials) == len(keys)
    children = mlflow_children(postgres.url("mlflow"), "fakegrid")
    assert sorted(run.data.tags["rspo.trial"] for run in children) == sorted(keys)
    assert {run.info.status for run in children} == {"FINISHED"}
    workers_used = Counter(trial.user_attrs[search.WORKER_ATTR]["pid"] for trial in study.trials)
    assert len(workers_used) >= 2, f"one process ran every trial: {workers_used}"


def test_stale_trial_of_other_host_retried(postgres):
    """A trial whose worker on another machine stopped sending heartbeats is failed and queued again."""
    retry = parse_config(grid_config("stale", [0.1], grace_period=2)).sweep.retry
    storage = search.make_storage(postgres.url("optuna"), retry)
    study = optuna.create_study(study_name="stale", storage=storage)
    study.enqueue_trial({"trial": "sppo-0"}, user_attrs={search.KEY_ATTR: "sppo-0"})
    trial = search.claim_waiting(study, storage)
    trial.suggest_categorical("trial", ["sppo-0"])
    trial.set_user_attr(search.WORKER_ATTR, {"host": "another-machine/12345678", "pid": 1, "token": "t"})
    storage.record_heartbeat(trial._trial_id)
    assert search.fail_dead_trials(study, storage, set(), retry.grace_period) == []
    time.sleep(retry.grace_period + 1.5)
    assert search.fail_dead_trials(study, storage, set(), retry.grace_period) == [trial.number]
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[1].params == {"trial": "sppo-0"}
    assert study.trials[1].system_attrs["failed_trial"] == trial.number
    assert search.fail_dead_trials(study, storage, set(), retry.grace_period) == []


@pytest.mark.slow
def test_three_cli_workers_run_each_point_once(postgres, tmp_path, mini_config, data_dir):
    """`rspo-bench sweep --storage postgresql://... --workers 1`, started three times at once."""
    variants = (
        "    - name: sppo\n"
        "    - name: reverse_kl\n"
        "      regularizers: [{name: reverse_kl}]\n"
        "      coefs: [0.1, 1.0]\n"
        "    - name: is_forward_kl\n"
        "      regularizers: [{name: is_forward_kl, params: {clip: 10}}]\n"
        "      coefs: [0.1]\n"
    )
    config = mini_config("pgmini", variants)
    keys = ["base", "sppo-0", "reverse_kl-0.1", "reverse_kl-1", "is_forward_kl-0.1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RSPO_BENCH_PROGRESS": "0"}
    processes = []
    for index in range(3):
        command = [
            sys.executable, "-m", "rspo_bench.cli", "sweep", str(config),
            "--workdir", str(tmp_path / f"w{index}"),
            "--cache-dir", str(tmp_path / "cache"), "--storage", postgres.url("optuna"),
            "--tracking-uri", postgres.url("mlflow"), "--workers", "1", "--format", "",
        ]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    outputs = [process.communicate(timeout=900) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-4000:]

    study = optuna.load_study(study_name="pgmini", storage=postgres.url("optuna"))
    assert sorted(trial_keys(study, TrialState.COMPLETE)) == sorted(keys)
    assert len(study.trials) == len(keys)
    children = mlflow_children(postgres.url("mlflow"), "pgmini")
    assert sorted(run.data.tags["rspo.trial"] for run in children) == sorted(keys)
    assert {run.info.status for run in children} == {"FINISHED"}
    started = Counter(line.split(" (Optuna")[0].rsplit("trial ", 1)[1]
                      for _, stderr in outputs for line in stderr.splitlines() if "(Optuna #" in line)
    assert started == Counter(keys)
