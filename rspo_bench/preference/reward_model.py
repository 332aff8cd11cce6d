"""Scalar reward models as preference oracles, with Bradley-Terry preferences.

Any checkpoint that loads with ``AutoModelForSequenceClassification`` and returns one
reward per sequence works: the reward of response y to instruction x is r(x, y), and

    P(y_i ≻ y_j | x) = σ(r_i − r_j).

Reading the reward: when the model output has a ``score`` attribute, as the custom
output of ArmoRM-style models (``trust_remote_code=True``) does, that is the reward.
A ``rewards`` attribute, when present, contains the per-objective rewards.
Otherwise the reward is ``logits[:, 0]`` of a model with one label.

Input formatting: when the tokenizer has a chat template, (x, y) is rendered as a
user turn and an assistant turn with it, as chat reward models expect. Otherwise
the tokenizer encodes (x, y) as a text pair, as classic cross-encoder reward models
such as DeBERTa-based ones expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from rspo_bench.logs import get_logger, progress
from rspo_bench.preference.base import (
    GroupedPreferenceOracle,
    bradley_terry_matrix,
    bradley_terry_preferences,
    check_group_count,
    check_same_length,
    sigmoid,  # noqa: F401 (callers import sigmoid from this module)
    vocabulary_sha256,
    weights_fingerprint,
)
from rspo_bench.worlds.hf import resolve_device

logger = get_logger(__name__)

FINGERPRINT_FORMAT = "reward-model-v1"
DEFAULT_MAX_LENGTH = 4096


@dataclass(frozen=True)
class RewardOutputs:
    """Rewards of N (instruction, response) pairs: scalar [N] and per-objective [N, M] or None."""

    rewards: np.ndarray
    objective_rewards: np.ndarray | None


def read_rewards(output: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return the scalar rewards [B] and the per-objective rewards [B, M] (or None) of a model output.

    ``output.score`` is used when present, else ``output.logits`` of shape [B, 1] or [B].
    Raises ValueError for logits with several labels, which are not a scalar reward.
    """
    score = getattr(output, "score", None)
    objectives = getattr(output, "rewards", None)
    if score is None:
        score = getattr(output, "logits", None)
        if score is None:
            raise ValueError(
                f"the reward model output {type(output).__name__} has neither 'score' nor 'logits'"
            )
        if score.ndim == 2 and score.shape[-1] != 1:
            raise ValueError(
                f"the model returns {score.shape[-1]} logits per sequence; a reward model returns one "
                f"(num_labels=1) or a 'score' attribute"
            )
    score = score.reshape(score.shape[0], -1)
    if score.shape[-1] != 1:
        raise ValueError(f"expected one score per sequence, got shape {tuple(score.shape)}")
    if objectives is not None and objectives.ndim == 1:
        objectives = objectives.unsqueeze(-1)
    return score[:, 0], objectives


