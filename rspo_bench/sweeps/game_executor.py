"""Trials of the exact game world: tabular self-play with the same loss classes, no judge, no data files."""

from __future__ import annotations

import torch

from ..config import ExperimentConfig
from ..logs import get_logger
from ..tracking import SweepTracker
from .grid import TrialSpec

logger = get_logger(__name__)


class GameExecutor:
    """Runs each variant on a finite preference game and logs its convergence diagnostics per iteration.

    The sweep objective is ``game/final_duality_gap`` (minimised): the duality gap in
    the regularized game that the variant's loss targets. The base trial reports the
    gap of μ itself in the unregularized game.
    """

    def __init__(self, config: ExperimentConfig) -> None:
        from ..worlds.game import game_from_config

        self.config = config
        self.settings = config.world.game
        self.game = game_from_config(self.settings)

    def tags(self, spec: TrialSpec) -> dict[str, str]:
        settings = self.settings
        return {
            "rspo.judge": "exact preference matrix (game world, no judge)",
            "rspo.judge_is_proxy": "false",
            "rspo.judge_description": "Every expectation is computed exactly from the game's preference matrices.",
            "rspo.data": f"game family {settings.family}, seed {settings.seed}, {self.game.num_prompts} prompts, "
                         f"up to {self.game.max_responses} responses, mode {settings.mode}",
        }

    def run(self, spec: TrialSpec, tracker: SweepTracker, run_id: str, reporter=None) -> float:
        from ..methods import RSPOLoss, SoftSPPOLoss
        from ..selfplay import build_loss
        from ..worlds.game import final_policy_json, run_game_selfplay

        config = self.config
        if spec.variant is None:
            loss = RSPOLoss(base=SoftSPPOLoss(beta=config.sweep.beta))
            iterations = 0
        else:
            loss = build_loss(spec.variant, spec.coef, config.sweep.beta)
            iterations = config.selfplay.iterations
        # The tensors have a few dozen entries; torch's intra-op threads only add overhead here.
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = run_game_selfplay(
                self.game, loss, iterations=iterations, mode=self.settings.mode,
                num_samples=self.settings.num_samples, draws_per_prompt=self.settings.draws_per_prompt,
                seed=config.seed, inner_steps=self.settings.inner_steps,
            )
        finally:
            torch.set_num_threads(previous_threads)
        for step, diagnostics in enumerate(result.diagnostics):
            tracker.log_metrics(run_id, {f"game/{name}": value for name, value in diagnostics.items()}, step=step)
        final = result.diagnostics[-1]
        # The gap is ≥ 0 in exact arithmetic; rounding leaves values like -5e-17 at an equilibrium.
        final_gap = max(float(final["duality_gap"]), 0.0)
        tracker.log_metrics(run_id, {
            "game/final_duality_gap": final_gap,
            "game/final_exploitability": final["exploitability"],
            "game/final_expected_length": final["expected_length"],
        })
        tracker.log_json(run_id, "game/final_policy.json", final_policy_json(result))
        logger.info("trial %s: final duality gap %.3g, exploitability %.3g",
                    spec.key, final_gap, final["exploitability"])
        return final_gap
