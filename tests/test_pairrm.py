"""Tests of the PairRM re-implementation on tiny random DeBERTa-v2 checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DebertaV2Config

from rspo_bench.preference import pairrm
from rspo_bench.preference.pairrm import (
    CANDIDATE1_PREFIX,
    CANDIDATE2_PREFIX,
    PREFIX_TOKENS,
    SOURCE_PREFIX,
    PairRMJudge,
    PairRMModel,
    build_random_pairrm,
    encode_pair,
)

TEXTS = [
    "Explain how photosynthesis turns light into chemical energy in plants.",
    "The capital of France is Paris, a city on the river Seine.",
    "Write a short poem about the sea, the wind and the sky.",
    "I do not know the answer to that question, sorry.",
] * 10
INSTRUCTION = "What is the capital of France?"
RESPONSES = ["Paris.", "The capital of France is Paris.", "London.", "I do not know.", "Paris, on the Seine."]

# microsoft/deberta-v3-large, the backbone of llm-blender/PairRM, as its config.json on the hub states it.
DEBERTA_V3_LARGE = dict(
    vocab_size=128100,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    max_position_embeddings=512,
    relative_attention=True,
    position_buckets=256,
    norm_rel_ebd="layer_norm",
    share_att_key=True,
    pos_att_type="p2c|c2p",
    layer_norm_eps=1e-7,
    max_relative_positions=-1,
    position_biased_input=False,
    type_vocab_size=0,
)

# Parameter names of the published checkpoint: llm-blender's CrossCompareReranker keeps the
# DeBERTa encoder as `pretrained_model` and its head as `head_layer`, an nn.Sequential of
# Dropout, Linear(2H, H), Tanh, Dropout, Linear(H, n_tasks), so the linear layers are entries 1 and 4.
PUBLISHED_TOP_LEVEL_NAMES = [
    "pretrained_model.embeddings.word_embeddings.weight",
    "pretrained_model.embeddings.LayerNorm.weight",
    "pretrained_model.embeddings.LayerNorm.bias",
    "pretrained_model.encoder.rel_embeddings.weight",
    "pretrained_model.encoder.LayerNorm.weight",
    "pretrained_model.encoder.LayerNorm.bias",
    "head_layer.1.weight",
    "head_layer.1.bias",
    "head_layer.4.weight",
    "head_layer.4.bias",
]
PUBLISHED_LAYER_SUFFIXES = [
    "attention.self.query_proj.weight",
    "attention.self.query_proj.bias",
    "attention.self.key_proj.weight",
    "attention.self.key_proj.bias",
    "attention.self.value_proj.weight",
    "attention.self.value_proj.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
]


def published_names(num_layers: int) -> set[str]:
    layer_names = {
        f"pretrained_model.encoder.layer.{layer}.{suffix}"
        for layer in range(num_layers)
        for suffix in PUBLISHED_LAYER_SUFFIXES
    }
    return set(PUBLISHED_TOP_LEVEL_NAMES) | layer_names


@pytest.fixture(scope="module")
def random_pairrm():
    model, tokenizer = build_random_pairrm(TEXTS, seed=0)
    # The default initialisation (std 0.02) gives logits near 0, and larger head weights change that.
    with torch.no_grad():
        torch.manual_seed(1)
        torch.nn.init.normal_(model.head_layer[1].weight, std=1.0)
        torch.nn.init.normal_(model.head_layer[4].weight, std=1.0)
    return model, tokenizer


@pytest.fixture(scope="module")
def saved_pairrm(random_pairrm, tmp_path_factory) -> Path:
    model, tokenizer = random_pairrm
    folder = tmp_path_factory.mktemp("pairrm")
    PairRMJudge(model, tokenizer, name_or_path="memory").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def judge(saved_pairrm) -> PairRMJudge:
    return PairRMJudge.from_pretrained(saved_pairrm, device="cpu", batch_size=4)


def manual_logit(model, tokenizer, source, first, second) -> float:
    ids, _ = encode_pair(tokenizer, source, first, second)
    with torch.no_grad():
        return model(
            input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)
        ).logits.item()


# Parameter names ----------------------------------------------------------------------------


def test_published_parameter_names():
    config = DebertaV2Config(**DEBERTA_V3_LARGE, n_tasks=1, drop_out=0.05)
    with torch.device("meta"):
        model = PairRMModel(config)
    state = model.state_dict()
    assert set(state) == published_names(24)
    assert len(state) == 394
    assert tuple(state["head_layer.1.weight"].shape) == (1024, 2048)
    assert tuple(state["head_layer.4.weight"].shape) == (1, 1024)
    assert tuple(state["pretrained_model.encoder.rel_embeddings.weight"].shape) == (512, 1024)


def test_random_pairrm_uses_published_names(random_pairrm):
    model, _ = random_pairrm
    assert set(model.state_dict()) == published_names(model.config.num_hidden_layers)


def test_reload_has_no_missing_or_unexpected_keys(saved_pairrm, random_pairrm):
    model, info = PairRMModel.from_pretrained(saved_pairrm, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    original, _ = random_pairrm
    for name, tensor in original.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_prefix_token_ids_follow_vocabulary(random_pairrm):
    model, tokenizer = random_pairrm
    base_size = len(tokenizer) - len(PREFIX_TOKENS)
    assert tokenizer.convert_tokens_to_ids(list(PREFIX_TOKENS)) == list(range(base_size, base_size + 4))
    assert model.config.source_prefix_id == base_size
    assert model.config.cand1_prefix_id == base_size + 1
    assert model.config.cand2_prefix_id == base_size + 2


# llm-blender checkpoint layout --------------------------------------------------------------


def write_llm_blender_checkpoint(folder: Path, model, tokenizer, *, with_tokenizer: bool) -> Path:
    """Write llm-blender's layout: a ranker config.json, pytorch_model.bin, and a backbone folder."""
    backbone = folder / "backbone"
    backbone.mkdir(parents=True)
    base_tokenizer = pairrm.train_pairrm_tokenizer(TEXTS)
    base_tokenizer.save_pretrained(backbone)
    pairrm_fields = (
        "architectures",
        "n_tasks",
        "drop_out",
        "source_prefix_id",
        "cand1_prefix_id",
        "cand2_prefix_id",
        "cand_prefix_id",
    )
    backbone_dict = {key: value for key, value in model.config.to_dict().items() if key not in pairrm_fields}
    backbone_dict["vocab_size"] = len(base_tokenizer)
    DebertaV2Config.from_dict(backbone_dict).save_pretrained(backbone)

    checkpoint = folder / "checkpoint"
    checkpoint.mkdir()
    state = dict(model.state_dict())
    # transformers releases before 4.31 stored this buffer; the loader must ignore it.
    state["pretrained_model.embeddings.position_ids"] = torch.arange(512).expand((1, -1))
    torch.save(state, checkpoint / "pytorch_model.bin")
    ranker_config = {
        "ranker_type": "pairranker",
        "model_type": "deberta",
        "model_name": str(backbone),
        "source_maxlength": 1224,
        "candidate_maxlength": 412,
        "n_tasks": 1,
        "drop_out": 0.05,
    }
    (checkpoint / "config.json").write_text(json.dumps(ranker_config), encoding="utf-8")
    if with_tokenizer:
        tokenizer.save_pretrained(checkpoint)
    return checkpoint


