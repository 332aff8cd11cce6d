"""End-to-end sweeps on a few prompts: the real CLI, MLflow on SQLite, Optuna on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "rspo_bench.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, data_dir):
    """Run the mini sweep once; later tests inspect its store, study and cache."""
    from tests.conftest import DEFAULT_VARIANTS, MINI_CONFIG

    root = tmp_path_factory.mktemp("sweep")
    config = root / "mini.yaml"
    config.write_text(MINI_CONFIG.format(name="mini", variants=DEFAULT_VARIANTS), encoding="utf-8")
    started = time.perf_counter()
    first = run_cli("sweep", str(config), "--workdir", str(root / "runs"), "--report-dir", str(root / "report"), cwd=root)
    first_seconds = time.perf_counter() - started
    return root, config, first, first_seconds


def test_sweep_exits_cleanly(finished_sweep):
    _, _, first, _ = finished_sweep
    assert first.returncode == 0, first.stderr[-3000:]


def test_mlflow_parent_and_children(finished_sweep):
    root, _, _, _ = finished_sweep
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("mini")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("rspo.role") == "sweep"]
    children = [run for run in runs if run.data.tags.get("rspo.role") == "trial"]
    assert len(parents) == 1
    assert sorted(run.data.tags["rspo.trial"] for run in children) == [
        "base", "is_forward_reverse-0.1", "reverse_kl-0.1", "sppo-0"
    ]
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["rspo.sweep"] == "mini"
        assert run.data.tags["rspo.judge_is_proxy"] == "true"
        assert "proxy" in run.data.tags["rspo.judge"]
        assert run.info.status == "FINISHED"
        for name in ("win_rate", "lc_win_rate", "avg_length", "lc_standard_error"):
            assert f"alpaca_eval2/{name}" in run.data.metrics, (run.data.tags["rspo.trial"], name)
        assert run.data.params["trial.key"] == run.data.tags["rspo.trial"]


def test_iteration_metrics_and_artifacts(finished_sweep):
    root, _, _, _ = finished_sweep
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("mini")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`rspo.trial` = 'is_forward_reverse-0.1'")
    for name in ("train/loss", "train/sppo", "train/reg/is_forward_kl", "train/reg/reverse_kl",
                 "selfplay/kl_to_base", "selfplay/response_length", "selfplay/win_prob_gap"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [metric.step for metric in history] == [1, 2], name
    artifacts = {item.path for folder in ("config", "eval") for item in client.list_artifacts(run.info.run_id, folder)}
    assert "config/resolved.yaml" in artifacts
    assert "eval/alpaca_eval2_outputs.json" in artifacts


def test_optuna_study_complete(finished_sweep):
    root, _, _, _ = finished_sweep
    study = optuna.load_study(study_name="mini", storage=f"sqlite:///{root / 'runs' / 'optuna.db'}")
    states = [trial.state for trial in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4
    assert len(states) == 4


def test_report_lists_every_trial(finished_sweep):
    root, _, _, _ = finished_sweep
    html = (root / "report" / "report.html").read_text(encoding="utf-8")
    for key in ("base", "sppo-0", "reverse_kl-0.1", "is_forward_reverse-0.1"):
        assert f'data-trial="{key}"' in html


def test_rerun_skips_and_reuses_cache(finished_sweep):
    root, config, _, _ = finished_sweep
    second = run_cli("sweep", str(config), "--workdir", str(root / "runs"), "--report-dir", str(root / "report"), cwd=root)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("already complete (LC win rate") == 4
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("mini")
    assert len(client.search_runs([experiment.experiment_id])) == 5


def test_lost_study_recomputes_from_cache(finished_sweep, tmp_path):
    """With the Optuna study gone, every trial reruns but every stage comes from the cache."""
    root, config, _, _ = finished_sweep
    study_copy = tmp_path / "optuna.db"
    third = run_cli(
        "sweep", str(config), "--workdir", str(root / "runs"), "--storage", f"sqlite:///{study_copy}",
        "--format", "", cwd=root,
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert "0 misses" in third.stderr
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'runs' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("mini")
    assert len(client.search_runs([experiment.experiment_id])) == 5


def test_nan_loss_fails_trial_keeps_others(tmp_path, mini_config, data_dir):
    variants = (
        "    - name: sppo\n"
        "    - name: broken\n"
        "      regularizers: [{name: 'tests.custom_regularizer:NaNRegularizer'}]\n"
        "      coefs: [0.1]\n"
    )
    config = mini_config("nanrun", variants)
    result = run_cli("sweep", str(config), "--workdir", str(tmp_path / "runs"), "--format", "", cwd=REPO)
    assert result.returncode == 1
    assert "trial broken-0.1 failed: TrainingDivergedError" in result.stderr
    assert "Lower training.learning_rate" in result.stderr
    study = optuna.load_study(study_name="nanrun", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    by_key = {trial.params["trial"]: trial.state for trial in study.trials}
    assert by_key["sppo-0"] == optuna.trial.TrialState.COMPLETE
    assert by_key["broken-0.1"] == optuna.trial.TrialState.FAIL
