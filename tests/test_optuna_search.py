"""Optuna searches: config validation, samplers and pruners, the search space, and runs on the tiny world."""

from __future__ import annotations

import json
import os
from collections import Counter
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from rspo_bench.cache import StageCache
from rspo_bench.config import ConfigError, load_config, parse_config
from rspo_bench.sweeps import optuna_search as search
from rspo_bench.sweeps.executors import TinyExecutor
from rspo_bench.sweeps.grid import TrialSpec, describe_trials
from rspo_bench.tracking import SweepTracker

REPO = Path(__file__).resolve().parent.parent
SMOKE_OPTUNA = REPO / "experiments" / "smoke_optuna.yaml"

VARIANTS = [
    {"name": "sppo"},
    {"name": "rkl", "regularizers": [{"name": "reverse_kl"}], "coefs": [0.1, 0.5]},
    {"name": "mix", "regularizers": [{"name": "is_forward_kl", "params": {"clip": 10}, "label": "isf"},
                                     {"name": "reverse_kl", "weight": 5}]},
]


def sweep_section(**fields) -> dict:
    return {"kind": "optuna", "n_trials": 4, "variants": VARIANTS, **fields}


def config_errors(sweep: dict) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config({"name": "x", "sweep": sweep})
    return [(location, message) for location, message, _ in caught.value.errors]


@pytest.mark.parametrize(
    ("sweep", "location", "words"),
    [
        (sweep_section(n_trials=None), "sweep.n_trials", "needs n_trials"),
        ({"variants": VARIANTS, "n_trials": 3}, "sweep.n_trials", "applies only to sweep.kind 'optuna'"),
        (sweep_section(search={"nope": {}}), "sweep.search", "names variant 'nope'"),
        (sweep_section(search={"mix": {"params": [{"regularizer": "chi", "name": "clip", "low": 1,
                                                   "high": 2}]}}),
         "sweep.search", "names regularizer 'chi'"),
        (sweep_section(search={"rkl": {"coef": {"low": 1.0, "high": 0.1}}}), "sweep.search.rkl.coef",
         "low must be below high"),
        (sweep_section(search={"sppo": {"coef": {"low": 0.1, "high": 1.0}}}), "sweep.search",
         "has no regularizer to weight"),
        (sweep_section(objectives=["lc_win_rate", "avg_length"], pruner={"kind": "median"}), "sweep.pruner",
         "single-objective"),
        (sweep_section(objectives=["avg_length", "avg_length"]), "sweep.objectives", "must not repeat"),
        (sweep_section(sampler={"kind": "tpe", "multivariate": False}), "sweep.sampler.tpe",
         "group: true needs multivariate: true"),
        (sweep_section(sampler={"kind": "cmaes"}), "sweep.sampler", "tpe"),
        (sweep_section(retry={"heartbeat_interval": 60, "grace_period": 30}), "sweep.retry",
         "must exceed heartbeat_interval"),
    ],
)
def test_invalid_search_names_field(sweep, location, words):
    errors = config_errors(sweep)
    assert any(loc == location and words in message for loc, message in errors), errors


def test_all_errors_reported_at_once():
    errors = config_errors(sweep_section(n_trials=0, search={"nope": {}}, objectives=["length"]))
    locations = {location for location, _ in errors}
    assert {"sweep.n_trials", "sweep.objectives[0]", "sweep.search"} <= locations


def test_smoke_optuna_file_validates():
    config = load_config(SMOKE_OPTUNA)
    assert config.sweep.kind == "optuna"
    assert config.evaluation.alpaca_eval2.every_iteration
    assert "8 trials + the base trial" in describe_trials(config.sweep)


def test_tpe_built_with_explicit_arguments():
    sweep = parse_config({"name": "x", "sweep": sweep_section(sampler={"kind": "tpe", "seed": 7})}).sweep
    sampler, recorded = search.build_sampler(sweep, default_seed=0)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert recorded == {"class": "TPESampler", "n_startup_trials": 10, "n_ei_candidates": 24, "seed": 7,
                        "multivariate": True, "group": True, "constant_liar": True}
    assert sampler._n_startup_trials == 10
    assert sampler._multivariate is True
    assert sampler._constant_liar is True


