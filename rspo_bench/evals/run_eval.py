"""``rspo-bench eval``: the benchmarks of a sweep trial, run on any checkpoint.

The checkpoint becomes the base policy of an hf world, so generation uses its own
chat template and the same cached stages as sweeps do. Results go to MLflow as a
run of the evaluation experiment, with the tags that name each benchmark's judge,
version and baseline.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rspo_bench.config import ExperimentConfig, load_config
from rspo_bench.evals.suite import BENCHMARKS, BenchmarkResult, PolicyEvaluator, alpaca_eval2_tags
from rspo_bench.logs import get_logger

logger = get_logger(__name__)

DEFAULT_EXPERIMENT = "rspo-bench-eval"


@dataclass
class EvalRun:
    """Results of ``rspo-bench eval`` for one checkpoint: each benchmark's metrics, tags and files."""

    model: str
    name: str
    results: list[BenchmarkResult] = field(default_factory=list)
    run_id: str = ""

    @property
    def metrics(self) -> dict[str, float]:
        return {name: value for result in self.results for name, value in result.metrics.items()}

    @property
    def tags(self) -> dict[str, str]:
        return {name: value for result in self.results for name, value in result.tags.items()}


def parse_benchmarks(text: str) -> list[str]:
    """Split a comma-separated benchmark list and reject unknown names, naming the choices."""
    names = [item.strip().replace("-", "_") for item in text.split(",") if item.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown or not names:
        raise ValueError(f"invalid benchmark names {unknown or [text]}; choose from {', '.join(BENCHMARKS)}")
    return list(dict.fromkeys(names))


def default_name(model: str) -> str:
    """Return an MLflow-safe run name from a checkpoint folder or hub id."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", model.rstrip("/").replace("/", "__")) or "model"


# Generation settings of the benchmarks' own tools, used when no --config is given: alpaca_eval's
# model configs, arena-hard-auto's answer generation, FastChat's gen_model_answer and the RSPO
# Self-BLEU script.
UPSTREAM_GENERATION: dict[str, dict[str, Any]] = {
    "alpaca_eval2": {"sampling": {"num_samples": 1, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 2048}},
    "arena_hard": {"sampling": {"num_samples": 1, "temperature": 0.0, "max_new_tokens": 4096}},
    "mt_bench": {"max_new_tokens": 1024},
    "diversity": {"sampling": {"num_samples": 16, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 200}},
}
DEFAULT_BENCHMARKS = ("alpaca_eval2", "arena_hard", "mt_bench", "diversity")


def eval_config(
    model: str,
    benchmarks: Sequence[str] | None,
    *,
    config_path: str | Path | None = None,
    name: str | None = None,
    judge_url: str | None = None,
    judge_model: str | None = None,
    armorm_model: str | None = None,
) -> ExperimentConfig:
    """Build the experiment config of an evaluation.

    Benchmark settings come from ``config_path`` when given (its ``evaluation`` and
    ``world.hf`` sections), else from :data:`UPSTREAM_GENERATION`. The world is an hf
    world on ``model``. ``benchmarks`` lists the benchmarks to run; None runs those that
    the config enables, or :data:`DEFAULT_BENCHMARKS` without a config.
    """
    if config_path is not None:
        base = load_config(config_path).model_dump(mode="json")
        if benchmarks is None:
            benchmarks = [name for name in BENCHMARKS if base["evaluation"][name]["enabled"]]
    else:
        base = {"name": "eval", "sweep": {"variants": [{"name": "eval"}]},
                "evaluation": {name: dict(settings) for name, settings in UPSTREAM_GENERATION.items()}}
        if benchmarks is None:
            benchmarks = list(DEFAULT_BENCHMARKS)
    hf_settings = dict((base.get("world") or {}).get("hf") or {})
    hf_settings["name_or_path"] = model
    base["world"] = {**(base.get("world") or {}), "kind": "hf", "hf": hf_settings}
    base["name"] = name or default_name(model)
    evaluation = base.setdefault("evaluation", {})
    for benchmark in BENCHMARKS:
        evaluation.setdefault(benchmark, {})["enabled"] = benchmark in benchmarks
    if judge_url or judge_model:
        evaluation["judge"] = {**evaluation.get("judge", {}), "kind": "llm", "base_url": judge_url,
                               "model": judge_model}
    if armorm_model:
        evaluation["armorm"]["model_name_or_path"] = armorm_model
    # Objectives refer to sweep trials; an evaluation keeps the default one.
    base.setdefault("sweep", {}).pop("objectives", None)
    return ExperimentConfig.model_validate(base)


def evaluate_checkpoint(
    config: ExperimentConfig,
    *,
    cache_dir: str | Path,
    data_dir: str | Path | None,
    tracking_uri: str | None,
    experiment: str = DEFAULT_EXPERIMENT,
) -> EvalRun:
    """Run the enabled benchmarks on ``config.world.hf.name_or_path`` and log them to MLflow."""
    from rspo_bench.cache import StageCache
    from rspo_bench.evals.pipeline import evaluate_alpaca_eval2
    from rspo_bench.sweeps.executors import EVAL_METRICS
    from rspo_bench.sweeps.runner import check_benchmark_data
    from rspo_bench.worlds.hf_selfplay import HFWorld

    check_benchmark_data(data_dir, config)
    world = HFWorld(config, StageCache(cache_dir), data_dir)
    policy = world.base_policy
    model = config.world.hf.name_or_path
    run = EvalRun(model=model, name=config.name)
    logger.info("evaluating %s as %s", model, config.name)
    alpaca_outputs = None
    settings = config.evaluation
    if settings.alpaca_eval2.enabled:
        result = evaluate_alpaca_eval2(world, policy, generator=config.name)
        alpaca_outputs = result.outputs
        metrics = {f"alpaca_eval2/{key}": float(result.metrics[key]) for key in (*EVAL_METRICS, "n_instructions")}
        tags = alpaca_eval2_tags(world)
        run.results.append(BenchmarkResult("alpaca_eval2", metrics, tags, {
            "eval/alpaca_eval2_outputs.json": result.outputs,
            "eval/alpaca_eval2_annotations.json": result.annotations.to_dict(orient="records"),
        }))
    run.results += PolicyEvaluator(world, policy, generator=config.name).run(alpaca_outputs)
    if tracking_uri:
        run.run_id = _log_run(run, config, tracking_uri, experiment)
    return run


def _log_run(run: EvalRun, config: ExperimentConfig, tracking_uri: str, experiment: str) -> str:
    from rspo_bench.tracking import SweepTracker, code_version

    tracker = SweepTracker(tracking_uri, experiment)
    first = run.results[0].benchmark if run.results else ""
    tags = {
        "rspo.role": "trial", "rspo.sweep": experiment,
        "rspo.trial": f"{run.name}@{time.strftime('%Y%m%d-%H%M%S')}",
        "mlflow.parentRunId": tracker.parent_run_id, "rspo.model": run.model,
        "rspo.code_version": code_version(), "rspo.world": "hf",
        # The report's judge and proxy lines read these, from the first benchmark that ran.
        "rspo.judge": run.tags.get(f"rspo.{first}.judge", ""),
        "rspo.judge_is_proxy": run.tags.get(f"rspo.{first}.judge_is_proxy", "false"),
        "rspo.data": "; ".join(run.tags[f"rspo.{r.benchmark}.version"] for r in run.results),
        **run.tags,
    }
    # Each call gets its own run, so evaluations with other judges or settings never mix.
    run_id = tracker.client.create_run(tracker.experiment_id, run_name=run.name, tags=tags).info.run_id
    tracker.log_params(run_id, {"model": run.model, "benchmarks": ",".join(r.benchmark for r in run.results)})
    tracker.log_metrics(run_id, run.metrics)
    tracker.log_text(run_id, "config/resolved.yaml", _yaml(config))
    for result in run.results:
        log_artifacts(tracker, run_id, result.artifacts)
    tracker.finish(run_id)
    tracker.finish_sweep()
    logger.info("logged evaluation of %s to MLflow run %s (%s)", run.model, run_id, tracking_uri)
    return run_id


def log_artifacts(tracker: Any, run_id: str, artifacts: dict[str, Any]) -> None:
    """Log JSON artifacts; names ending in ``.jsonl`` are written one record per line, as ``score`` reads them."""
    for name, value in artifacts.items():
        if name.endswith(".jsonl"):
            lines = "".join(json.dumps(_finite_json(record), ensure_ascii=False) + "\n" for record in value)
            tracker.log_text(run_id, name, lines)
        else:
            tracker.log_json(run_id, name, _finite_json(value))


def _finite_json(value: Any) -> Any:
    """Replace NaN and infinities, which are not valid JSON, by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(item) for item in value]
    return value


def _yaml(config: ExperimentConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def results_json(run: EvalRun) -> dict[str, Any]:
    return {"model": run.model, "name": run.name, "mlflow_run_id": run.run_id,
            "metrics": run.metrics, "tags": run.tags}
