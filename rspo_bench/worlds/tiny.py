"""The ``tiny`` world: a small Llama-style policy that trains and samples on a CPU.

Everything is built locally and nothing is downloaded. A byte-level BPE tokenizer is
trained on the caller's texts, a :class:`~transformers.LlamaForCausalLM` is built from a
config, and a supervised warm-up on UltraFeedback (prompt, chosen) pairs teaches it to
answer in the chat format before self-play starts.

Token layout of one training or scoring sequence::

    <s><|user|>\\n{instruction}\\n<|assistant|>\\n{response}</s>
    |-------------- prompt tokens --------------||- response -|

Prompts are tokenized through the chat template, so only the template writes control
tokens. Text such as a literal ``</s>`` inside an instruction or a response is encoded
as ordinary text. Prompts are truncated from the left, keeping ``<s>`` and the
generation prompt at the end. Responses are truncated from the right and always end
with ``</s>``, which counts towards the response token limit.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from rspo_bench.config import SamplingConfig, TinyModelConfig, WarmupConfig
from rspo_bench.logs import get_logger, progress, progress_bar

logger = get_logger(__name__)

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)

# Renders each turn as "<|role|>\n{content}\n" after one leading "<s>". An assistant turn
# ends with "</s>", which is the token the policy emits to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}"
    "{{ raise_exception('unsupported chat role ' + message['role'] + '; use system, user or assistant') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


# ---------------------------------------------------------------------------
# Tokenizer and chat format
# ---------------------------------------------------------------------------


def train_tokenizer(texts: list[str], *, vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and attach the chat template.

    The vocabulary always contains the 256 byte symbols and the 7 special tokens, so it
    has more than ``vocab_size`` entries when ``vocab_size`` is below 263, and fewer when
    the texts contain too few distinct pairs to learn that many merges. The tokenizer
    pads on the left, as batched generation requires. :func:`tokenize_pairs` pads on the
    right by itself.
    """
    if not texts:
        raise ValueError("cannot train a tokenizer on an empty list of texts; pass the training prompts")
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        # Byte-level BPE decodes to the exact text, and the clean-up would drop spaces before punctuation.
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    logger.info("trained byte-level BPE tokenizer on %d texts: %d tokens", len(texts), len(tokenizer))
    return tokenizer