def test_sampler_seed_defaults_to_experiment_seed():
    sweep = parse_config({"name": "x", "sweep": sweep_section(sampler={"kind": "nsga2"})}).sweep
    sampler, recorded = search.build_sampler(sweep, default_seed=13)
    assert isinstance(sampler, optuna.samplers.NSGAIISampler)
    assert recorded["seed"] == 13
    assert recorded["population_size"] == 8


def test_grid_study_samples_nothing():
    sweep = parse_config({"name": "x", "sweep": {"variants": VARIANTS}}).sweep
    sampler, recorded = search.build_sampler(sweep, default_seed=0)
    assert recorded == {"class": "RandomSampler", "seed": 0}


def test_pruners_built_from_config():
    median_section = sweep_section(pruner={"kind": "median", "n_startup_trials": 1})
    median = parse_config({"name": "x", "sweep": median_section})
    pruner, recorded = search.build_pruner(median.sweep)
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert recorded["n_startup_trials"] == 1
    halving = parse_config({"name": "x", "sweep": sweep_section(pruner={"kind": "successive_halving"})})
    pruner, recorded = search.build_pruner(halving.sweep)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert recorded == {"class": "SuccessiveHalvingPruner", "min_resource": 1, "reduction_factor": 2,
                        "min_early_stopping_rate": 0, "bootstrap_count": 0}


def test_suggest_conditional_parameters():
    sweep = parse_config({"name": "x", "sweep": sweep_section(search={
        "mix": {"coef": {"low": 0.01, "high": 1.0},
                "params": [{"regularizer": "isf", "name": "clip", "low": 2, "high": 20, "log": True},
                           {"regularizer": "reverse_kl", "name": "weight", "low": 1, "high": 10},
                           {"name": "beta", "low": 0.05, "high": 0.5}]},
    })}).sweep
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"variant": "mix"})
    study.enqueue_trial({"variant": "rkl"})
    study.enqueue_trial({"variant": "sppo"})
    mix = search.suggest_trial(study.ask(), sweep, key_number=0)
    assert set(mix.params) == {"variant", "mix/coef", "mix/isf.clip", "mix/reverse_kl.weight", "mix/beta"}
    assert mix.coef == mix.params["mix/coef"]
    assert mix.variant.regularizers[0].params == {"clip": mix.params["mix/isf.clip"]}
    assert mix.variant.regularizers[1].weight == mix.params["mix/reverse_kl.weight"]
    assert mix.variant.beta == mix.params["mix/beta"]
    assert mix.key == f"t000-mix-{mix.coef:.3g}"
    rkl = search.suggest_trial(study.ask(), sweep, key_number=1)
    assert set(rkl.params) == {"variant", "rkl/coef"}
    assert rkl.coef in (0.1, 0.5)
    sppo = search.suggest_trial(study.ask(), sweep, key_number=2)
    assert sppo.params == {"variant": "sppo"}
    assert (sppo.key, sppo.coef) == ("t002-sppo-0", 0.0)


def test_objective_values_name_missing_metric():
    section = sweep_section(objectives=["lc_win_rate", "avg_length"])
    sweep = parse_config({"name": "x", "sweep": section}).sweep
    assert search.directions(sweep) == ["maximize", "minimize"]
    metrics = {"alpaca_eval2/lc_win_rate": 3.0, "alpaca_eval2/avg_length": 9.0}
    assert search.objective_values(sweep, metrics) == [3.0, 9.0]
    with pytest.raises(KeyError, match="avg_length"):
        search.objective_values(sweep, {"alpaca_eval2/lc_win_rate": 3.0})


# Runs on the tiny world ---------------------------------------------------------------------

SEARCH_WORLD = """\
name: {name}
seed: 0
world:
  model: {{vocab_size: 384, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1,
          num_attention_heads: 2}}
  warmup: {{num_examples: 60, epochs: 1, batch_size: 16, max_prompt_tokens: 48, max_response_tokens: 24}}
prompts: {{per_iteration: 6}}
selfplay:
  iterations: 2
  sampling: {{num_samples: 3, max_new_tokens: 12, batch_size: 16}}
training: {{batch_size: 3, learning_rate: 3.0e-2, max_prompt_tokens: 48, max_response_tokens: 16}}
evaluation:
  alpaca_eval2:
    max_instructions: 30
    every_iteration: true
    sampling: {{num_samples: 1, max_new_tokens: 12, batch_size: 32}}
"""

