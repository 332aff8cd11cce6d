"""What one trial does in each world; the sweep engine only sees this interface."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..cache import StageCache
from ..config import ExperimentConfig
from ..logs import get_logger
from ..tracking import SweepTracker
from .grid import TrialSpec

if TYPE_CHECKING:
    from ..selfplay import PolicyRef

logger = get_logger(__name__)


class TrialReporter(Protocol):
    """Receives a trial's intermediate metrics; the sweep engine uses them to prune weak trials."""

    def report(self, step: int, metrics: dict[str, float]) -> None:
        """Record the metrics after self-play iteration ``step``; raises ``optuna.TrialPruned`` to stop."""


class TrialExecutor(Protocol):
    """Runs the trials of one world and logs their metrics and artifacts to MLflow."""

    def tags(self, spec: TrialSpec) -> dict[str, str]:
        """Return the MLflow tags that describe how this trial is judged and on which data."""

    def run(
        self, spec: TrialSpec, tracker: SweepTracker, run_id: str, reporter: TrialReporter | None = None
    ) -> float:
        """Run the trial, log into ``run_id`` and return the sweep objective (LC win rate).

        Executors that evaluate between iterations pass the metrics of each to
        ``reporter``. The engine passes a reporter only when the config requests
        per-iteration evaluation or pruning, so executors without that feature
        may keep the three-argument signature.
        """


EVAL_METRICS = ("win_rate", "standard_error", "lc_win_rate", "lc_standard_error", "avg_length")