def format_prompt(tokenizer: PreTrainedTokenizerFast, instruction: str) -> str:
    """Render one user instruction with the chat template, ending with the generation prompt."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )


Prompt = str | Sequence[Mapping[str, str]]


def as_conversation(prompt: Prompt) -> list[dict[str, str]]:
    """Return a prompt as chat messages: an instruction string becomes one user turn.

    A conversation (a list of ``{"role", "content"}`` messages) must end with a user
    turn, because the model answers it.
    """
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    messages = [dict(message) for message in prompt]
    if not messages or messages[-1].get("role") != "user":
        last = messages[-1].get("role") if messages else None
        raise ValueError(f"a conversation prompt must end with a user message, got last role {last!r}")
    return messages


def encode_prompts(
    tokenizer: PreTrainedTokenizerFast, instructions: Sequence[Prompt], max_prompt_tokens: int | None
) -> list[list[int]]:
    """Tokenize instructions or conversations through the chat template, truncating each from the left."""
    if not instructions:
        return []
    conversations = [as_conversation(prompt) for prompt in instructions]
    encoded = tokenizer.apply_chat_template(
        conversations,
        tokenize=True,
        add_generation_prompt=True,
        sanitize_control_tokens=True,
        return_dict=True,
    )
    prompt_ids = [list(ids) for ids in encoded["input_ids"]]
    if max_prompt_tokens is None:
        return prompt_ids
    if max_prompt_tokens < 2:
        raise ValueError(
            f"max_prompt_tokens must be at least 2 (the <s> token and one more), got {max_prompt_tokens}"
        )
    truncated = []
    for ids in prompt_ids:
        if len(ids) > max_prompt_tokens:
            # Keep <s> at position 0, where every training sequence has it.
            ids = ids[:1] + ids[len(ids) - (max_prompt_tokens - 1) :]
        truncated.append(ids)
    return truncated


def _encode_responses(
    tokenizer: PreTrainedTokenizerFast, responses: Sequence[str], max_response_tokens: int
) -> list[list[int]]:
    """Tokenize responses as plain text, truncate from the right and append ``</s>``."""
    if max_response_tokens < 1:
        raise ValueError(
            f"max_response_tokens must be at least 1 (the closing </s>), got {max_response_tokens}"
        )
    if not responses:
        return []
    encoded = tokenizer(list(responses), add_special_tokens=False, split_special_tokens=True)["input_ids"]
    eos_id = tokenizer.eos_token_id
    return [list(ids[: max_response_tokens - 1]) + [eos_id] for ids in encoded]


def _collate(
    prompt_ids: Sequence[list[int]], response_ids: Sequence[list[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Concatenate prompt and response ids and pad on the right."""
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    width = max(lengths)
    batch_size = len(lengths)
    input_ids = torch.full((batch_size, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
    response_mask = torch.zeros((batch_size, width), dtype=torch.long)
    for row, (prompt, response) in enumerate(zip(prompt_ids, response_ids, strict=True)):
        end = len(prompt) + len(response)
        input_ids[row, :end] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[row, :end] = 1
        response_mask[row, len(prompt) : end] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    responses: list[str],
    *,
    max_prompt_tokens: int,
    max_response_tokens: int,
) -> dict[str, torch.Tensor]:
    """Tokenize (instruction, response) pairs into right-padded ``input_ids``, ``attention_mask``
    and ``response_mask``.

    ``response_mask`` is 1 on the response tokens including the closing ``</s>`` and 0 on
    prompt and padding tokens. All three tensors are int64 of shape [B, T].
    """
    if len(prompts) != len(responses):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(responses)} responses; pass one response per prompt"
        )
    if not prompts:
        raise ValueError("cannot tokenize an empty list of pairs")
    prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    response_ids = _encode_responses(tokenizer, responses, max_response_tokens)
    return _collate(prompt_ids, response_ids, tokenizer.pad_token_id)


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside the block and restore the caller's RNG state afterwards."""
    devices = []
    if device.type == "cuda":
        devices.append(device.index if device.index is not None else torch.cuda.current_device())
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def build_tiny_model(
    config: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, *, seed: int
) -> LlamaForCausalLM:
    """Build a randomly initialised float32 Llama model. Equal seeds give equal weights."""
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(
            f"hidden_size {config.hidden_size} is not divisible by num_attention_heads "
            f"{config.num_attention_heads}; change one of them in the tiny model config"
        )
    llama_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with seeded_rng(seed, torch.device("cpu")):
        model = LlamaForCausalLM(llama_config)
    model.to(torch.float32)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(
        "built tiny Llama model: %d parameters, vocabulary %d, seed %d", num_parameters, len(tokenizer), seed
    )
    return model


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> None:
    """Save model weights (safetensors), config and tokenizer into the folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    logger.info("saved policy to %s", path)


def load_policy(path: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load a policy saved by :func:`save_policy` as float32, in eval mode, from local files only."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no saved policy in {path}: config.json not found; save one with save_policy first"
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model.eval()
    logger.info("loaded policy from %s", path)
    return model, tokenizer


# ---------------------------------------------------------------------------
# Warm-up SFT
# ---------------------------------------------------------------------------


def _normalize_text(text: str) -> str:
    return " ".join(text.casefold().split())


def _response_text(chosen: Any) -> str:
    """Return the response of an UltraFeedback ``chosen`` field: a string or a list of chat messages."""
    if isinstance(chosen, str):
        return chosen
    if isinstance(chosen, list):
        for message in reversed(chosen):
            if isinstance(message, Mapping) and message.get("role") == "assistant":
                return str(message.get("content", ""))
    raise ValueError(
        f"unsupported 'chosen' field of type {type(chosen).__name__}; expected a string or chat messages"
    )


def warmup_examples(
    records: Iterable[Mapping[str, Any]],
    *,
    num_examples: int,
    exclude_instructions: set[str],
    exclude_responses: set[str] | frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """Select the first ``num_examples`` (prompt, chosen) pairs from UltraFeedback records.

    A record is skipped when its prompt equals an excluded instruction, or its response
    equals an excluded response, after case folding and whitespace collapsing. Callers
    pass the AlpacaEval instructions and baseline outputs so that the warm-up never trains
    on evaluation data. Records with an empty prompt or response are skipped too.
    """
    excluded_prompts = {_normalize_text(text) for text in exclude_instructions}
    excluded_responses = {_normalize_text(text) for text in exclude_responses}
    examples: list[tuple[str, str]] = []
    num_records = 0
    prompt_matches = 0
    response_matches = 0
    empty = 0
    for index, record in enumerate(records):
        num_records += 1
        if "prompt" not in record or "chosen" not in record:
            raise ValueError(
                f"UltraFeedback record {index} lacks a 'prompt' or 'chosen' field: keys {sorted(record)}"
            )
        prompt = str(record["prompt"])
        response = _response_text(record["chosen"])
        if _normalize_text(prompt) in excluded_prompts:
            prompt_matches += 1
            continue
        if _normalize_text(response) in excluded_responses:
            response_matches += 1
            continue
        if not prompt.strip() or not response.strip():
            empty += 1
            continue
        if len(examples) < num_examples:
            examples.append((prompt, response))

    logger.info(
        "warm-up data: excluded %d of %d records (%d prompts match an excluded instruction, "
        "%d responses match an excluded response, %d empty); using %d examples",
        prompt_matches + response_matches + empty,
        num_records,
        prompt_matches,
        response_matches,
        empty,
        len(examples),
    )
    if len(examples) < num_examples:
        logger.warning(
            "warm-up data: requested %d examples but only %d are eligible", num_examples, len(examples)
        )
    return examples


def warmup_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    examples: list[tuple[str, str]],
    config: WarmupConfig,
    *,
    seed: int,
) -> dict[str, float]:
    """Fine-tune ``model`` in place on (instruction, response) pairs with AdamW.

    The loss is the token-mean cross-entropy over response tokens, including the closing
    ``</s>``, so prompt and padding labels are -100. The learning rate is constant. The
    batch order is a shuffle seeded by ``seed``, so equal seeds give equal weights on
    the same hardware. Returns ``first_loss`` (first batch), ``final_loss`` (token-mean
    over the last epoch), ``steps``, ``tokens`` (response tokens trained on, all
    epochs) and ``seconds``. The model is left in eval mode.
    """
    if not examples:
        raise ValueError("warm-up SFT needs at least one (prompt, response) example")
    device = model.device
    prompts = [prompt for prompt, _ in examples]
    responses = [response for _, response in examples]
    prompt_ids = encode_prompts(tokenizer, prompts, config.max_prompt_tokens)
    response_ids = _encode_responses(tokenizer, responses, config.max_response_tokens)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    logger.info(
        "warm-up SFT: %d examples, %d epochs, %d steps of batch %d, learning rate %g, seed %d",
        len(examples),
        config.epochs,
        total_steps,
        config.batch_size,
        config.learning_rate,
        seed,
    )

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    order_rng = random.Random(seed)
    first_loss = math.nan
    last_epoch_loss_sum = 0.0
    last_epoch_tokens = 0
    total_tokens = 0
    start = time.perf_counter()
    model.train()
    try:
        with (
            seeded_rng(seed, device),
            progress_bar(desc="warm-up SFT", total=total_steps, unit="step") as bar,
        ):
            for _ in range(config.epochs):
                order = list(range(len(examples)))
                order_rng.shuffle(order)
                last_epoch_loss_sum = 0.0
                last_epoch_tokens = 0
                for step_start in range(0, len(order), config.batch_size):
                    indices = order[step_start : step_start + config.batch_size]
                    batch = _collate(
                        [prompt_ids[i] for i in indices],
                        [response_ids[i] for i in indices],
                        tokenizer.pad_token_id,
                    )
                    labels = batch["input_ids"].masked_fill(batch["response_mask"] == 0, -100)
                    output = model(
                        input_ids=batch["input_ids"].to(device),
                        attention_mask=batch["attention_mask"].to(device),
                        labels=labels.to(device),
                    )
                    optimizer.zero_grad(set_to_none=True)
                    output.loss.backward()
                    optimizer.step()

                    loss = output.loss.item()
                    # The loss averages over this many labels, because the model shifts labels by one
                    # and position 0 is never a response token.
                    num_tokens = int(batch["response_mask"].sum())
                    if math.isnan(first_loss):
                        first_loss = loss
                    last_epoch_loss_sum += loss * num_tokens
                    last_epoch_tokens += num_tokens
                    total_tokens += num_tokens
                    bar.set_postfix(loss=f"{loss:.3f}")
                    bar.update(1)
    finally:
        model.eval()

    seconds = time.perf_counter() - start
    final_loss = last_epoch_loss_sum / last_epoch_tokens if last_epoch_tokens else math.nan
    logger.info(
        "warm-up SFT done in %.1f s: loss %.4f on the first batch, %.4f over the last epoch "
        "(%d response tokens)",
        seconds,
        first_loss,
        final_loss,
        total_tokens,
    )
    return {
        "first_loss": first_loss,
        "final_loss": final_loss,
        "steps": float(total_steps),
        "tokens": float(total_tokens),
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------


def left_pad(sequences: Sequence[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into ``input_ids`` and ``attention_mask`` tensors of one width."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids, attention_mask


def decoding_arguments(temperature: float, top_p: float, num_samples: int) -> dict[str, Any]:
    """Return the ``generate`` arguments of a temperature: 0 decodes greedily, above 0 samples.

    Sampling uses nucleus (top-p) filtering with no top-k cut. Greedy decoding gives one
    response per prompt, so it rejects ``num_samples`` above 1.
    """
    if temperature == 0:
        if num_samples != 1:
            raise ValueError(
                f"temperature 0 decodes greedily, which gives one response per prompt, but {num_samples} "
                f"were requested; set num_samples to 1 or the temperature above 0"
            )
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[Prompt],
    sampling: SamplingConfig,
    *,
    seed: int,
    num_samples: int | None = None,
    max_prompt_tokens: int | None = None,
) -> list[list[str]]:
    """Sample ``num_samples`` (default ``sampling.num_samples``) responses per instruction or conversation.

    Each batch contains ``sampling.batch_size`` prompts, so ``batch_size * num_samples``
    sequences, left-padded. Temperature 0 decodes greedily; otherwise sampling uses
    nucleus (top-p) filtering with no top-k cut (see :func:`decoding_arguments`). A
    response ends before the first ``</s>`` or after ``sampling.max_new_tokens`` tokens,
    and special tokens are removed from the text.
    Each batch gets its own seed drawn from ``seed``, so a call with the same seed,
    prompts, batch size and hardware returns the same responses. With
    ``max_prompt_tokens`` set, prompts are truncated from the left as in
    :func:`tokenize_pairs`.

    NOTE: the returned text does not record whether a sample ended with ``</s>`` or was
    cut at ``max_new_tokens``. :func:`tokenize_pairs` appends ``</s>`` to both kinds, so
    log-probabilities of cut samples include a ``</s>`` that the policy did not sample.
    """
    samples_per_prompt = sampling.num_samples if num_samples is None else num_samples
    if samples_per_prompt < 1:
        raise ValueError(f"num_samples must be at least 1, got {samples_per_prompt}")
    if not prompts:
        return []
    device = model.device
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id
    prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None:
        num_too_long = sum(len(ids) + sampling.max_new_tokens > max_positions for ids in prompt_ids)
        if num_too_long:
            logger.warning(
                "%d of %d prompts plus %d new tokens exceed the model's %d positions; "
                "pass max_prompt_tokens to truncate them",
                num_too_long,
                len(prompts),
                sampling.max_new_tokens,
                max_positions,
            )
    batch_starts = range(0, len(prompts), sampling.batch_size)
    seed_rng = random.Random(seed)
    decoding = decoding_arguments(sampling.temperature, sampling.top_p, samples_per_prompt)
    logger.info(
        "sampling %d responses for each of %d prompts (temperature %g, top-p %g, at most %d new tokens)",
        samples_per_prompt,
        len(prompts),
        sampling.temperature,
        sampling.top_p,
        sampling.max_new_tokens,
    )

    responses: list[list[str]] = []
    num_unfinished = 0
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        for batch_start in progress(batch_starts, desc="sampling", total=len(batch_starts), unit="batch"):
            batch_prompt_ids = prompt_ids[batch_start : batch_start + sampling.batch_size]
            input_ids, attention_mask = left_pad(batch_prompt_ids, pad_id)
            batch_seed = seed_rng.getrandbits(63)
            with torch.inference_mode(), seeded_rng(batch_seed, device):
                output_ids = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    **decoding,
                    max_new_tokens=sampling.max_new_tokens,
                    num_return_sequences=samples_per_prompt,
                    bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=eos_id,
                    pad_token_id=pad_id,
                )
            new_ids = output_ids[:, input_ids.shape[1] :].cpu().tolist()
            texts = []
            for ids in new_ids:
                if eos_id in ids:
                    ids = ids[: ids.index(eos_id)]
                else:
                    num_unfinished += 1
                texts.append(tokenizer.decode(ids, skip_special_tokens=True))
            # generate() returns the samples of one prompt next to each other.
            for row in range(len(batch_prompt_ids)):
                responses.append(texts[row * samples_per_prompt : (row + 1) * samples_per_prompt])
    finally:
        model.train(was_training)

    total = len(prompts) * samples_per_prompt
    logger.info(
        "sampled %d responses in %.1f s; %d of them reached %d new tokens without </s>",
        total,
        time.perf_counter() - start,
        num_unfinished,
        sampling.max_new_tokens,
    )
    return responses


# ---------------------------------------------------------------------------
# Sequence log-probabilities
# ---------------------------------------------------------------------------


def _target_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return log softmax(logits)[target] per position, as float32, without a full log-softmax tensor."""
    if logits.dtype in (torch.float32, torch.float64):
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    # Half-precision logits: upcast one sequence at a time so that only one float32 copy of [T, V] exists.
    rows = []
    for row_logits, row_targets in zip(logits, targets, strict=True):
        row_logits = row_logits.float()
        rows.append(row_logits.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1) - row_logits.logsumexp(-1))
    return torch.stack(rows)


