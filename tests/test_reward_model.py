"""Tests of reward-model judges on tiny local checkpoints, one of them carrying its own modeling code."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from rspo_bench.preference.reward_model import RewardModelJudge, read_rewards, sigmoid
from rspo_bench.worlds import tiny

TEXTS = [
    "Explain how photosynthesis turns light into chemical energy in plants.",
    "The capital of France is Paris, a city on the river Seine.",
    "Write a short poem about the sea, the wind and the sky.",
] * 10
INSTRUCTION = "What is the capital of France?"
RESPONSES = ["Paris.", "The capital of France is Paris, on the Seine.", "London.", "I do not know."]

# Custom code in the style of ArmoRM: a config with auto_map and an output with per-objective
# `rewards` and a gated scalar `score`.
REMOTE_CODE = """
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


class TinyRewardConfig(PretrainedConfig):
    model_type = "tiny_multi_objective_reward"

    def __init__(self, vocab_size=64, hidden_size=8, num_objectives=3, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_objectives = num_objectives
        super().__init__(**kwargs)


@dataclass
class TinyRewardOutput(ModelOutput):
    rewards: torch.FloatTensor | None = None
    gating_output: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None


class TinyRewardModel(PreTrainedModel):
    config_class = TinyRewardConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.objectives = nn.Linear(config.hidden_size, config.num_objectives)
        self.gating = nn.Linear(config.hidden_size, config.num_objectives)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        rewards = self.objectives(pooled)
        gating = torch.softmax(self.gating(pooled), dim=-1)
        score = (rewards * gating).sum(-1, keepdim=True)
        return TinyRewardOutput(rewards=rewards, gating_output=gating, score=score)
"""


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.train_tokenizer(TEXTS, vocab_size=300)


def save_remote_reward_checkpoint(folder: Path, tokenizer, *, num_objectives: int, module_name: str) -> Path:
    """Save a tiny reward model whose modeling code lives in the checkpoint folder (``auto_map``)."""
    code_path = folder / "modeling_tiny_reward.py"
    code_path.write_text(REMOTE_CODE, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(module_name, code_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.TinyRewardModel(
        module.TinyRewardConfig(vocab_size=len(tokenizer), hidden_size=8, num_objectives=num_objectives)
    )
    with torch.no_grad():
        model.objectives.weight.mul_(50.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "modeling_tiny_reward.TinyRewardConfig",
        "AutoModelForSequenceClassification": "modeling_tiny_reward.TinyRewardModel",
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def remote_checkpoint(tmp_path_factory, tokenizer) -> Path:
    return save_remote_reward_checkpoint(
        tmp_path_factory.mktemp("remote_reward"), tokenizer, num_objectives=3,
        module_name="tiny_reward_code_for_saving",
    )


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("llama_reward")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(50.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def unpadded_rewards(judge: RewardModelJudge, instruction: str, responses: list[str]) -> np.ndarray:
    values = []
    with torch.no_grad():
        for response in responses:
            ids = torch.tensor([judge.encode(instruction, response)])
            values.append(read_rewards(judge.model(input_ids=ids))[0].item())
    return np.asarray(values)


# Remote code ------------------------------------------------------------------------------


def test_remote_code_needs_trust(remote_checkpoint):
    with pytest.raises(ValueError, match="trust_remote_code"):
        RewardModelJudge.from_pretrained(remote_checkpoint, device="cpu")


def test_remote_code_reads_score_and_rewards(remote_checkpoint):
    judge = RewardModelJudge.from_pretrained(
        remote_checkpoint, trust_remote_code=True, device="cpu", batch_size=3
    )
    assert type(judge.model).__name__ == "TinyRewardModel"
    outputs = judge.reward_outputs([INSTRUCTION] * 4, RESPONSES)
    assert outputs.rewards.shape == (4,)
    assert outputs.objective_rewards.shape == (4, 3)
    np.testing.assert_allclose(outputs.rewards, unpadded_rewards(judge, INSTRUCTION, RESPONSES), atol=1e-5)
    with torch.no_grad():
        ids = torch.tensor([judge.encode(INSTRUCTION, RESPONSES[1])])
        direct = judge.model(input_ids=ids)
    np.testing.assert_allclose(outputs.objective_rewards[1], direct.rewards[0].numpy(), atol=1e-5)
    assert outputs.rewards[1] == pytest.approx(direct.score.item(), abs=1e-5)


def test_remote_code_bradley_terry_matrix(remote_checkpoint):
    judge = RewardModelJudge.from_pretrained(remote_checkpoint, trust_remote_code=True, device="cpu")
    rewards = judge.rewards(INSTRUCTION, RESPONSES)
    matrix = judge.preference_matrix(INSTRUCTION, RESPONSES)
    np.testing.assert_allclose(matrix, sigmoid(rewards[:, None] - rewards[None, :]), atol=1e-12)
    np.testing.assert_allclose(matrix + matrix.T, np.ones((4, 4)), atol=1e-12)
    np.testing.assert_allclose(np.diag(matrix), 0.5)
    assert np.abs(matrix - 0.5).max() > 1e-3


# Standard sequence-classification models ----------------------------------------------------


def test_llama_classifier_rewards_match_unpadded(llama_checkpoint):
    judge = RewardModelJudge.from_pretrained(llama_checkpoint, device="cpu", batch_size=4)
    assert type(judge.model).__name__ == "LlamaForSequenceClassification"
    rewards = judge.rewards(INSTRUCTION, RESPONSES)
    np.testing.assert_allclose(rewards, unpadded_rewards(judge, INSTRUCTION, RESPONSES), atol=1e-5)
    assert np.ptp(rewards) > 1e-3


def test_chat_template_formats_inputs(llama_checkpoint, tokenizer):
    judge = RewardModelJudge.from_pretrained(llama_checkpoint, device="cpu")
    ids = judge.encode(INSTRUCTION, "Paris.")
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": INSTRUCTION}, {"role": "assistant", "content": "Paris."}],
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert ids == list(expected)


def test_text_pair_without_chat_template(llama_checkpoint, tmp_path, tokenizer):
    folder = tmp_path / "plain"
    judge = RewardModelJudge.from_pretrained(llama_checkpoint, device="cpu")
    judge.model.save_pretrained(folder)
    plain = tokenizer.__class__.from_pretrained(llama_checkpoint)
    plain.chat_template = None
    plain.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    plain_judge = RewardModelJudge.from_pretrained(folder, device="cpu")
    assert not plain_judge.tokenizer.chat_template
    assert plain_judge.encode("Question", "Answer") == list(
        plain_judge.tokenizer("Question", "Answer")["input_ids"]
    )


def test_batches_without_pad_token_run_unpadded(llama_checkpoint):
    judge = RewardModelJudge.from_pretrained(llama_checkpoint, device="cpu", batch_size=4)
    expected = judge.rewards(INSTRUCTION, RESPONSES)
    judge.tokenizer.pad_token = None
    np.testing.assert_allclose(judge.rewards(INSTRUCTION, RESPONSES), expected, atol=1e-5)


def test_batch_preferences_match_matrix(llama_checkpoint):
    judge = RewardModelJudge.from_pretrained(llama_checkpoint, device="cpu")
    matrix = judge.preference_matrix(INSTRUCTION, RESPONSES)
    pairs = judge.batch_preferences(
        [INSTRUCTION] * 2, [RESPONSES[0], RESPONSES[3]], [RESPONSES[2], RESPONSES[1]]
    )
    np.testing.assert_allclose(pairs, [matrix[0, 2], matrix[3, 1]], atol=1e-6)


def test_multi_label_classifier_rejected():
    output = type("Output", (), {"logits": torch.zeros(2, 3)})()
    with pytest.raises(ValueError, match="3 logits per sequence"):
        read_rewards(output)


def test_fingerprint_and_description(llama_checkpoint):
    first = RewardModelJudge.from_pretrained(llama_checkpoint, device="cpu")
    second = RewardModelJudge.from_pretrained(llama_checkpoint, device="cpu", max_length=128)
    assert first.fingerprint() != second.fingerprint()
    assert (
        first.fingerprint() == RewardModelJudge.from_pretrained(llama_checkpoint, device="cpu").fingerprint()
    )
    assert "sigmoid(r_i - r_j)" in first.description()
    assert first.name == f"reward_model:{llama_checkpoint}"


# Judge settings in an hf-world experiment ----------------------------------------------------


def hf_world_judge(tmp_path: Path, checkpoint: Path, **judge_options):
    """Build the judge of an hf-world experiment whose judge section is a reward model."""
    from rspo_bench.cache import StageCache
    from rspo_bench.config import parse_config
    from rspo_bench.worlds.hf_selfplay import HFWorld

    config = parse_config({
        "name": "reward-judge",
        "world": {"kind": "hf", "hf": {"name_or_path": str(checkpoint)}},
        "judge": {"kind": "reward_model", "model_name_or_path": str(checkpoint), **judge_options},
        "sweep": {"variants": [{"name": "sppo"}]},
    })
    return HFWorld(config, StageCache(tmp_path / "cache")).judge


def test_world_judge_needs_trust_remote_code(tmp_path, remote_checkpoint):
    with pytest.raises(ValueError) as error:
        hf_world_judge(tmp_path, remote_checkpoint)
    assert "judge.trust_remote_code: true" in str(error.value)
    assert str(remote_checkpoint) in str(error.value)


def test_world_judge_passes_checkpoint_options(tmp_path, remote_checkpoint):
    judge = hf_world_judge(tmp_path, remote_checkpoint, trust_remote_code=True, batch_size=3)
    assert type(judge.model).__name__ == "TinyRewardModel"
    assert judge.batch_size == 3
    assert judge.revision is None


def test_world_judge_keeps_default_batch_size(tmp_path, llama_checkpoint):
    judge = hf_world_judge(tmp_path, llama_checkpoint)
    assert judge.batch_size == 8


def test_checkpoint_options_rejected_for_offline_judge():
    from rspo_bench.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as error:
        parse_config({
            "name": "offline-judge",
            "judge": {"kind": "offline", "trust_remote_code": True, "batch_size": 4},
            "sweep": {"variants": [{"name": "sppo"}]},
        })
    message = error.value.errors[0][1]
    assert "batch_size, trust_remote_code" in message
    assert "judge.kind 'pairrm' or 'reward_model'" in message
