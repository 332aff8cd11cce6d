"""Tests of the tiny world: tokenizer, model, warm-up SFT, sampling and log-probabilities.

They train a real tokenizer and a real (very small) Llama model on UltraFeedback text
from the data folder named by RSPO_BENCH_DATA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from rspo_bench.config import SamplingConfig, TinyModelConfig, WarmupConfig
from rspo_bench.data import load_alpaca_eval_baseline, load_alpaca_eval_instructions, load_ultrafeedback
from rspo_bench.worlds.tiny import (
    ASSISTANT_TOKEN,
    batched_sequence_logps,
    build_tiny_model,
    format_prompt,
    generate,
    load_policy,
    save_policy,
    sequence_logps,
    token_logps,
    tokenize_pairs,
    train_tokenizer,
    warmup_examples,
    warmup_sft,
)

VOCAB_SIZE = 512
MODEL_CONFIG = TinyModelConfig(
    vocab_size=VOCAB_SIZE,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    max_position_embeddings=256,
)
MAX_PROMPT_TOKENS = 24
MAX_RESPONSE_TOKENS = 16


@pytest.fixture(scope="module")
def data_dir() -> Path:
    value = os.environ.get("RSPO_BENCH_DATA")
    if not value:
        pytest.skip(
            "RSPO_BENCH_DATA is not set; point it at the data folder with ultrafeedback/ and alpaca_eval/"
        )
    return Path(value)


@pytest.fixture(scope="module")
def records(data_dir: Path) -> list[dict]:
    return load_ultrafeedback("train", data_dir)[:200]


@pytest.fixture(scope="module")
def pairs(records: list[dict]) -> list[tuple[str, str]]:
    """Short (instruction, response) pairs cut from the first UltraFeedback records."""
    return [(record["prompt"][:120], record["chosen"][:160]) for record in records]


@pytest.fixture(scope="module")
def tokenizer(pairs: list[tuple[str, str]]):
    texts = [f"{prompt}\n{response}" for prompt, response in pairs]
    return train_tokenizer(texts, vocab_size=VOCAB_SIZE)


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_model(MODEL_CONFIG, tokenizer, seed=0)


# Sums over 16 response tokens of an untrained model are near -100 nats, where adjacent float32
# values are 7.6e-6 apart, so sums are compared with a relative tolerance on top of 1e-5.
SUM_TOLERANCE = {"rtol": 1e-6, "atol": 1e-5}


def naive_token_logps(model, ids: torch.Tensor) -> torch.Tensor:
    """Return log_softmax(logits)[next token] of one unpadded sequence, shape [L - 1]."""
    with torch.no_grad():
        logits = model(input_ids=ids.unsqueeze(0)).logits[0]
    log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs[:-1].gather(-1, ids[1:].unsqueeze(-1)).squeeze(-1)


def naive_response_logps(model, input_ids, attention_mask, response_mask) -> torch.Tensor:
    """Sum naive next-token log-probs over response positions, one unpadded sequence at a time."""
    totals = []
    for row in range(input_ids.shape[0]):
        keep = attention_mask[row].bool()
        mask = response_mask[row][keep].bool()
        totals.append(naive_token_logps(model, input_ids[row][keep])[mask[1:]].sum())
    return torch.stack(totals)


# ---------------------------------------------------------------------------
# Tokenizer and chat format
# ---------------------------------------------------------------------------


def test_tokenizer_round_trips_text(tokenizer) -> None:
    texts = [
        "Hello, world . How are you?",
        "  leading spaces and\ttabs\n\nnew lines  ",
        "Unicode: héllo, 日本語, emoji 🙂, math ∑x²",
        "",
    ]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text


def test_tokenizer_special_tokens(tokenizer) -> None:
    assert tokenizer.bos_token == "<s>"
    assert tokenizer.eos_token == "</s>"
    assert tokenizer.pad_token == "<pad>"
    assert tokenizer.unk_token == "<unk>"
    assert tokenizer.padding_side == "left"
    assert len(tokenizer) <= VOCAB_SIZE
    assert len({tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}) == 3
    ids = tokenizer("<|user|>x<|assistant|>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "x"


def test_chat_template_renders_generation_prompt(tokenizer) -> None:
    expected = "<s><|user|>\nWhat is 2+2?\n<|assistant|>\n"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == expected
    assert format_prompt(tokenizer, "What is 2+2?") == expected


def test_chat_template_renders_assistant_turn(tokenizer) -> None:
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert rendered == "<s><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello.</s>\n"


def test_tokenizer_save_load_round_trip(tokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "Explain photosynthesis in one sentence."
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.padding_side == "left"
    assert loaded.pad_token_id == tokenizer.pad_token_id
    assert format_prompt(loaded, text) == format_prompt(tokenizer, text)


# ---------------------------------------------------------------------------
# Pair tokenization
# ---------------------------------------------------------------------------


def test_tokenize_pairs_layout(tokenizer) -> None:
    batch = tokenize_pairs(
        tokenizer, ["Hi", "Name a colour."], ["Hello.", "Blue"], max_prompt_tokens=64, max_response_tokens=64
    )
    input_ids = batch["input_ids"]
    attention_mask = batch["attention_mask"]
    response_mask = batch["response_mask"]
    assert input_ids.shape == attention_mask.shape == response_mask.shape
    for row, (prompt, response) in enumerate([("Hi", "Hello."), ("Name a colour.", "Blue")]):
        length = int(attention_mask[row].sum())
        assert attention_mask[row, :length].all()
        assert not attention_mask[row, length:].any()
        assert (input_ids[row, length:] == tokenizer.pad_token_id).all()
        prompt_ids = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        assert input_ids[row, :length].tolist() == prompt_ids + response_ids + [tokenizer.eos_token_id]
        assert response_mask[row].tolist() == [0] * len(prompt_ids) + [1] * (len(response_ids) + 1) + [0] * (
            input_ids.shape[1] - length
        )


def test_tokenize_pairs_truncation(tokenizer) -> None:
    long_prompt = "word " * 200
    long_response = "answer " * 200
    batch = tokenize_pairs(
        tokenizer, [long_prompt], [long_response], max_prompt_tokens=12, max_response_tokens=8
    )
    ids = batch["input_ids"][0].tolist()
    response_mask = batch["response_mask"][0].tolist()
    assert len(ids) == 12 + 8
    assert sum(response_mask) == 8
    prompt_ids = ids[:12]
    assert prompt_ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(prompt_ids[-2:]) == f"{ASSISTANT_TOKEN}\n"
    assert ids[-1] == tokenizer.eos_token_id
    assert format_prompt(tokenizer, long_prompt).endswith(tokenizer.decode(prompt_ids[1:]))
    assert long_response.startswith(tokenizer.decode(ids[12:-1]))


def test_tokenize_pairs_encodes_control_text_as_text(tokenizer) -> None:
    batch = tokenize_pairs(
        tokenizer, ["Say </s> now"], ["ok </s> then"], max_prompt_tokens=64, max_response_tokens=64
    )
    ids = batch["input_ids"][0].tolist()
    assert ids.count(tokenizer.eos_token_id) == 1
    assert ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_tokenize_pairs_rejects_length_mismatch(tokenizer) -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        tokenize_pairs(tokenizer, ["a", "b"], ["c"], max_prompt_tokens=8, max_response_tokens=8)


# ---------------------------------------------------------------------------
# Model building, saving and loading
# ---------------------------------------------------------------------------


def test_build_model_is_deterministic(tokenizer, model) -> None:
    same = build_tiny_model(MODEL_CONFIG, tokenizer, seed=0)
    other = build_tiny_model(MODEL_CONFIG, tokenizer, seed=1)
    assert model.config.vocab_size == len(tokenizer)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True))
    assert not torch.equal(model.model.embed_tokens.weight, other.model.embed_tokens.weight)


def test_save_load_gives_identical_logits(tokenizer, model, tmp_path: Path) -> None:
    save_policy(model, tokenizer, tmp_path / "policy")
    loaded_model, loaded_tokenizer = load_policy(tmp_path / "policy")
    assert not loaded_model.training
    assert next(loaded_model.parameters()).dtype == torch.float32
    batch = tokenize_pairs(
        loaded_tokenizer, ["Hi there"], ["Hello."], max_prompt_tokens=MAX_PROMPT_TOKENS, max_response_tokens=8
    )
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"]).logits
        actual = loaded_model(input_ids=batch["input_ids"]).logits
    assert torch.equal(actual, expected)


def test_load_policy_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_policy(tmp_path / "absent")


# ---------------------------------------------------------------------------
# Log-probabilities
# ---------------------------------------------------------------------------


def test_token_logps_matches_naive_reference(tokenizer, model, pairs) -> None:
    prompts = [prompt for prompt, _ in pairs[:6]]
    responses = [response for _, response in pairs[:6]]
    batch = tokenize_pairs(
        tokenizer,
        prompts,
        responses,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        max_response_tokens=MAX_RESPONSE_TOKENS,
    )
    with torch.no_grad():
        per_token = token_logps(model, batch["input_ids"], batch["attention_mask"])
    assert per_token.shape == (6, batch["input_ids"].shape[1] - 1)
    for row in range(6):
        length = int(batch["attention_mask"][row].sum())
        reference = naive_token_logps(model, batch["input_ids"][row, :length])
        torch.testing.assert_close(per_token[row, : length - 1], reference, rtol=0, atol=1e-5)


def test_sequence_logps_matches_naive_reference(tokenizer, model, pairs) -> None:
    prompts = [prompt for prompt, _ in pairs[:6]]
    responses = [response for _, response in pairs[:6]]
    batch = tokenize_pairs(
        tokenizer,
        prompts,
        responses,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        max_response_tokens=MAX_RESPONSE_TOKENS,
    )
    with torch.no_grad():
        total = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        mean = sequence_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"], average=True
        )
    reference = naive_response_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    )
    num_response_tokens = batch["response_mask"].sum(-1).float()

    assert total.shape == (6,)
    assert total.dtype == torch.float32
    torch.testing.assert_close(total, reference, **SUM_TOLERANCE)
    torch.testing.assert_close(mean, reference / num_response_tokens, rtol=0, atol=1e-5)


def test_sequence_logps_ignores_prompt_tokens(tokenizer, model) -> None:
    """Changing the response mask to cover part of the prompt changes the value by those tokens' log-probs."""
    batch = tokenize_pairs(
        tokenizer, ["Tell me a joke"], ["No."], max_prompt_tokens=64, max_response_tokens=8
    )
    widened = batch["response_mask"].clone()
    widened[0, 1:] = batch["attention_mask"][0, 1:]
    with torch.no_grad():
        response_only = sequence_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
        whole = sequence_logps(model, batch["input_ids"], batch["attention_mask"], widened)
    reference_response = naive_response_logps(
        model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
    )
    reference_whole = naive_response_logps(model, batch["input_ids"], batch["attention_mask"], widened)
    torch.testing.assert_close(response_only, reference_response, **SUM_TOLERANCE)
    torch.testing.assert_close(whole, reference_whole, **SUM_TOLERANCE)
    assert (whole < response_only).all()