def token_logps(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Compute log π(input_ids[:, t + 1] | input_ids[:, : t + 1]) for every position t.

    Inputs are [B, T] tensors on the model's device and may be padded on either side,
    because position ids are computed from ``attention_mask``. Returns a float32 tensor of
    shape [B, T - 1] whose entries at padding positions are arbitrary and may be non-finite.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
    return _target_logps(logits[:, :-1], input_ids[:, 1:]).float()


def sequence_logps(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    average: bool = False,
) -> torch.Tensor:
    """Compute the sum (or, with ``average``, the mean) of log π(token | prefix) over response tokens.

    Inputs are [B, T] tensors as :func:`tokenize_pairs` returns them, on the model's
    device, padded on either side. The token at position 0 has no prefix, so
    ``response_mask[:, 0]`` is ignored. Returns a float32 tensor of shape [B] that keeps
    the autograd graph when gradients are enabled.

    A :class:`~transformers.LlamaForCausalLM` runs in up to :data:`MAX_LENGTH_GROUPS`
    forward passes over rows of similar length, and only response positions go through its
    LM head. Other models get the full logits of every position from :func:`token_logps`.
    Both ways give the same values up to float rounding.
    """
    mask = response_mask[:, 1:].bool()
    # A model wrapped by DistributedDataParallel or torch.compile is not a LlamaForCausalLM, so it
    # takes the full-logits path, which calls the wrapper and so keeps DDP's gradient hooks.
    if isinstance(model, LlamaForCausalLM):
        totals = _response_logps_from_hidden_states(model, input_ids, attention_mask, response_mask)
    else:
        per_token = token_logps(model, input_ids, attention_mask)
        # Use torch.where, not a product with the mask, because padded positions may be NaN and NaN * 0 is NaN.
        per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
        totals = per_token.sum(-1)
    if average:
        return totals / mask.sum(-1).clamp(min=1)
    return totals


# Upper bound on the forward passes of one sequence_logps call on a Llama model. More groups
# waste less compute on padding but each adds a forward pass. benchmarks/trainer_throughput.py
# measures 1 against 4 groups.
MAX_LENGTH_GROUPS = 4


def _length_groups(attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, int, int]]:
    """Split rows into at most :data:`MAX_LENGTH_GROUPS` groups of similar length.

    Returns (row indices, first column, end column) per group. The columns span every
    non-padding token of the group's rows, whichever side they are padded on. Groups whose
    span is shorter than two tokens contain no scored position and are left out.
    """
    batch_size, width = attention_mask.shape
    if batch_size == 0:
        return []
    columns = torch.arange(width, device=attention_mask.device)
    real = attention_mask.bool()
    first = torch.where(real, columns, width).amin(-1)
    last = torch.where(real, columns, -1).amax(-1)
    lengths = (last - first + 1).clamp(min=0)
    order = torch.argsort(lengths, descending=True, stable=True)
    groups = []
    for rows in order.chunk(min(MAX_LENGTH_GROUPS, batch_size)):
        start = int(first[rows].min())
        end = int(last[rows].max()) + 1
        if end - start >= 2:
            groups.append((rows, start, end))
    return groups


