"""Sweep engine on SQLite with a fake executor: exactly-once trials, recovery, pruning, Pareto fronts.

The fake executor returns fixed metrics per trial in milliseconds, so these tests
check the engine's bookkeeping in Optuna and MLflow, not the tiny world.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from rspo_bench.config import ConfigError, parse_config
from rspo_bench.sweeps import optuna_search as search
from rspo_bench.sweeps import runner
from rspo_bench.sweeps.runner import SweepOptions, SweepPaths, SweepSetupError, run_sweep
from rspo_bench.tracking import SweepTracker, is_main_process, redact_url

REPO = Path(__file__).resolve().parent.parent
GRID_KEYS = ["base", "sppo-0", "rkl-0.1", "rkl-1"]


def make_config(name: str = "engine", **sweep) -> dict:
    settings = {
        "variants": [
            {"name": "sppo"},
            {"name": "rkl", "regularizers": [{"name": "reverse_kl"}], "coefs": [0.1, 1.0]},
        ],
        "retry": {"heartbeat_interval": 1, "grace_period": 2},
        **sweep,
    }
    return {"name": name, "sweep": settings}


class FakeExecutor:
    """Logs fixed final metrics per trial: LC win rate 10 − 5λ (base 5) and length 100 + 200λ (base 50)."""

    def __init__(self, fail_once: tuple[str, ...] = (), kill_on: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail_once = set(fail_once)
        self.kill_on = kill_on

    def tags(self, spec):
        return {"rspo.judge": "fake"}

    @staticmethod
    def metrics(spec) -> dict[str, float]:
        if spec.variant is None:
            return {"alpaca_eval2/lc_win_rate": 5.0, "alpaca_eval2/win_rate": 5.0,
                    "alpaca_eval2/avg_length": 50.0}
        lc = 10.0 - 5.0 * spec.coef
        return {"alpaca_eval2/lc_win_rate": lc, "alpaca_eval2/win_rate": lc,
                "alpaca_eval2/avg_length": 100.0 + 200.0 * spec.coef}

    def run(self, spec, tracker, run_id, reporter=None):
        self.calls.append(spec.key)
        tracker.log_metrics(run_id, {"train/loss": 1.0}, step=1)
        if spec.key == self.kill_on:
            os.kill(os.getpid(), signal.SIGKILL)
        if spec.key in self.fail_once:
            self.fail_once.discard(spec.key)
            raise RuntimeError(f"{spec.key} diverged")
        metrics = self.metrics(spec)
        if reporter is not None and spec.variant is not None:
            for step in (1, 2):
                reporter.report(step, {name: value - (2 - step) for name, value in metrics.items()})
        tracker.log_metrics(run_id, metrics)
        return metrics["alpaca_eval2/lc_win_rate"]


@pytest.fixture(scope="module", autouse=True)
def mlflow_template(tmp_path_factory):
    """Create MLflow's SQLite tables once (about 6 s); each sweep starts from a copy of the file."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlruns.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    os.environ[TEMPLATE_ENV] = str(path)
    yield path
    os.environ.pop(TEMPLATE_ENV, None)


TEMPLATE_ENV = "RSPO_TEST_MLFLOW_TEMPLATE"


def run_fake(raw: dict, workdir: Path, executor: FakeExecutor, **options) -> runner.SweepResult:
    """Run a sweep in this process with the fake executor in place of the world's."""
    config = parse_config(raw)
    workdir.mkdir(parents=True, exist_ok=True)
    template = os.environ.get(TEMPLATE_ENV)
    if template and not (workdir / "mlruns.db").exists():
        shutil.copy(template, workdir / "mlruns.db")
    saved = runner.build_executor, runner.check_data
    runner.build_executor = lambda config, cache, data_dir: executor
    runner.check_data = lambda *args: None
    try:
        options = SweepOptions(**options)
        return run_sweep(config, SweepPaths.under(workdir), report_formats=(), options=options)
    finally:
        runner.build_executor, runner.check_data = saved


def load_study(workdir: Path, name: str = "engine") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")