def test_sequence_logps_padding_side_invariant(tokenizer, model, pairs) -> None:
    prompts = [pairs[0][0], "Hi"]
    responses = [pairs[0][1], "Hello"]
    right = tokenize_pairs(
        tokenizer,
        prompts,
        responses,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        max_response_tokens=MAX_RESPONSE_TOKENS,
    )
    # Move the padding of every row from the right end to the left end.
    left = {name: torch.zeros_like(tensor) for name, tensor in right.items()}
    left["input_ids"].fill_(tokenizer.pad_token_id)
    for row in range(len(prompts)):
        length = int(right["attention_mask"][row].sum())
        width = right["input_ids"].shape[1]
        for name in right:
            left[name][row, width - length :] = right[name][row, :length]
    assert (left["attention_mask"][:, 0] == 0).any()

    with torch.no_grad():
        right_logps = sequence_logps(
            model, right["input_ids"], right["attention_mask"], right["response_mask"]
        )
        left_logps = sequence_logps(model, left["input_ids"], left["attention_mask"], left["response_mask"])
    assert torch.isfinite(left_logps).all()
    torch.testing.assert_close(left_logps, right_logps, **SUM_TOLERANCE)


def test_sequence_logps_is_differentiable(tokenizer, model) -> None:
    batch = tokenize_pairs(tokenizer, ["Hi"], ["Hello"], max_prompt_tokens=16, max_response_tokens=8)
    model.zero_grad(set_to_none=True)
    value = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    value.sum().backward()
    gradient = model.model.embed_tokens.weight.grad
    model.zero_grad(set_to_none=True)
    assert value.requires_grad
    assert gradient is not None
    assert gradient.abs().sum() > 0