class TinyExecutor:
    """Self-play on a language model world (tiny by default, or the given hf world), evaluated on AlpacaEval 2.0."""

    def __init__(
        self, config: ExperimentConfig, cache: StageCache, data_dir: str | Path | None, world: Any | None = None
    ) -> None:
        from ..selfplay import TinyWorld

        self.world = world if world is not None else TinyWorld(config, cache, data_dir)

    def tags(self, spec: TrialSpec) -> dict[str, str]:
        from ..evals.judge_prompts import ALPACA_EVAL_ANNOTATOR
        from ..evals.suite import alpaca_eval2_judge, alpaca_eval2_tags

        world = self.world
        evaluation = world.config.evaluation
        count = evaluation.alpaca_eval2.max_instructions or 805
        judge_name, is_proxy = alpaca_eval2_judge(world)
        if is_proxy:
            description = world.judge.description()
        else:
            description = (f"alpaca_eval's {ALPACA_EVAL_ANNOTATOR} prompt and log-probability preference, sent "
                           f"to {evaluation.judge.model} at {evaluation.judge.base_url}.")
        return {
            "rspo.judge": judge_name,
            "rspo.judge_is_proxy": "true" if is_proxy else "false",
            "rspo.judge_description": description,
            "rspo.data": f"AlpacaEval 2.0: {count} of 805 instructions; baseline gpt4_1106_preview; "
                         f"self-play prompts: UltraFeedback (data folder {world.data_dir})",
            **alpaca_eval2_tags(world),
        }

    @property
    def evaluates_every_iteration(self) -> bool:
        config = self.world.config
        return config.evaluation.alpaca_eval2.every_iteration or config.sweep.pruner is not None

    def run(
        self, spec: TrialSpec, tracker: SweepTracker, run_id: str, reporter: TrialReporter | None = None
    ) -> float:
        from ..evals.pipeline import evaluate_alpaca_eval2

        world = self.world
        if spec.variant is None:
            policy = world.base_policy
        elif self.evaluates_every_iteration:
            policy = self._selfplay_with_evaluations(spec, tracker, run_id, reporter)
        else:
            policy = self._selfplay(world, spec, tracker, run_id)
        result = evaluate_alpaca_eval2(world, policy, generator=f"{world.config.name}/{spec.key}")
        metrics = result.metrics
        final = {f"alpaca_eval2/{name}": metrics[name] for name in EVAL_METRICS}
        tracker.log_metrics(run_id, {
            **final,
            "alpaca_eval2/n_instructions": metrics["n_instructions"],
            "alpaca_eval2/judge_is_proxy": 0.0 if world.config.evaluation.judge.kind == "llm" else 1.0,
        })
        tracker.client.set_tag(run_id, "rspo.lc_gamed_source", str(metrics.get("lc_gamed_source", "")))
        tracker.log_json(run_id, "eval/alpaca_eval2_outputs.json", result.outputs)
        tracker.log_json(run_id, "eval/alpaca_eval2_annotations.json", result.annotations.to_dict(orient="records"))
        tracker.log_json(run_id, "eval/alpaca_eval2_metrics.json", metrics)
        self._other_benchmarks(policy, spec, tracker, run_id, result.outputs)
        return float(metrics["lc_win_rate"])

    def _other_benchmarks(self, policy, spec: TrialSpec, tracker: SweepTracker, run_id: str,
                          alpaca_outputs: list[dict[str, Any]]) -> None:
        """Run Arena-Hard, MT-Bench, ArmoRM and diversity where enabled, and log their metrics and files."""
        from ..evals.run_eval import log_artifacts
        from ..evals.suite import PolicyEvaluator

        evaluator = PolicyEvaluator(self.world, policy, generator=f"{self.world.config.name}/{spec.key}")
        for result in evaluator.run(alpaca_outputs):
            tracker.log_metrics(run_id, result.metrics)
            for name, value in result.tags.items():
                tracker.client.set_tag(run_id, name, value)
            log_artifacts(tracker, run_id, result.artifacts)

    @staticmethod
    def _selfplay(world: Any, spec: TrialSpec, tracker: SweepTracker, run_id: str):
        from ..selfplay import run_selfplay

        def log_iteration(iteration: int, policy: PolicyRef, metrics: dict[str, float]) -> None:
            tracker.log_metrics(run_id, metrics, step=iteration)

        return run_selfplay(world, spec.variant, spec.coef, on_iteration=log_iteration)

    def _selfplay_with_evaluations(self, spec: TrialSpec, tracker: SweepTracker, run_id: str,
                                   reporter: TrialReporter | None):
        """Run self-play once, evaluating and reporting after every iteration.

        ``reporter.report`` raises ``optuna.TrialPruned`` inside the iteration callback.
        The exception ends self-play before the next iteration and propagates to the
        sweep engine, which records the trial as pruned.
        """
        from ..evals.pipeline import evaluate_alpaca_eval2
        from ..selfplay import run_selfplay

        world = self.world

        def evaluate_iteration(iteration: int, policy: PolicyRef, selfplay_metrics: dict[str, float]) -> None:
            tracker.log_metrics(run_id, selfplay_metrics, step=iteration)
            generator = f"{world.config.name}/{spec.key}/iter{iteration}"
            result = evaluate_alpaca_eval2(world, policy, generator=generator)
            metrics = {f"alpaca_eval2/{name}": float(result.metrics[name]) for name in EVAL_METRICS}
            per_iteration = {f"eval_iter/{name}": value for name, value in metrics.items()}
            tracker.log_metrics(run_id, per_iteration, step=iteration)
            logger.info("trial %s: iteration %d LC win rate %.2f", spec.key, iteration,
                        metrics["alpaca_eval2/lc_win_rate"])
            if reporter is not None:
                reporter.report(iteration, metrics)

        return run_selfplay(world, spec.variant, spec.coef, on_iteration=evaluate_iteration)


def build_executor(config: ExperimentConfig, cache: StageCache, data_dir: str | Path | None) -> TrialExecutor:
    """Return the executor of the config's world."""
    if config.world.kind == "tiny":
        if config.judge.kind != "offline":
            raise ValueError(
                f"judge.kind {config.judge.kind!r} is not wired into the tiny world's sweep yet; use 'offline'"
            )
        return TinyExecutor(config, cache, data_dir)
    if config.world.kind == "game":
        from .game_executor import GameExecutor

        return GameExecutor(config)
    if config.world.kind == "hf":
        from ..worlds.hf_selfplay import HFWorld

        return TinyExecutor(config, cache, data_dir, world=HFWorld(config, cache, data_dir))
    raise ValueError(f"world.kind {config.world.kind!r} has no sweep executor")