class RewardModelJudge(GroupedPreferenceOracle):
    """Preference oracle backed by a sequence-classification reward model."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name_or_path: str,
        revision: str | None = None,
        batch_size: int = 8,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path
        self.revision = revision
        self.batch_size = batch_size
        self.max_length = max_length
        self._fingerprint: str | None = None
        config = getattr(model, "config", None)
        if (
            config is not None
            and getattr(config, "pad_token_id", None) is None
            and tokenizer.pad_token_id is not None
        ):
            # Models with a decoder backbone find each sequence's last token through config.pad_token_id.
            config.pad_token_id = tokenizer.pad_token_id

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 8,
        max_length: int = DEFAULT_MAX_LENGTH,
        local_files_only: bool = False,
    ) -> RewardModelJudge:
        """Load a reward model and its tokenizer from a local folder or hub id.

        ``trust_remote_code`` runs the checkpoint's own modeling code, which ArmoRM-style
        models need. ``device`` defaults to CUDA when available; ``dtype`` defaults to
        bfloat16 on CUDA and float32 elsewhere.
        """
        name_or_path = str(name_or_path)
        target = resolve_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
        kwargs = {
            "revision": revision,
            "trust_remote_code": trust_remote_code,
            "local_files_only": local_files_only,
        }
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, dtype=dtype, **kwargs)
        model.to(target)
        logger.info(
            "loaded reward model %s (%s) in %s on %s; inputs use %s",
            name_or_path,
            type(model).__name__,
            str(dtype).removeprefix("torch."),
            target,
            "the chat template" if tokenizer.chat_template else "text pairs",
        )
        return cls(
            model,
            tokenizer,
            name_or_path=name_or_path,
            revision=revision,
            batch_size=batch_size,
            max_length=max_length,
        )

    @property
    def name(self) -> str:
        """Judge identifier for reports and annotation files."""
        return f"reward_model:{self.name_or_path}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # Rewards ------------------------------------------------------------------

    def encode(self, instruction: str, response: str) -> list[int]:
        """Return the token ids of one (instruction, response) pair, truncated to ``max_length``."""
        if self.tokenizer.chat_template:
            messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
            encoded = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
            ids = list(encoded["input_ids"])
            return ids[: self.max_length]
        encoded = self.tokenizer(instruction, response, truncation="only_second", max_length=self.max_length)
        return list(encoded["input_ids"])

    def _padding_is_unambiguous(self, sequences: Sequence[list[int]]) -> bool:
        pad_id = self.tokenizer.pad_token_id
        return pad_id is not None and all(pad_id not in ids for ids in sequences)

    def _forward(self, sequences: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the rewards of token sequences run as one right-padded batch."""
        width = max(len(ids) for ids in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        device = self.device
        output = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        return read_rewards(output)

    def reward_outputs(self, instructions: Sequence[str], responses: Sequence[str]) -> RewardOutputs:
        """Return the rewards of (instruction, response) pairs in input order.

        Pairs are sorted by length and batched. A batch runs padded only when the padding
        token occurs in none of its sequences, because many reward models locate each
        sequence's last token through the padding token. Otherwise, and when the tokenizer
        has no padding token, the batch's sequences run one at a time.
        """
        if len(instructions) != len(responses):
            raise ValueError(f"got {len(instructions)} instructions but {len(responses)} responses")
        if not instructions:
            return RewardOutputs(np.zeros(0, dtype=np.float64), None)
        encoded = [self.encode(x, y) for x, y in zip(instructions, responses, strict=True)]
        order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]), reverse=True)
        rewards = np.zeros(len(encoded), dtype=np.float64)
        objectives: np.ndarray | None = None
        unpadded_batches = 0
        batch_starts = range(0, len(order), self.batch_size)
        with torch.inference_mode():
            for start in progress(batch_starts, desc="reward model", total=len(batch_starts), unit="batch"):
                indices = order[start : start + self.batch_size]
                sequences = [encoded[i] for i in indices]
                if len(sequences) == 1 or self._padding_is_unambiguous(sequences):
                    parts = [self._forward(sequences)]
                else:
                    unpadded_batches += 1
                    parts = [self._forward([ids]) for ids in sequences]
                batch_rewards = torch.cat([part[0] for part in parts]).float().cpu().numpy()
                rewards[indices] = batch_rewards
                if parts[0][1] is not None:
                    batch_objectives = torch.cat([part[1] for part in parts]).float().cpu().numpy()
                    if objectives is None:
                        objectives = np.zeros((len(encoded), batch_objectives.shape[-1]), dtype=np.float64)
                    objectives[indices] = batch_objectives
        if unpadded_batches:
            logger.info(
                "reward model: %d of %d batches ran one sequence at a time, because the padding token is "
                "missing or occurs inside the sequences",
                unpadded_batches,
                len(batch_starts),
            )
        return RewardOutputs(rewards, objectives)

    def rewards(self, instruction: str, responses: Sequence[str]) -> np.ndarray:
        """Return the reward of each response to one instruction, shape [K]."""
        return self.reward_outputs([instruction] * len(responses), responses).rewards

    # Preferences --------------------------------------------------------------

    def preference_matrices(
        self, instructions: Sequence[str], response_groups: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """Return, per instruction, P with P[i, j] = σ(r_i − r_j); all responses are scored together."""
        check_group_count(instructions, response_groups)
        flat_instructions = [x for x, group in zip(instructions, response_groups, strict=True) for _ in group]
        flat_responses = [y for group in response_groups for y in group]
        rewards = self.reward_outputs(flat_instructions, flat_responses).rewards
        matrices = []
        start = 0
        for group in response_groups:
            group_rewards = rewards[start : start + len(group)]
            start += len(group)
            matrices.append(bradley_terry_matrix(group_rewards))
        return matrices

    def batch_preferences(
        self, instructions: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> np.ndarray:
        """Return P(responses_a[n] ≻ responses_b[n] | instructions[n]) = σ(r_a − r_b), shape [N]."""
        check_same_length(instructions=instructions, responses_a=responses_a, responses_b=responses_b)
        rewards = self.reward_outputs([*instructions, *instructions], [*responses_a, *responses_b]).rewards
        count = len(instructions)
        return bradley_terry_preferences(rewards[:count], rewards[count:])

    # Identity -----------------------------------------------------------------

    def fingerprint(self) -> str:
        """Return a sha256 over the weights (names, dtypes, shapes, bytes), input format and length limit."""
        if self._fingerprint is None:
            settings = {
                "format": FINGERPRINT_FORMAT,
                "max_length": self.max_length,
                "chat_template": self.tokenizer.chat_template or None,
                "vocabulary": vocabulary_sha256(self.tokenizer),
            }
            self._fingerprint = weights_fingerprint(settings, self.model)
        return self._fingerprint

    def description(self) -> str:
        """Return one paragraph that states the model and the preference formula, for reports."""
        formatting = (
            "rendered with its chat template" if self.tokenizer.chat_template else "encoded as a text pair"
        )
        return (
            f"Preferences come from the reward model {self.name_or_path}"
            f"{', revision ' + self.revision if self.revision else ''}. Each (instruction, response) pair is "
            f"{formatting}, truncated to {self.max_length} tokens, and gets a scalar reward r; "
            f"P(y_i preferred over y_j | x) = sigmoid(r_i - r_j) (Bradley-Terry). "
            f"Fingerprint {self.fingerprint()[:16]}."
        )