def test_batched_sequence_logps_matches_single_batch(tokenizer, model, pairs) -> None:
    prompts = [prompt for prompt, _ in pairs[:7]]
    responses = [response for _, response in pairs[:7]]
    batched = batched_sequence_logps(
        model,
        tokenizer,
        prompts,
        responses,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        max_response_tokens=MAX_RESPONSE_TOKENS,
        batch_size=3,
    )
    batch = tokenize_pairs(
        tokenizer,
        prompts,
        responses,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        max_response_tokens=MAX_RESPONSE_TOKENS,
    )
    with torch.no_grad():
        expected = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    assert batched.shape == (7,)
    assert not batched.requires_grad
    torch.testing.assert_close(batched, expected, **SUM_TOLERANCE)


# ---------------------------------------------------------------------------
# Warm-up data and SFT
# ---------------------------------------------------------------------------


def test_warmup_examples_excludes_alpaca_eval(records, data_dir: Path) -> None:
    instructions = {record["instruction"] for record in load_alpaca_eval_instructions(data_dir)}
    baseline_outputs = {record["output"] for record in load_alpaca_eval_baseline(data_dir)}
    planted_instruction = load_alpaca_eval_instructions(data_dir)[3]["instruction"]
    planted_output = load_alpaca_eval_baseline(data_dir)[7]["output"]
    planted = [
        {"prompt": "  " + planted_instruction.upper().replace(" ", "\n ") + " ", "chosen": "A fine answer."},
        {"prompt": "An original question?", "chosen": planted_output},
    ]
    mixed = planted + list(records[:20])

    examples = warmup_examples(
        mixed, num_examples=50, exclude_instructions=instructions, exclude_responses=baseline_outputs
    )
    prompts = [prompt for prompt, _ in examples]
    responses = [response for _, response in examples]
    assert len(examples) == 20
    assert planted[0]["prompt"] not in prompts
    assert planted_output not in responses
    assert examples[0] == (records[0]["prompt"], records[0]["chosen"])