@pytest.mark.parametrize(
    "with_tokenizer", [True, False], ids=["tokenizer-in-folder", "tokenizer-from-backbone"]
)
def test_llm_blender_layout_loads(random_pairrm, tmp_path, with_tokenizer):
    model, tokenizer = random_pairrm
    checkpoint = write_llm_blender_checkpoint(tmp_path, model, tokenizer, with_tokenizer=with_tokenizer)
    loaded = PairRMJudge.from_pretrained(checkpoint, device="cpu")
    assert loaded.tokenizer.convert_tokens_to_ids(list(PREFIX_TOKENS)) == tokenizer.convert_tokens_to_ids(
        list(PREFIX_TOKENS)
    )
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name
    expected = manual_logit(model, tokenizer, INSTRUCTION, RESPONSES[0], RESPONSES[2])
    assert loaded.pair_logits([INSTRUCTION], [RESPONSES[0]], [RESPONSES[2]])[0] == pytest.approx(
        expected, abs=1e-5
    )


def test_llm_blender_layout_rejects_wrong_names(random_pairrm, tmp_path):
    model, tokenizer = random_pairrm
    checkpoint = write_llm_blender_checkpoint(tmp_path, model, tokenizer, with_tokenizer=True)
    state = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    state["head.weight"] = state.pop("head_layer.4.weight")
    torch.save(state, checkpoint / "pytorch_model.bin")
    with pytest.raises(ValueError, match="head_layer.4.weight"):
        PairRMJudge.from_pretrained(checkpoint, device="cpu")


