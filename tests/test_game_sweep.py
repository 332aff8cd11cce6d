"""The game world through the sweep engine: seconds per sweep, diagnostics and the final policy in MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from rspo_bench.config import load_config
from rspo_bench.sweeps.runner import SweepPaths, run_sweep

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.fixture(scope="module")
def game_sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("game")
    config = load_config(EXPERIMENTS / "game_cyclic.yaml")
    config = config.model_copy(update={"selfplay": config.selfplay.model_copy(update={"iterations": 12})})
    paths = SweepPaths.under(root / "runs")
    result = run_sweep(config, paths, report_formats=("html",), report_dir=root / "report")
    return root, paths, result


def test_every_trial_completes(game_sweep):
    _, _, result = game_sweep
    assert not result.failed
    assert sorted(result.completed) == sorted(
        ["base", "sppo-0", "reverse_kl-0.1", "reverse_kl-1", "is_forward_kl-0.1", "is_forward_kl-1", "chi_squared-0.1"]
    )


def test_regularized_gap_below_sppo_exploitability(game_sweep):
    _, _, result = game_sweep
    # Reverse KL at λ = 1 converges to its regularized equilibrium; unregularized SPPO keeps cycling.
    assert result.completed["reverse_kl-1"] < 1e-3
    assert result.completed["sppo-0"] > 0.05


def test_diagnostics_and_policy_logged(game_sweep):
    _, paths, _ = game_sweep
    client = mlflow.MlflowClient(tracking_uri=paths.tracking_uri)
    experiment = client.get_experiment_by_name("game_cyclic")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`rspo.trial` = 'reverse_kl-1'")
    assert run.data.tags["rspo.world"] == "game"
    history = client.get_metric_history(run.info.run_id, "game/duality_gap")
    assert [metric.step for metric in history] == list(range(13))
    assert history[-1].value < history[0].value
    local = client.download_artifacts(run.info.run_id, "game/final_policy.json")
    policy = json.loads(Path(local).read_text())
    assert len(policy) == 4
    for probabilities in policy.values():
        assert sum(probabilities) == pytest.approx(1.0)