# With learning rate 3e-2 the variants move the policy apart within one iteration. On the
# 30 instructions, 'sharp' (β = 0.001, so η = 1000) reaches an iteration-1 LC win rate near
# 20 and 'anchored' (100 × reverse KL) one near 3.5 (measured on CPU with this seed).
SEARCH_VARIANTS = """\
  variants:
    - name: sharp
      beta: 0.001
    - name: anchored
      regularizers: [{name: reverse_kl}]
      coefs: [100.0]
"""


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RSPO_BENCH_PROGRESS": "0", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rspo_bench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [(), ("--workers", "1")], ids=["in-process", "trial-subprocess"])
def test_median_pruner_stops_weak_trial(workers, tmp_path, data_dir):
    """RandomSampler(seed=6) draws sharp, sharp, anchored; MedianPruner(n_startup_trials=1) compares
    each trial's iteration-1 LC win rate with the finished trial 0 (sharp, about 20) and stops
    anchored (about 3.5) after iteration 1. Trial 1 repeats trial 0 exactly, ties and is not pruned.
    In a trial subprocess the values and the decision go through the events pipe."""
    sweep = SEARCH_VARIANTS + """\
  kind: optuna
  include_base: false
  n_trials: 3
  sampler: {kind: random, seed: 6}
  pruner: {kind: median, n_startup_trials: 1}
"""
    config = tmp_path / "prune.yaml"
    config.write_text(SEARCH_WORLD.format(name="prune") + "sweep:\n" + sweep, encoding="utf-8")
    result = run_cli("sweep", str(config), "--workdir", str(tmp_path / "runs"), "--format", "", *workers,
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    variants = [trial.params["variant"] for trial in study.trials]
    assert variants == ["sharp", "sharp", "anchored"], "seeded draws changed; pick a seed that gives these"
    states = [trial.state for trial in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert list(study.trials[2].intermediate_values) == [1]
    assert study.trials[2].intermediate_values[1] < study.trials[0].intermediate_values[1]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlruns.db'}")
    runs = {run.data.tags.get("rspo.optuna_trial_number"): run
            for run in client.search_runs([client.get_experiment_by_name("prune").experiment_id])}
    pruned = runs["2"]
    assert pruned.info.status == "KILLED"
    assert pruned.data.tags["rspo.state"] == "pruned"
    history = client.get_metric_history(pruned.info.run_id, "eval_iter/alpaca_eval2/lc_win_rate")
    assert [metric.step for metric in history] == [1]
    for name in ("win_rate", "lc_win_rate", "avg_length"):
        history = client.get_metric_history(runs["0"].info.run_id, f"eval_iter/alpaca_eval2/{name}")
        assert [metric.step for metric in history] == [1, 2], name
    assert runs["0"].info.status == "FINISHED"


@pytest.mark.slow
def test_two_objectives_record_pareto_front(tmp_path, data_dir):
    sweep = SEARCH_VARIANTS + """\
    - name: sppo
  kind: optuna
  include_base: true
  n_trials: 3
  objectives: [lc_win_rate, avg_length]
  sampler: {kind: nsga2, seed: 0, population_size: 2}
"""
    config = tmp_path / "front.yaml"
    config.write_text(SEARCH_WORLD.format(name="front") + "sweep:\n" + sweep, encoding="utf-8")
    workdir = tmp_path / "runs"
    result = run_cli("sweep", str(config), "--workdir", str(workdir), "--format", "", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Pareto front:" in result.stdout

    study = optuna.load_study(study_name="front", storage=f"sqlite:///{workdir / 'optuna.db'}")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    front = study.user_attrs["rspo.pareto_front"]
    points = [trial.values for trial in complete]
    for item in front:
        lc, length = item["values"]["lc_win_rate"], item["values"]["avg_length"]
        dominated = any(p[0] >= lc and p[1] <= length and (p[0] > lc or p[1] < length) for p in points)
        assert not dominated, item
    front_points = {(item["values"]["lc_win_rate"], item["values"]["avg_length"]) for item in front}
    for lc, length in points:
        if (lc, length) not in front_points:
            assert any(f[0] >= lc and f[1] <= length for f in front_points), (lc, length)

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.data.tags["rspo.pareto_front"] == ",".join(item["key"] for item in front)
    document = json.loads(Path(client.download_artifacts(parent_id, "sweep/pareto_front.json", str(tmp_path)))
                          .read_text(encoding="utf-8"))
    assert document["objectives"] == ["lc_win_rate", "avg_length"]
    assert [item["key"] for item in document["trials"]] == [item["key"] for item in front]

    status = run_cli("sweep-status", str(config), "--workdir", str(workdir), cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "Pareto front: " + front[0]["key"] in status.stdout


@pytest.mark.slow
def test_smoke_optuna_search_runs(tmp_path, data_dir):
    """The smoke search's sweep section, unchanged, on the small world of the other tests."""
    smoke = yaml.safe_load(SMOKE_OPTUNA.read_text(encoding="utf-8"))
    small = yaml.safe_load(SEARCH_WORLD.format(name="smoke_optuna"))
    small["sweep"] = smoke["sweep"]
    config = tmp_path / "smoke_optuna.yaml"
    config.write_text(yaml.safe_dump(small), encoding="utf-8")
    workdir = tmp_path / "runs"
    result = run_cli("sweep", str(config), "--workdir", str(workdir),
                     "--report-dir", str(tmp_path / "report"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    study = optuna.load_study(study_name="smoke_optuna", storage=f"sqlite:///{workdir / 'optuna.db'}")
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 9
    assert search.sampled_slots(study) == 8
    assert (tmp_path / "report" / "report.html").is_file()


class LookupCountingCache(StageCache):
    """A stage cache that counts its lookups per stage."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lookups: Counter[str] = Counter()

    def lookup(self, stage: str, key: str) -> Path | None:
        self.lookups[stage] += 1
        return super().lookup(stage, key)


class RecordingReporter:
    """A trial reporter that records each step and raises TrialPruned at ``prune_at``."""

    def __init__(self, prune_at: int | None = None) -> None:
        self.prune_at = prune_at
        self.steps: list[int] = []

    def report(self, step: int, metrics: dict[str, float]) -> None:
        self.steps.append(step)
        if step == self.prune_at:
            raise optuna.TrialPruned(f"pruned at step {step}")


def every_iteration_trial(tmp_path: Path, data_dir: Path) -> tuple[TinyExecutor, LookupCountingCache, TrialSpec]:
    raw = yaml.safe_load(SEARCH_WORLD.format(name="once") + "sweep:\n" + SEARCH_VARIANTS)
    config = parse_config(raw)
    assert config.selfplay.iterations == 2
    cache = LookupCountingCache(tmp_path / "cache")
    executor = TinyExecutor(config, cache, data_dir)
    spec = TrialSpec(key="sharp-0", variant=config.sweep.variants[0], coef=0.0)
    return executor, cache, spec


def test_every_iteration_runs_selfplay_once(tmp_path, data_dir):
    """Each iteration's policy stage is looked up once, so self-play is not re-entered per evaluation."""
    executor, cache, spec = every_iteration_trial(tmp_path, data_dir)
    tracker = SweepTracker("", "once", enabled=False)
    reporter = RecordingReporter()

    executor.run(spec, tracker, "", reporter)

    assert reporter.steps == [1, 2]
    assert cache.lookups["policy"] == 2
    assert cache.lookups["samples"] == 2
    # One evaluation per iteration and one of the final policy, which hits the iteration-2 entry.
    assert cache.lookups["eval_generations"] == 3


def test_pruned_trial_stops_selfplay(tmp_path, data_dir):
    executor, cache, spec = every_iteration_trial(tmp_path, data_dir)
    tracker = SweepTracker("", "once", enabled=False)
    reporter = RecordingReporter(prune_at=1)

    with pytest.raises(optuna.TrialPruned):
        executor.run(spec, tracker, "", reporter)

    assert reporter.steps == [1]
    assert cache.lookups["policy"] == 1
    assert cache.lookups["eval_generations"] == 1