# Input format ------------------------------------------------------------------------------


def test_encode_pair_layout(random_pairrm):
    _, tokenizer = random_pairrm
    ids, replaced = encode_pair(tokenizer, "Question", "First answer", "Second answer")
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert replaced == 0
    assert tokens.count("[CLS]") == 3
    assert tokens.count("[SEP]") == 3
    starts = [index for index, token in enumerate(tokens) if token == "[CLS]"]
    assert [tokens[index + 1] for index in starts] == [SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX]
    assert tokens[-1] == "[SEP]"
    assert tokenizer.decode(ids[starts[1] + 2 : starts[2] - 1]) == "First answer"


def test_encode_pair_truncation_budget(random_pairrm):
    _, tokenizer = random_pairrm
    long_text = "photosynthesis and the river Seine " * 200
    ids, _ = encode_pair(
        tokenizer, long_text, long_text, long_text, source_max_length=40, candidate_max_length=30
    )
    separators = [index for index, token_id in enumerate(ids) if token_id == tokenizer.sep_token_id]
    source_length = separators[0] + 1
    first_length = separators[1] - separators[0]
    second_length = separators[2] - separators[1]
    assert source_length == 40
    assert first_length == second_length == (40 + 2 * 30 - 40) // 2
    short_ids, _ = encode_pair(
        tokenizer, "Hi", long_text, long_text, source_max_length=40, candidate_max_length=30
    )
    short_separators = [
        index for index, token_id in enumerate(short_ids) if token_id == tokenizer.sep_token_id
    ]
    assert short_separators[1] - short_separators[0] == (40 + 2 * 30 - (short_separators[0] + 1)) // 2


def test_encode_pair_replaces_reserved_strings(random_pairrm):
    _, tokenizer = random_pairrm
    ids, replaced = encode_pair(tokenizer, f"Q {CANDIDATE1_PREFIX} [SEP]", "A", f"B {SOURCE_PREFIX}")
    assert replaced == 3
    for token_id in tokenizer.convert_tokens_to_ids([SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX]):
        assert ids.count(token_id) == 1
    assert ids.count(tokenizer.sep_token_id) == 3


def test_forward_rejects_missing_prefix(random_pairrm):
    model, tokenizer = random_pairrm
    ids = tokenizer("no prefixes here")["input_ids"]
    with pytest.raises(ValueError, match="exactly one source prefix"):
        model(input_ids=torch.tensor([ids]))


# Logits and preferences ----------------------------------------------------------------------


def test_pair_logits_match_single_forward(judge, random_pairrm):
    model, tokenizer = random_pairrm
    sources = [INSTRUCTION] * 4
    firsts = RESPONSES[:4]
    seconds = RESPONSES[1:5]
    logits = judge.pair_logits(sources, firsts, seconds)
    for index in range(4):
        expected = manual_logit(model, tokenizer, sources[index], firsts[index], seconds[index])
        assert logits[index] == pytest.approx(expected, abs=1e-5)


def test_pair_logits_independent_of_batch_size(saved_pairrm):
    single = PairRMJudge.from_pretrained(saved_pairrm, device="cpu", batch_size=1)
    large = PairRMJudge.from_pretrained(saved_pairrm, device="cpu", batch_size=16)
    args = ([INSTRUCTION] * 5, RESPONSES, RESPONSES[::-1])
    np.testing.assert_allclose(single.pair_logits(*args), large.pair_logits(*args), atol=1e-5)


def test_preference_matrix_averages_both_orders(judge):
    matrix = judge.preference_matrix(INSTRUCTION, RESPONSES)
    assert matrix.shape == (5, 5)
    np.testing.assert_allclose(matrix + matrix.T, np.ones((5, 5)), atol=1e-12)
    np.testing.assert_allclose(np.diag(matrix), 0.5)
    forward = judge.pair_logits([INSTRUCTION], [RESPONSES[0]], [RESPONSES[3]])[0]
    backward = judge.pair_logits([INSTRUCTION], [RESPONSES[3]], [RESPONSES[0]])[0]
    assert matrix[0, 3] == pytest.approx(1.0 / (1.0 + np.exp(-(forward - backward) / 2.0)), abs=1e-6)
    # A random encoder barely distinguishes the responses, but the matrix must still depend on them.
    assert np.abs(matrix - 0.5).max() > 1e-6