def mlflow_runs(workdir: Path, name: str = "engine") -> tuple[list, list]:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("rspo.role") == "sweep"]
    children = [run for run in runs if run.data.tags.get("rspo.role") == "trial"]
    return parents, children


def complete_keys(study: optuna.Study) -> list[str]:
    return sorted(search.trial_key_of(t) for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_grid_runs_each_trial_once(tmp_path):
    executor = FakeExecutor()
    first = run_fake(make_config(), tmp_path, executor)
    assert sorted(first.completed) == sorted(GRID_KEYS)
    second = run_fake(make_config(), tmp_path, executor)
    assert second.completed == {}
    assert sorted(second.skipped) == sorted(GRID_KEYS)
    assert sorted(executor.calls) == sorted(GRID_KEYS)
    study = load_study(tmp_path)
    assert len(study.trials) == 4
    assert complete_keys(study) == sorted(GRID_KEYS)
    parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1
    assert sorted(run.data.tags["rspo.trial"] for run in children) == sorted(GRID_KEYS)
    assert {run.info.status for run in children} == {"FINISHED"}
    assert {run.data.tags["rspo.state"] for run in children} == {"complete"}


def test_optuna_mlflow_cross_references(tmp_path):
    run_fake(make_config(), tmp_path, FakeExecutor())
    study = load_study(tmp_path)
    parents, children = mlflow_runs(tmp_path)
    assert study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
    assert study.user_attrs["mlflow_tracking_uri"] == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert parents[0].data.tags["rspo.optuna_study"] == "engine"
    by_run = {run.info.run_id: run for run in children}
    for trial in study.trials:
        run = by_run[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["rspo.optuna_trial_number"] == str(trial.number)
        assert run.data.tags["rspo.optuna_storage"] == f"sqlite:///{tmp_path / 'optuna.db'}"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert "system/peak_rss_mib" in run.data.metrics
        assert "system/rss_mib" in run.data.metrics
        assert "trial/seconds" in run.data.metrics


def test_failed_trial_runs_again_next_start(tmp_path):
    executor = FakeExecutor(fail_once=("rkl-0.1",))
    first = run_fake(make_config(), tmp_path, executor)
    assert first.failed == {"rkl-0.1": "RuntimeError: rkl-0.1 diverged"}
    _, children = mlflow_runs(tmp_path)
    failed_run = next(run for run in children if run.data.tags["rspo.trial"] == "rkl-0.1")
    assert failed_run.info.status == "FAILED"
    second = run_fake(make_config(), tmp_path, executor)
    assert list(second.completed) == ["rkl-0.1"]
    study = load_study(tmp_path)
    assert complete_keys(study) == sorted(GRID_KEYS)
    assert len(study.get_trials(states=(TrialState.FAIL,))) == 1
    _, children = mlflow_runs(tmp_path)
    rerun = [run for run in children if run.data.tags["rspo.trial"] == "rkl-0.1"]
    assert [run.info.run_id for run in rerun] == [failed_run.info.run_id]
    assert rerun[0].info.status == "FINISHED"


KILLED_SWEEP = """
import sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.test_sweep_engine import FakeExecutor, make_config, run_fake
run_fake(make_config(), Path({workdir!r}), FakeExecutor(kill_on="rkl-0.1"))
"""


def test_killed_worker_trial_retried_once(tmp_path):
    script = KILLED_SWEEP.format(repo=str(REPO), workdir=str(tmp_path))
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    study = load_study(tmp_path)
    running = [search.trial_key_of(t) for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert running == ["rkl-0.1"]
    _, children = mlflow_runs(tmp_path)
    left_running = [run for run in children if run.info.status == "RUNNING"]
    assert [run.data.tags["rspo.trial"] for run in left_running] == ["rkl-0.1"]

    executor = FakeExecutor()
    result = run_fake(make_config(), tmp_path, executor)
    assert sorted(executor.calls) == ["rkl-0.1", "rkl-1"]
    assert sorted(result.completed) == ["rkl-0.1", "rkl-1"]
    study = load_study(tmp_path)
    assert complete_keys(study) == sorted(GRID_KEYS)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.state == TrialState.COMPLETE
    _, children = mlflow_runs(tmp_path)
    assert sorted(run.data.tags["rspo.trial"] for run in children) == sorted(GRID_KEYS)
    assert {run.info.status for run in children} == {"FINISHED"}
    rerun = next(run for run in children if run.data.tags["rspo.trial"] == "rkl-0.1")
    assert rerun.info.run_id == left_running[0].info.run_id


def test_resume_needs_existing_study(tmp_path):
    with pytest.raises(SweepSetupError, match="no study named 'engine'"):
        run_fake(make_config(), tmp_path, FakeExecutor(), resume=True)
    run_fake(make_config(), tmp_path, FakeExecutor())
    resumed = run_fake(make_config(), tmp_path, FakeExecutor(), resume=True)
    assert sorted(resumed.skipped) == sorted(GRID_KEYS)


def test_claim_waiting_creates_no_trial(tmp_path):
    storage = search.make_storage(f"sqlite:///{tmp_path / 'o.db'}", parse_config(make_config()).sweep.retry)
    study = optuna.create_study(study_name="empty", storage=storage)
    assert search.claim_waiting(study, storage) is None
    assert study.trials == []
    study.enqueue_trial({"trial": "a"})
    claimed = search.claim_waiting(study, storage)
    assert claimed is not None
    assert search.claim_waiting(study, storage) is None
    assert [t.state for t in study.trials] == [TrialState.RUNNING]


def hold_lock(url: str, name: str, holding, release) -> None:
    lock = search.StudyLock(url, name)
    with lock.hold():
        holding.set()
        release.wait(30)


def test_study_lock_excludes_other_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    context = multiprocessing.get_context("fork")
    holding, release = context.Event(), context.Event()
    other = context.Process(target=hold_lock, args=(url, "study", holding, release))
    other.start()
    assert holding.wait(30)
    waited = []

    def release_later() -> None:
        time.sleep(1.0)
        waited.append(time.perf_counter())
        release.set()

    import threading

    threading.Thread(target=release_later).start()
    with search.StudyLock(url, "study").hold():
        acquired = time.perf_counter()
    other.join(30)
    assert waited
    assert acquired >= waited[0]


def test_optuna_search_conditional_params(tmp_path):
    raw = make_config(
        "search", kind="optuna", n_trials=6, sampler={"kind": "random", "seed": 1},
        variants=[
            {"name": "sppo"},
            {"name": "isf", "regularizers": [{"name": "is_forward_kl", "params": {"clip": 10}}]},
        ],
        search={"isf": {"coef": {"low": 0.01, "high": 1.0},
                        "params": [{"regularizer": "is_forward_kl", "name": "clip", "low": 2, "high": 20}]}},
    )
    executor = FakeExecutor()
    result = run_fake(raw, tmp_path, executor)
    study = load_study(tmp_path, "search")
    sampled = [t for t in study.trials if not search.is_keyed(t)]
    assert len(sampled) == 6
    assert search.sampled_slots(study) == 6
    assert len(result.completed) == 7
    variants = {t.params["variant"] for t in sampled}
    assert variants == {"sppo", "isf"}, "seed 1 should sample both variants in 6 trials"
    for trial in sampled:
        if trial.params["variant"] == "isf":
            assert set(trial.params) == {"variant", "isf/coef", "isf/is_forward_kl.clip"}
            assert 2 <= trial.params["isf/is_forward_kl.clip"] <= 20
        else:
            assert set(trial.params) == {"variant"}
    _, children = mlflow_runs(tmp_path, "search")
    isf_run = next(run for run in children if run.data.tags["rspo.variant"] == "isf")
    assert "optuna.isf/is_forward_kl.clip" in isf_run.data.params
    assert study.user_attrs["rspo.sampler"]["class"] == "RandomSampler"

    again = run_fake(raw, tmp_path, executor)
    assert again.completed == {}
    assert len(load_study(tmp_path, "search").trials) == 7


def test_tpe_sampler_arguments_recorded(tmp_path):
    sampler = {"kind": "tpe", "seed": 4, "n_startup_trials": 1}
    raw = make_config("tpe", kind="optuna", n_trials=2, sampler=sampler)
    run_fake(raw, tmp_path, FakeExecutor())
    recorded = load_study(tmp_path, "tpe").user_attrs["rspo.sampler"]
    assert recorded == {
        "class": "TPESampler", "n_startup_trials": 1, "n_ei_candidates": 24, "seed": 4, "multivariate": True,
        "group": True, "constant_liar": True, "optuna_version": optuna.__version__,
    }


def test_changed_search_space_rejected(tmp_path):
    raw = make_config("space", kind="optuna", n_trials=1, sampler={"kind": "random"})
    run_fake(raw, tmp_path, FakeExecutor())
    raw["sweep"]["search"] = {"rkl": {"coef": {"low": 0.01, "high": 1.0}}}
    with pytest.raises(SweepSetupError, match="another search space"):
        run_fake(raw, tmp_path, FakeExecutor())


def test_pruned_trial_recorded(tmp_path):
    """MedianPruner(n_startup_trials=1): sppo-0 completes first with 9 at iteration 1; rkl reports less."""
    raw = make_config("prune", include_base=False, pruner={"kind": "median", "n_startup_trials": 1})
    result = run_fake(raw, tmp_path, FakeExecutor())
    assert sorted(result.completed) == ["sppo-0"]
    assert result.pruned == {"rkl-0.1": 8.5, "rkl-1": 4.0}
    study = load_study(tmp_path, "prune")
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert [trial.intermediate_values for trial in pruned] == [{1: 8.5}, {1: 4.0}]
    _, children = mlflow_runs(tmp_path, "prune")
    run = next(run for run in children if run.data.tags["rspo.trial"] == "rkl-1")
    assert run.info.status == "KILLED"
    assert run.data.tags["rspo.state"] == "pruned"
    again = run_fake(raw, tmp_path, FakeExecutor())
    assert again.completed == {}
    assert again.failed == {}


def test_multi_objective_pareto_front(tmp_path):
    raw = make_config("pareto", objectives=["lc_win_rate", "avg_length"])
    result = run_fake(raw, tmp_path, FakeExecutor())
    # (LC, length): base (5, 50), sppo (10, 100), rkl-0.1 (9.5, 120), rkl-1 (5, 300).
    expected = ["base", "sppo-0"]
    assert [item["key"] for item in result.pareto_front] == expected
    study = load_study(tmp_path, "pareto")
    assert [item["key"] for item in study.user_attrs["rspo.pareto_front"]] == expected
    assert study.user_attrs["rspo.pareto_front"][1]["values"] == {"lc_win_rate": 10.0, "avg_length": 100.0}
    parents, _ = mlflow_runs(tmp_path, "pareto")
    assert parents[0].data.tags["rspo.pareto_front"] == "base,sppo-0"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns.db'}")
    local = client.download_artifacts(parents[0].info.run_id, "sweep/pareto_front.json", str(tmp_path))
    document = json.loads(Path(local).read_text(encoding="utf-8"))
    assert document["directions"] == ["maximize", "minimize"]
    assert [item["key"] for item in document["trials"]] == expected


def test_pruner_with_two_objectives_rejected():
    raw = make_config(objectives=["lc_win_rate", "avg_length"], pruner={"kind": "median"})
    with pytest.raises(ConfigError, match="Optuna prunes single-objective studies only"):
        parse_config(raw)


def test_sweep_status_command(tmp_path):
    from typer.testing import CliRunner

    from rspo_bench.cli import app

    run_fake(make_config("pareto", objectives=["lc_win_rate", "avg_length"]), tmp_path, FakeExecutor())
    wide = {"COLUMNS": "250"}
    result = CliRunner().invoke(app, ["sweep-status", "pareto", "--workdir", str(tmp_path)], env=wide)
    assert result.exit_code == 0, result.output
    assert "4 complete" in result.output
    assert "Pareto front: base (#0" in result.output
    assert "optuna-dashboard sqlite:///" in result.output
    missing = CliRunner().invoke(app, ["sweep-status", "nope", "--workdir", str(tmp_path)], env=wide)
    assert missing.exit_code == 2
    assert "no study named 'nope'" in missing.output


def test_rank_one_tracker_logs_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlruns.db'}", "ranked")
    run_id, _ = tracker.trial_run("t", {})
    tracker.log_metrics(run_id, {"x": 1.0})
    tracker.finish(run_id)
    assert not (tmp_path / "mlruns.db").exists()
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()


def test_subprocess_launcher_pins_device(monkeypatch, tmp_path):
    from rspo_bench.sweeps import workers
    from rspo_bench.sweeps.grid import TrialSpec

    seen = {}

    class RecordingPopen:
        def __init__(self, command, *, stdin, pass_fds, env):
            seen.update(command=command, env=env)
            for fd in pass_fds:
                os.write(fd, b'{"event": "result", "status": "complete", "value": 1.0, "metrics": {}}\n')
            self.stdin = open(os.devnull, "wb")
            self.returncode = 0

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(workers.subprocess, "Popen", RecordingPopen)
    launch = {"config": {}, "parent_run_id": "p", "tracking_uri": "u", "cache_dir": "c", "data_dir": None,
              "code_version": "v", "report_intermediate": False, "system_metrics_interval": 5.0}
    launcher = workers.SubprocessLauncher(launch, device="1")
    outcome = launcher.run(TrialSpec("base", None, 0.0), "run", None)
    assert outcome.status == "complete"
    assert seen["env"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert seen["command"][1:3] == ["-m", "rspo_bench.sweeps.workers"]


def test_redact_url():
    secret = "postgresql://rspo:s3cret@db.lab:5432/optuna"
    assert redact_url(secret) == "postgresql://rspo:***@db.lab:5432/optuna"
    no_password = "postgresql+psycopg2://rspo@127.0.0.1/optuna"
    assert redact_url(no_password) == no_password
    assert redact_url("sqlite:////tmp/optuna.db") == "sqlite:////tmp/optuna.db"


@pytest.fixture
def mlflow_server(tmp_path):
    """Start `mlflow server` with a SQLite backend on a free 127.0.0.1 port; stop it after the test."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            log.close()
            output = (tmp_path / "mlflow-server.log").read_text()[-3000:]
            pytest.fail(f"mlflow server did not start: {output}")
        time.sleep(0.5)
    yield url
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(60)
    log.close()


@pytest.mark.slow
def test_sweep_against_tracking_server(mlflow_server, tmp_path, mini_config, data_dir):
    """A real sweep, two trials at a time in subprocesses, logging over HTTP to an `mlflow server`."""
    config = mini_config("served", "    - name: sppo\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RSPO_BENCH_PROGRESS": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "rspo_bench.cli", "sweep", str(config), "--workdir", str(tmp_path / "runs"),
         "--tracking-uri", mlflow_server, "--workers", "2", "--report-dir", str(tmp_path / "report")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "report" / "report.html").is_file()

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("served")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("rspo.role") == "sweep"]
    children = [run for run in runs if run.data.tags.get("rspo.role") == "trial"]
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert sorted(run.data.tags["rspo.trial"] for run in children) == ["base", "sppo-0"]
    study = optuna.load_study(study_name="served", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    assert study.user_attrs["mlflow_tracking_uri"] == mlflow_server
    assert study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
    numbers = {trial.user_attrs["mlflow_run_id"]: trial.number for trial in study.trials}
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["rspo.optuna_trial_number"] == str(numbers[run.info.run_id])
        assert "alpaca_eval2/lc_win_rate" in run.data.metrics
        assert "system/peak_rss_mib" in run.data.metrics
        assert "system/cpu_percent" in run.data.metrics
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "config")}
        assert artifacts == {"config/resolved.yaml"}