def test_warmup_examples_takes_first_n(records) -> None:
    examples = warmup_examples(records, num_examples=5, exclude_instructions=set())
    assert examples == [(record["prompt"], record["chosen"]) for record in records[:5]]


def test_warmup_examples_reads_chat_messages() -> None:
    record = {
        "prompt": "Hi",
        "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    }
    assert warmup_examples([record], num_examples=1, exclude_instructions=set()) == [("Hi", "Hello!")]


def test_warmup_sft_lowers_loss_deterministically(tokenizer, pairs) -> None:
    examples = pairs[:48]
    config = WarmupConfig(
        num_examples=48,
        epochs=3,
        learning_rate=3e-3,
        batch_size=16,
        max_prompt_tokens=MAX_PROMPT_TOKENS,
        max_response_tokens=MAX_RESPONSE_TOKENS,
    )
    prompts = [prompt for prompt, _ in examples]
    responses = [response for _, response in examples]

    def mean_loss(policy) -> float:
        logps = batched_sequence_logps(
            policy,
            tokenizer,
            prompts,
            responses,
            max_prompt_tokens=MAX_PROMPT_TOKENS,
            max_response_tokens=MAX_RESPONSE_TOKENS,
            average=True,
        )
        return -logps.mean().item()

    first = build_tiny_model(MODEL_CONFIG, tokenizer, seed=3)
    second = build_tiny_model(MODEL_CONFIG, tokenizer, seed=3)
    loss_before = mean_loss(first)
    stats = warmup_sft(first, tokenizer, examples, config, seed=5)
    loss_after = mean_loss(first)
    warmup_sft(second, tokenizer, examples, config, seed=5)

    assert stats["steps"] == 9
    assert stats["tokens"] > 0
    assert stats["final_loss"] < stats["first_loss"]
    assert loss_after < loss_before - 0.5
    assert not first.training
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters(), strict=True))


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


def test_generate_returns_k_samples_per_prompt(tokenizer, model) -> None:
    sampling = SamplingConfig(num_samples=3, temperature=1.0, top_p=0.9, max_new_tokens=8, batch_size=2)
    prompts = ["Hi", "Name a fruit.", "Why is the sky blue?"]
    responses = generate(model, tokenizer, prompts, sampling, seed=0)
    assert len(responses) == len(prompts)
    for samples in responses:
        assert len(samples) == 3
        assert all(isinstance(text, str) for text in samples)
        assert not any("</s>" in text or "<pad>" in text for text in samples)
    single = generate(model, tokenizer, prompts, sampling, seed=0, num_samples=1)
    assert [len(samples) for samples in single] == [1, 1, 1]


def test_generate_is_reproducible_by_seed(tokenizer, model) -> None:
    sampling = SamplingConfig(num_samples=2, temperature=1.0, top_p=1.0, max_new_tokens=12, batch_size=2)
    prompts = ["Hi", "Name a fruit.", "Why is the sky blue?"]
    rng_state = torch.get_rng_state()
    first = generate(model, tokenizer, prompts, sampling, seed=11)
    second = generate(model, tokenizer, prompts, sampling, seed=11)
    other = generate(model, tokenizer, prompts, sampling, seed=12)
    assert first == second
    assert first != other
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_generate_stops_at_eos(tokenizer, pairs) -> None:
    """A policy trained to reply with one short word then </s> returns that word alone."""
    policy = build_tiny_model(MODEL_CONFIG, tokenizer, seed=0)
    examples = [(prompt, "Yes") for prompt, _ in pairs[:32]]
    config = WarmupConfig(
        num_examples=32,
        epochs=20,
        learning_rate=1e-2,
        batch_size=16,
        max_prompt_tokens=16,
        max_response_tokens=8,
    )
    warmup_sft(policy, tokenizer, examples, config, seed=0)
    sampling = SamplingConfig(num_samples=2, temperature=0.5, top_p=0.9, max_new_tokens=16, batch_size=4)
    prompts = [prompt for prompt, _ in examples[:4]]
    responses = generate(policy, tokenizer, prompts, sampling, seed=0, max_prompt_tokens=16)
    assert responses == [["Yes", "Yes"]] * 4