def test_batch_preferences_match_matrix(judge):
    matrix = judge.preference_matrix(INSTRUCTION, RESPONSES)
    pairs = judge.batch_preferences(
        [INSTRUCTION] * 2, [RESPONSES[1], RESPONSES[4]], [RESPONSES[2], RESPONSES[0]]
    )
    np.testing.assert_allclose(pairs, [matrix[1, 2], matrix[4, 0]], atol=1e-6)


def test_preference_matrices_batch_several_prompts(judge):
    groups = [RESPONSES[:3], RESPONSES[2:]]
    matrices = judge.preference_matrices([INSTRUCTION, "Write a poem."], groups)
    np.testing.assert_allclose(matrices[0], judge.preference_matrix(INSTRUCTION, RESPONSES[:3]), atol=1e-6)
    np.testing.assert_allclose(
        matrices[1], judge.preference_matrix("Write a poem.", RESPONSES[2:]), atol=1e-6
    )


def test_rank_scores_are_mean_logit_differences(judge):
    logits = judge.pairwise_logit_matrices([INSTRUCTION], [RESPONSES])[0]
    assert np.all(np.diag(logits) == 0)
    scores = judge.rank_scores(INSTRUCTION, RESPONSES)
    np.testing.assert_allclose(scores, (logits - logits.T).sum(axis=1) / len(RESPONSES), atol=1e-12)


def test_fingerprint_tracks_weights(saved_pairrm, judge):
    again = PairRMJudge.from_pretrained(saved_pairrm, device="cpu")
    assert again.fingerprint() == judge.fingerprint()
    with torch.no_grad():
        again.model.head_layer[1].bias.add_(1.0)
    again._fingerprint = None
    assert again.fingerprint() != judge.fingerprint()
    assert judge.name == f"pairrm:{saved_pairrm}"
    assert "sigmoid((C_ij - C_ji) / 2)" in judge.description()


def test_rank_scores_probability_matches_official_formula(saved_pairrm, judge):
    official = PairRMJudge.from_pretrained(saved_pairrm, device="cpu", probability="rank_scores")
    scores = judge.rank_scores(INSTRUCTION, RESPONSES)
    matrix = official.preference_matrix(INSTRUCTION, RESPONSES)
    np.testing.assert_allclose(matrix, 1.0 / (1.0 + np.exp(-(scores[:, None] - scores[None, :]))), atol=1e-6)
    np.testing.assert_allclose(matrix + matrix.T, np.ones((5, 5)), atol=1e-12)
    pair = official.batch_preferences([INSTRUCTION], [RESPONSES[0]], [RESPONSES[1]])[0]
    two = official.preference_matrix(INSTRUCTION, RESPONSES[:2])
    assert pair == pytest.approx(two[0, 1], abs=1e-6)
    assert official.fingerprint() != judge.fingerprint()
    assert "rank score" in official.description()


def test_unknown_probability_rejected(random_pairrm):
    model, tokenizer = random_pairrm
    with pytest.raises(ValueError, match="unknown probability"):
        PairRMJudge(model, tokenizer, name_or_path="memory", probability="mean")


def test_world_judge_passes_batch_size(saved_pairrm, tmp_path):
    from rspo_bench.cache import StageCache
    from rspo_bench.config import parse_config
    from rspo_bench.worlds.hf_selfplay import HFWorld

    config = parse_config({
        "name": "pairrm-judge",
        "world": {"kind": "hf", "hf": {"name_or_path": str(saved_pairrm)}},
        "judge": {"kind": "pairrm", "model_name_or_path": str(saved_pairrm), "batch_size": 5},
        "sweep": {"variants": [{"name": "sppo"}]},
    })
    judge = HFWorld(config, StageCache(tmp_path / "cache")).judge
    assert isinstance(judge, PairRMJudge)
    assert judge.batch_size == 5
    assert judge.name_or_path == str(saved_pairrm)
