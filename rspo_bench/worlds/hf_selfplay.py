"""The self-play stages for a Hugging Face checkpoint (``world.kind: hf``).

The stages, cache keys and trainer are those of the tiny world; only the base
policy (a checkpoint instead of a warm-up SFT), the model I/O, generation
(transformers or vLLM) and the preference oracle differ.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from ..cache import stable_hash
from ..logs import get_logger
from ..selfplay import PolicyRef, TinyWorld
from . import hf

logger = get_logger(__name__)


def checkpoint_fingerprint(name_or_path: str) -> str | None:
    """Fingerprint a local checkpoint folder by its files' names, sizes and modification times.

    Rewriting a checkpoint in place changes the fingerprint, so cached samples and
    evaluations of the old weights are not reused. A hub id gives None: its
    ``revision`` pins the files.
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        return None
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return stable_hash([
        [str(path.relative_to(folder)), path.stat().st_size, path.stat().st_mtime_ns] for path in files
    ])


class HFWorld(TinyWorld):
    """Shared state of a sweep over an HF checkpoint: data, base policy and preference oracle."""

    @property
    def model_config(self):
        return self.config.world.hf

    @cached_property
    def warmup_records(self) -> list[dict[str, Any]]:
        """Return no records: a checkpoint is its own base policy, so self-play may use every training prompt."""
        return []

    @cached_property
    def base_policy(self) -> PolicyRef:
        settings = self.model_config
        key = stable_hash({
            "checkpoint": settings.name_or_path, "revision": settings.revision, "dtype": settings.dtype,
            "files": checkpoint_fingerprint(settings.name_or_path),
        })
        return PolicyRef(key, Path(settings.name_or_path))

    def load_policy(self, policy: PolicyRef, *, training: bool = False):
        return hf.load_policy(self.model_config, name_or_path=str(policy.path), training=training)

    def save_policy(self, model, tokenizer, path: Path) -> None:
        hf.save_policy(model, tokenizer, path)

    def generate(self, model, tokenizer, prompts, sampling, *, seed: int, num_samples: int | None = None):
        if self.model_config.generation_backend == "vllm":
            # NOTE: vLLM needs a GPU; this branch is exercised here only against a stand-in of its API.
            generator = hf.VLLMGenerator(self.model_config, name_or_path=model.name_or_path, tokenizer=tokenizer)
            return generator.generate(
                prompts, sampling, seed=seed, num_samples=num_samples,
                max_prompt_tokens=self.config.training.max_prompt_tokens,
            )
        return hf.generate(
            model, tokenizer, prompts, sampling, seed=seed, num_samples=num_samples,
            max_prompt_tokens=self.config.training.max_prompt_tokens,
        )

    def sampling_inputs(self, sampling, seed: int) -> dict[str, Any]:
        # The same key for both backends, so vLLM and transformers samples share cache entries.
        return {"sampling": hf.sampling_key(sampling, seed)}

    @cached_property
    def judge(self):
        settings = self.config.judge
        if settings.kind == "offline":
            return super().judge
        if settings.kind == "pairrm":
            from ..preference.pairrm import PAIRRM_HUB_ID, PairRMJudge

            return PairRMJudge.from_pretrained(settings.model_name_or_path or PAIRRM_HUB_ID)
        if settings.kind == "reward_model":
            from ..preference.reward_model import RewardModelJudge

            if not settings.model_name_or_path:
                raise ValueError("judge.kind 'reward_model' needs judge.model_name_or_path")
            return RewardModelJudge.from_pretrained(settings.model_name_or_path)
        from ..evals.judges import ChatJudgeClient
        from ..preference.llm_judge import LLMJudgeOracle

        if not (settings.base_url and settings.model):
            raise ValueError("judge.kind 'llm' needs judge.base_url and judge.model")
        return LLMJudgeOracle(ChatJudgeClient(settings.base_url, settings.model), data_dir=self.data_dir)
