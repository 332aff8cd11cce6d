"""Tests of the hf world on tiny Llama and Mistral checkpoints built from configs.

Each checkpoint is randomly initialised, saved with a chat template to a temporary
folder and loaded back through ``from_pretrained``, the path real checkpoints take.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from rspo_bench.config import HFModelConfig, SamplingConfig, TrainingConfig
from rspo_bench.methods import RegularizerTerm, RSPOLoss, SoftSPPOLoss, build_regularizer
from rspo_bench.trainer import PairRecord, train_iteration
from rspo_bench.worlds import hf, tiny

# A Mistral-style template: "[INST] ... [/INST]" around user turns, eos after assistant turns.
MISTRAL_STYLE_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)

TEXTS = [
    "Write a short poem about the sea and the wind.",
    "Explain how photosynthesis turns light into chemical energy.",
    "List three prime numbers larger than ten: 11, 13 and 17.",
    "The capital of France is Paris, on the river Seine.",
    "[INST] Summarise the plot of a mystery novel. [/INST]",
] * 8
PROMPTS = ["Write a poem about the sea.", "What is the capital of France?", "Name three prime numbers."]


def build_checkpoint(folder: Path, kind: str, *, chat_template: str | None = MISTRAL_STYLE_TEMPLATE) -> Path:
    """Save a randomly initialised tiny Llama or Mistral model and its tokenizer into ``folder``."""
    tokenizer = tiny.train_tokenizer(TEXTS, vocab_size=320)
    tokenizer.chat_template = chat_template
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = MistralForCausalLM(MistralConfig(sliding_window=64, **common))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["llama", "mistral"])
def checkpoint(request, tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


def hf_config(path: Path, **overrides) -> HFModelConfig:
    return HFModelConfig(name_or_path=str(path), **overrides)


SAMPLING = SamplingConfig(num_samples=3, temperature=0.7, top_p=0.9, max_new_tokens=6, batch_size=2)


# Loading ----------------------------------------------------------------------------------


def test_load_policy_cpu_uses_float32(checkpoint, caplog):
    with caplog.at_level(logging.INFO, logger="rspo_bench"):
        model, tokenizer = hf.load_policy(hf_config(checkpoint, dtype="bfloat16"), device="cpu")
    assert model.dtype == torch.float32
    assert any("float32 instead of bfloat16" in record.getMessage() for record in caplog.records)
    assert not model.training
    assert tokenizer.padding_side == "left"
    assert tokenizer.chat_template == MISTRAL_STYLE_TEMPLATE


def test_load_policy_renders_own_template(checkpoint):
    _, tokenizer = hf.load_policy(hf_config(checkpoint), device="cpu")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<s>[INST] Hi [/INST]"


def test_missing_chat_template_rejected(tmp_path):
    folder = build_checkpoint(tmp_path / "plain", "llama", chat_template=None)
    with pytest.raises(hf.MissingChatTemplateError, match="has no chat template"):
        hf.load_policy(hf_config(folder), device="cpu")


def test_missing_pad_token_uses_eos(tmp_path):
    folder = build_checkpoint(tmp_path / "nopad", "llama")
    config_path = folder / "tokenizer_config.json"
    text = config_path.read_text()
    config_path.write_text(text.replace('"pad_token": "<pad>"', '"pad_token": null'))
    tokenizer = hf.load_tokenizer(folder)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_training_mode_enables_checkpointing(checkpoint):
    model, _ = hf.load_policy(hf_config(checkpoint, gradient_checkpointing=True), training=True)
    assert model.training
    assert model.is_activation_checkpointing
    assert model.config.use_cache is False
    assert model.device.type == "cpu"


def test_lora_without_peft_names_install(checkpoint):
    if importlib.util.find_spec("peft") is not None:
        model, _ = hf.load_policy(hf_config(checkpoint, lora_rank=2), training=True)
        trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
        assert trainable and all("lora" in name for name in trainable)
        return
    with pytest.raises(ImportError, match="pip install peft"):
        hf.load_policy(hf_config(checkpoint, lora_rank=2), training=True)


def test_save_policy_round_trip(checkpoint, tmp_path):
    model, tokenizer = hf.load_policy(hf_config(checkpoint), device="cpu")
    hf.save_policy(model, tokenizer, tmp_path / "saved")
    reloaded, reloaded_tokenizer = hf.load_policy(
        hf_config(checkpoint), name_or_path=tmp_path / "saved", device="cpu"
    )
    input_ids = torch.tensor([[1, 5, 9, 12, 7]])
    with torch.no_grad():
        assert torch.equal(model(input_ids).logits, reloaded(input_ids).logits)
    assert reloaded_tokenizer.chat_template == tokenizer.chat_template


def test_save_policy_with_accelerator(checkpoint, tmp_path):
    from accelerate import Accelerator

    model, tokenizer = hf.load_policy(hf_config(checkpoint), training=True)
    accelerator = Accelerator(cpu=True)
    prepared = accelerator.prepare(model)
    hf.save_policy(prepared, tokenizer, tmp_path / "saved", accelerator=accelerator)
    reloaded, _ = hf.load_policy(hf_config(checkpoint), name_or_path=tmp_path / "saved", device="cpu")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name


# Sampling ---------------------------------------------------------------------------------


def test_sampling_key_ignores_batch_size():
    small = SamplingConfig(num_samples=5, temperature=0.7, top_p=0.9, max_new_tokens=2048, batch_size=4)
    large = small.model_copy(update={"batch_size": 64})
    assert hf.sampling_key(small, 7) == hf.sampling_key(large, 7)
    assert hf.sampling_key(small, 7) != hf.sampling_key(small, 8)
    key = hf.sampling_key(small, 7)
    assert (key["num_samples"], key["temperature"], key["top_p"], key["max_new_tokens"]) == (
        5,
        0.7,
        0.9,
        2048,
    )
    assert key["top_k"] == 0


def test_generate_shapes_and_seed(checkpoint):
    model, tokenizer = hf.load_policy(hf_config(checkpoint), device="cpu")
    first = hf.generate(model, tokenizer, PROMPTS, SAMPLING, seed=3)
    again = hf.generate(model, tokenizer, PROMPTS, SAMPLING, seed=3)
    other = hf.generate(model, tokenizer, PROMPTS, SAMPLING, seed=4)
    assert [len(group) for group in first] == [3, 3, 3]
    assert all(isinstance(text, str) for group in first for text in group)
    assert first == again
    assert first != other


def test_generate_respects_max_new_tokens(checkpoint):
    model, tokenizer = hf.load_policy(hf_config(checkpoint), device="cpu")
    stats: dict[str, float] = {}
    responses = hf.generate(model, tokenizer, PROMPTS[:2], SAMPLING, seed=0, num_samples=4, stats=stats)
    assert [len(group) for group in responses] == [4, 4]
    assert 0 < stats["new_tokens"] <= 2 * 4 * SAMPLING.max_new_tokens
    # A random model rarely samples </s>, so most responses run to the limit.
    assert stats["unfinished"] >= 1
    assert stats["seconds"] > 0


def test_generate_stops_at_eos(checkpoint):
    model, tokenizer = hf.load_policy(hf_config(checkpoint), device="cpu")
    # Make </s> by far the most likely next token, so every sample stops at once.
    boost = torch.zeros(model.config.vocab_size)
    boost[tokenizer.eos_token_id] = 1e4
    handle = model.lm_head.register_forward_hook(lambda module, inputs, output: output + boost)
    try:
        responses = hf.generate(model, tokenizer, PROMPTS, SAMPLING, seed=0)
    finally:
        handle.remove()
    assert responses == [["", "", ""]] * len(PROMPTS)


def test_decode_completion_cuts_at_stop():
    tokenizer = tiny.train_tokenizer(TEXTS, vocab_size=300)
    ids = tokenizer("Paris is", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    assert hf.decode_completion(tokenizer, [*ids, eos, pad, pad], [eos]) == ("Paris is", True, len(ids) + 1)
    assert hf.decode_completion(tokenizer, ids, [eos]) == ("Paris is", False, len(ids))


def test_stop_token_ids_merge_generation_config():
    tokenizer = tiny.train_tokenizer(TEXTS, vocab_size=300)
    config = types.SimpleNamespace(eos_token_id=[tokenizer.eos_token_id, 7])
    assert hf.stop_token_ids(tokenizer, config) == [tokenizer.eos_token_id, 7]
    assert hf.stop_token_ids(tokenizer, None) == [tokenizer.eos_token_id]


def test_vllm_missing_names_extra(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match=r"pip install 'rspo-bench\[vllm\]'"):
        hf.VLLMGenerator(hf_config(checkpoint, generation_backend="vllm"))


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeLLM:
    """Records the engine arguments and returns prompt tokens 1 and 2 plus </s> as every completion."""

    instances: list[FakeLLM] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.requests = None
        FakeLLM.instances.append(self)

    def generate(self, prompts, params, use_tqdm=True):
        self.requests = (prompts, params)
        eos = self.eos_token_id
        outputs = []
        for prompt, param in zip(prompts, params, strict=True):
            completions = [
                types.SimpleNamespace(token_ids=[*prompt["prompt_token_ids"][1:3], eos])
                for _ in range(param.kwargs["n"])
            ]
            outputs.append(types.SimpleNamespace(outputs=completions))
        return outputs


def test_vllm_backend_uses_shared_inputs(checkpoint, monkeypatch):
    fake = types.ModuleType("vllm")
    fake.LLM = FakeLLM
    fake.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", fake)
    config = hf_config(checkpoint, generation_backend="vllm", revision=None, dtype="bfloat16")
    generator = hf.VLLMGenerator(config)
    engine = FakeLLM.instances[-1]
    engine.eos_token_id = generator.tokenizer.eos_token_id
    responses = generator.generate(PROMPTS, SAMPLING, seed=11, max_prompt_tokens=64)

    assert engine.kwargs["model"] == str(checkpoint)
    assert engine.kwargs["dtype"] == "bfloat16"
    prompts, params = engine.requests
    expected_ids = tiny.encode_prompts(generator.tokenizer, PROMPTS, 64)
    assert [prompt["prompt_token_ids"] for prompt in prompts] == expected_ids
    key = hf.sampling_key(SAMPLING, 11)
    for param, request_seed in zip(params, hf.prompt_seeds(11, len(PROMPTS)), strict=True):
        assert param.kwargs["n"] == key["num_samples"]
        assert param.kwargs["temperature"] == key["temperature"]
        assert param.kwargs["top_p"] == key["top_p"]
        assert param.kwargs["max_tokens"] == key["max_new_tokens"]
        assert param.kwargs["repetition_penalty"] == key["repetition_penalty"]
        assert param.kwargs["stop_token_ids"] == [generator.tokenizer.eos_token_id]
        assert param.kwargs["seed"] == request_seed
    expected_texts = [generator.tokenizer.decode(ids[1:3], skip_special_tokens=True) for ids in expected_ids]
    assert responses == [[text] * 3 for text in expected_texts]


def test_transformers_generation_config_from_key():
    key = hf.sampling_key(SAMPLING, 0)
    config = hf.transformers_generation_config(key, [2, 9], pad_token_id=0)
    assert config.do_sample is True
    assert (config.temperature, config.top_p, config.top_k) == (0.7, 0.9, 0)
    assert config.max_new_tokens == 6
    assert config.num_return_sequences == 3
    assert config.eos_token_id == [2, 9]


# Log-probabilities and training -----------------------------------------------------------


def test_sequence_logps_match_unpadded(checkpoint):
    model, tokenizer = hf.load_policy(hf_config(checkpoint), device="cpu")
    prompts = ["Short?", "A much longer instruction about the sea, the wind and the sky?"]
    responses = ["Yes, it is.", "No"]
    batch = hf.tokenize_pairs(tokenizer, prompts, responses, max_prompt_tokens=64, max_response_tokens=16)
    with torch.no_grad():
        batched = hf.sequence_logps(
            model, batch["input_ids"], batch["attention_mask"], batch["response_mask"]
        )
        for row in range(2):
            length = int(batch["attention_mask"][row].sum())
            ids = batch["input_ids"][row : row + 1, :length]
            logits = model(ids).logits.log_softmax(-1)
            token_logps = logits[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
            mask = batch["response_mask"][row, 1:length].bool()
            assert batched[row].item() == pytest.approx(token_logps[mask].sum().item(), abs=1e-4)


def test_train_iteration_updates_hf_policy(checkpoint):
    model, tokenizer = hf.load_policy(hf_config(checkpoint, gradient_checkpointing=True), training=True)
    before = [parameter.detach().clone() for parameter in model.parameters()]
    records = [
        PairRecord(
            prompt=prompt,
            chosen="A good answer.",
            rejected="bad",
            chosen_win_prob=0.8,
            rejected_win_prob=0.2,
            chosen_prev_logp=-20.0,
            rejected_prev_logp=-10.0,
            chosen_ref_logp=-20.0,
            rejected_ref_logp=-10.0,
        )
        for prompt in PROMPTS
    ]
    loss = RSPOLoss(
        base=SoftSPPOLoss(beta=0.1),
        terms=[RegularizerTerm(build_regularizer("reverse_kl", {}), 1.0)],
        coef=0.1,
    )
    config = TrainingConfig(batch_size=3, learning_rate=1e-3, max_prompt_tokens=32, max_response_tokens=16)
    metrics = train_iteration(model, tokenizer, records, loss, config, seed=0, iteration=1)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    changed = sum(not torch.equal(old, new) for old, new in zip(before, model.parameters(), strict=True))
    assert changed > 0
