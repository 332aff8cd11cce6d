"""``rspo-bench sweep --dry-run`` lists the trials of every shipped experiment and runs nothing."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rspo_bench.cli import app
from rspo_bench.config import load_config
from rspo_bench.sweeps.plan import model_loads, plan_sweep

runner = CliRunner()
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda path: path.name)
def test_dry_run_lists_trials(path, tmp_path):
    result = runner.invoke(app, ["sweep", str(path), "--dry-run", "--workdir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "runs").exists()
    plans, _ = plan_sweep(load_config(path))
    for plan in plans:
        assert plan.key in result.output


def test_paper_grid_plan():
    config = load_config(EXPERIMENTS / "mistral7b_rspo_grid.yaml")
    plans, summary = plan_sweep(config)
    keys = [plan.key for plan in plans if plan.key != "base"]
    assert len(keys) == 10
    assert all(plan.iterations == 3 for plan in plans if plan.key != "base")
    # bf16 weights and gradients (2 + 2 bytes) plus one float32 RMSprop state: 8 bytes per parameter.
    trained = [plan.training_gib for plan in plans if plan.key != "base"]
    assert trained[0] == pytest.approx(7.24e9 * 8 / 2**30)
    assert summary["parameters"] == 7_240_000_000


def test_model_loads_per_iteration():
    config = load_config(EXPERIMENTS / "smoke.yaml")
    plans, summary = plan_sweep(config)
    by_key = {plan.key: plan.model_loads for plan in plans}
    # Iteration 1: sample, one log-prob load (π_1 is the base), train; iteration 2: sample, two, train; evaluate.
    assert by_key["sppo-0"] == 3 + 4 + 1
    assert by_key["base"] == 1
    assert summary["model_loads"] == 1 + 4 * 8 - 2 * 3
