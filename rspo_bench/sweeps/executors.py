"""What one trial does in each world; the sweep engine only sees this interface."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..cache import StageCache
from ..config import ExperimentConfig
from ..logs import get_logger
from ..tracking import SweepTracker
from .grid import TrialSpec

logger = get_logger(__name__)


class TrialExecutor(Protocol):
    """Runs the trials of one world and logs their metrics and artifacts to MLflow."""

    def tags(self, spec: TrialSpec) -> dict[str, str]:
        """Return the MLflow tags that describe how this trial is judged and on which data."""

    def run(self, spec: TrialSpec, tracker: SweepTracker, run_id: str) -> float:
        """Run the trial, log into ``run_id`` and return the sweep objective."""


class TinyExecutor:
    """Self-play on the tiny CPU language model, evaluated on AlpacaEval 2.0 with the offline judge."""

    def __init__(self, config: ExperimentConfig, cache: StageCache, data_dir: str | Path | None) -> None:
        from ..selfplay import TinyWorld

        self.world = TinyWorld(config, cache, data_dir)

    def tags(self, spec: TrialSpec) -> dict[str, str]:
        world = self.world
        judge = world.judge
        count = world.config.evaluation.alpaca_eval2.max_instructions or 805
        return {
            "rspo.judge": judge.name,
            "rspo.judge_is_proxy": "true",
            "rspo.judge_description": judge.description(),
            "rspo.data": f"AlpacaEval 2.0: {count} of 805 instructions; baseline gpt4_1106_preview; "
                         f"self-play prompts: UltraFeedback (data folder {world.data_dir})",
        }

    def run(self, spec: TrialSpec, tracker: SweepTracker, run_id: str) -> float:
        from ..evals.pipeline import evaluate_alpaca_eval2
        from ..selfplay import run_selfplay

        world = self.world
        if spec.variant is None:
            policy = world.base_policy
        else:
            def log_iteration(iteration: int, metrics: dict[str, float]) -> None:
                tracker.log_metrics(run_id, metrics, step=iteration)

            policy = run_selfplay(world, spec.variant, spec.coef, on_iteration=log_iteration)
        result = evaluate_alpaca_eval2(world, policy, generator=f"{world.config.name}/{spec.key}")
        metrics = result.metrics
        tracker.log_metrics(run_id, {
            "alpaca_eval2/win_rate": metrics["win_rate"],
            "alpaca_eval2/standard_error": metrics["standard_error"],
            "alpaca_eval2/lc_win_rate": metrics["lc_win_rate"],
            "alpaca_eval2/lc_standard_error": metrics["lc_standard_error"],
            "alpaca_eval2/avg_length": metrics["avg_length"],
            "alpaca_eval2/n_instructions": metrics["n_instructions"],
            "alpaca_eval2/judge_is_proxy": 1.0,
        })
        tracker.client.set_tag(run_id, "rspo.lc_gamed_source", str(metrics.get("lc_gamed_source", "")))
        tracker.log_json(run_id, "eval/alpaca_eval2_outputs.json", result.outputs)
        tracker.log_json(run_id, "eval/alpaca_eval2_annotations.json", result.annotations.to_dict(orient="records"))
        tracker.log_json(run_id, "eval/alpaca_eval2_metrics.json", metrics)
        return float(metrics["lc_win_rate"])


def build_executor(config: ExperimentConfig, cache: StageCache, data_dir: str | Path | None) -> TrialExecutor:
    """Return the executor of the config's world."""
    if config.world.kind == "tiny":
        if config.judge.kind != "offline":
            raise ValueError(
                f"judge.kind {config.judge.kind!r} is not wired into the tiny world's sweep yet; use 'offline'"
            )
        return TinyExecutor(config, cache, data_dir)
    raise ValueError(f"world.kind {config.world.kind!r} has no sweep executor")