def _flat_target_logps(logits: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Return float32 log softmax(logits)[target] for [N, V] logits, upcasting at most ``chunk_size`` rows at a time."""
    if logits.dtype in (torch.float32, torch.float64) or logits.shape[0] == 0:
        return _target_logps(logits.float(), targets)
    parts = [
        _target_logps(part.unsqueeze(0), part_targets.unsqueeze(0)).squeeze(0)
        for part, part_targets in zip(logits.split(chunk_size), targets.split(chunk_size), strict=True)
    ]
    return torch.cat(parts)


def _response_logps_from_hidden_states(
    model: LlamaForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Sum log π over response tokens, running the LM head on response positions only.

    ``LlamaForCausalLM`` computes its logits as ``lm_head(last hidden state)`` with no
    scaling, so projecting only the hidden states before response tokens gives the same
    values as :func:`token_logps` while skipping the [B, T, V] logits of prompt and padding
    positions. Rows are cut to their length group's span, which removes most padding.
    """
    token_rows = []
    token_values = []
    for rows, start, end in _length_groups(attention_mask):
        group_ids = input_ids[rows, start:end]
        group_attention = attention_mask[rows, start:end]
        position_ids = (group_attention.long().cumsum(-1) - 1).clamp(min=0)
        hidden = model.model(
            input_ids=group_ids, attention_mask=group_attention, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        # Hidden state t predicts token t + 1, so response token t + 1 is scored from hidden[:, t].
        scored = response_mask[rows, start + 1 : end].bool()
        logits = model.lm_head(hidden[:, :-1][scored])
        token_values.append(_flat_target_logps(logits, group_ids[:, 1:][scored], chunk_size=end - start))
        token_rows.append(rows.unsqueeze(1).expand_as(scored)[scored])
    totals = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    if not token_values:
        return totals
    return totals.index_add(0, torch.cat(token_rows), torch.cat(token_values))


def batched_sequence_logps(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[str],
    responses: list[str],
    *,
    max_prompt_tokens: int,
    max_response_tokens: int,
    batch_size: int = 32,
    average: bool = False,
) -> torch.Tensor:
    """Compute :func:`sequence_logps` of (instruction, response) pairs without gradients.

    Pairs are batched by length to reduce padding. Returns a float32 CPU tensor of shape
    [N] in the order of the inputs.
    """
    if len(prompts) != len(responses):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(responses)} responses; pass one response per prompt"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not prompts:
        return torch.zeros(0, dtype=torch.float32)
    device = model.device
    prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    response_ids = _encode_responses(tokenizer, responses, max_response_tokens)
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]) + len(response_ids[i]), reverse=True)
    batch_starts = range(0, len(order), batch_size)

    result = torch.zeros(len(prompts), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            batches = progress(batch_starts, desc="log-probs", total=len(batch_starts), unit="batch")
            for batch_start in batches:
                indices = order[batch_start : batch_start + batch_size]
                batch = _collate(
                    [prompt_ids[i] for i in indices],
                    [response_ids[i] for i in indices],
                    tokenizer.pad_token_id,
                )
                values = sequence_logps(
                    model,
                    batch["input_ids"].to(device),
                    batch["attention_mask"].to(device),
                    batch["response_mask"].to(device),
                    average=average,
                )
                result[torch.tensor(indices)] = values.float().cpu()
    finally:
        model.train(was_training)
    return result
