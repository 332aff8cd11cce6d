"""The self-play stages for a Hugging Face checkpoint (``world.kind: hf``).

The stages, cache keys and trainer are those of the tiny world; only the base
policy (a checkpoint instead of a warm-up SFT), the model I/O, generation
(transformers or vLLM) and the preference oracle differ.
"""

from __future__ import annotations

from contextlib import contextmanager
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

    def save_policy(self, model, tokenizer, path: Path, *, accelerator=None) -> None:
        hf.save_policy(model, tokenizer, path, accelerator=accelerator)

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
        # None leaves each judge's own default batch size.
        checkpoint_options = {
            "revision": settings.revision,
            "trust_remote_code": settings.trust_remote_code,
            **({} if settings.batch_size is None else {"batch_size": settings.batch_size}),
        }
        if settings.kind == "pairrm":
            from ..preference.pairrm import PAIRRM_HUB_ID, PairRMJudge

            name_or_path = settings.model_name_or_path or PAIRRM_HUB_ID
            with _remote_code_hint(name_or_path, settings.trust_remote_code):
                return PairRMJudge.from_pretrained(name_or_path, **checkpoint_options)
        if settings.kind == "reward_model":
            from ..preference.reward_model import RewardModelJudge

            if not settings.model_name_or_path:
                raise ValueError("judge.kind 'reward_model' needs judge.model_name_or_path")
            with _remote_code_hint(settings.model_name_or_path, settings.trust_remote_code):
                return RewardModelJudge.from_pretrained(settings.model_name_or_path, **checkpoint_options)
        from ..evals.judges import ChatJudgeClient
        from ..preference.llm_judge import LLMJudgeOracle

        if not (settings.base_url and settings.model):
            raise ValueError("judge.kind 'llm' needs judge.base_url and judge.model")
        return LLMJudgeOracle(ChatJudgeClient(settings.base_url, settings.model), data_dir=self.data_dir)


@contextmanager
def _remote_code_hint(name_or_path: str, trust_remote_code: bool):
    """Re-raise transformers' rejection of a checkpoint's own code with the config field that allows it."""
    try:
        yield
    except ValueError as error:
        # transformers 5.25 names its trust_remote_code argument in the ValueError it raises
        # for a checkpoint with its own code; any other ValueError passes through unchanged.
        if trust_remote_code or "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"judge checkpoint {name_or_path} needs its own modeling code, which runs only with "
            f"judge.trust_remote_code: true; set it if you trust that code. transformers: {error}"
        ) from error
