"""The ``hf`` world: any Hugging Face causal LM as the policy.

A checkpoint is a local folder or a hub id, loaded through the ordinary
``from_pretrained`` path. Prompts are rendered with the checkpoint's own chat
template (``tokenizer.apply_chat_template``). No template is chosen by model name,
so a checkpoint without one is rejected.

Training and scoring sequences use the same layout as the tiny world: the chat
template with the generation prompt, then the response tokens and the
tokenizer's end-of-sequence token. :func:`tokenize_pairs`,
:func:`sequence_logps` and :func:`batched_sequence_logps` are the tiny world's
functions, which work with any causal LM and its tokenizer.

Two generation backends share one prompt encoding and one set of sampling
parameters, built by :func:`sampling_key`:

- ``transformers``: batched ``model.generate`` with left padding;
- ``vllm``: :class:`VLLMGenerator`, available when vllm is installed
  (``pip install 'rspo-bench[vllm]'``).

Given the same sampling settings and seed, both backends produce the same
:func:`sampling_key`, so a sample cache keyed by it is shared between them. The
samples themselves differ between backends, because their random streams differ.
"""

from __future__ import annotations

import importlib
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from rspo_bench.config import HFModelConfig, SamplingConfig
from rspo_bench.logs import get_logger, progress
from rspo_bench.worlds import tiny

# The tiny world's prompt encoding is shared so that generation, training and scoring
# see the same prompt token ids in both worlds and both generation backends.
from rspo_bench.worlds.tiny import Prompt, decoding_arguments, encode_prompts, left_pad, seeded_rng

logger = get_logger(__name__)

tokenize_pairs = tiny.tokenize_pairs
sequence_logps = tiny.sequence_logps
batched_sequence_logps = tiny.batched_sequence_logps

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAMPLING_KEY_FORMAT = 1
VLLM_INSTALL_HINT = "pip install 'rspo-bench[vllm]'"


class MissingChatTemplateError(ValueError):
    """The checkpoint's tokenizer has no chat template, so prompts cannot be rendered."""


# ---------------------------------------------------------------------------
# Devices and dtypes
# ---------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device``, or ``cuda:0`` when CUDA is available and ``cpu`` otherwise."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Return the torch dtype of a config dtype name; half precision becomes float32 on a CPU."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {sorted(DTYPES)}")
    dtype = DTYPES[name]
    if device.type == "cpu" and dtype != torch.float32:
        logger.info(
            "device is the CPU: loading in float32 instead of %s, because CPU kernels for half "
            "precision are slow and some are missing",
            name,
        )
        return torch.float32
    return dtype


# ---------------------------------------------------------------------------
# Loading and saving
# ---------------------------------------------------------------------------


def load_tokenizer(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    local_files_only: bool = False,
) -> PreTrainedTokenizerBase:
    """Load a checkpoint's tokenizer, require its chat template and set left padding.

    A tokenizer without a padding token gets its end-of-sequence token as padding. The
    attention mask excludes padding everywhere, so the choice of id does not change results.
    """
    tokenizer = AutoTokenizer.from_pretrained(
        str(name_or_path),
        revision=revision,
        trust_remote_code=trust_remote_code,
        local_files_only=local_files_only,
    )
    if not tokenizer.chat_template:
        raise MissingChatTemplateError(
            f"checkpoint {name_or_path} has no chat template (tokenizer.chat_template is empty). Self-play "
            f"renders prompts only with the checkpoint's own template: use an instruct or chat checkpoint, "
            f"or add a 'chat_template' to its tokenizer_config.json or a chat_template.jinja file."
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"checkpoint {name_or_path}: the tokenizer has no eos_token, which ends every training "
            f"response; set eos_token in its tokenizer_config.json"
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info(
            "tokenizer of %s has no padding token; padding with %r", name_or_path, tokenizer.eos_token
        )
    tokenizer.padding_side = "left"
    return tokenizer


def load_policy(
    config: HFModelConfig,
    *,
    name_or_path: str | Path | None = None,
    device: str | torch.device | None = None,
    training: bool = False,
    local_files_only: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the policy of ``config`` (or the checkpoint ``name_or_path``) and its tokenizer.

    ``config.revision`` applies only to ``config.name_or_path``; a saved iterate in
    ``name_or_path`` is a local folder without revisions. For inference the model is
    placed on ``device`` (default: CUDA when available) in eval mode. With ``training``
    it stays on the CPU unless ``device`` is given, because ``accelerate`` places it,
    and gradient checkpointing and LoRA adapters are applied as configured. Under
    DeepSpeed ZeRO-3, create the ``Accelerator`` before calling this, so that the
    weights are partitioned while they load.
    """
    source = str(name_or_path or config.name_or_path)
    revision = config.revision if name_or_path is None else None
    target = resolve_device(device)
    dtype = resolve_dtype(config.dtype, target)
    tokenizer = load_tokenizer(
        source,
        revision=revision,
        trust_remote_code=config.trust_remote_code,
        local_files_only=local_files_only,
    )
    place_now = device is not None or not training
    model = AutoModelForCausalLM.from_pretrained(
        source,
        revision=revision,
        dtype=dtype,
        trust_remote_code=config.trust_remote_code,
        local_files_only=local_files_only,
        device_map={"": str(target)} if place_now and target.type == "cuda" else None,
    )
    if place_now and target.type != "cuda":
        model.to(target)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    logger.info(
        "loaded %s%s: %.1f M parameters, %s, %s",
        source,
        f" at revision {revision}" if revision else "",
        num_parameters / 1e6,
        str(dtype).removeprefix("torch."),
        "training" if training else f"inference on {target}",
    )

    if not training:
        model.eval()
        return model, tokenizer

    if dtype != torch.float32 and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        logger.warning(
            "training in pure %s without DeepSpeed: there are no float32 master weights, so updates "
            "smaller than the dtype's resolution (about 0.4%% of a weight in bfloat16) are rounded away. "
            "At learning rates near 5e-7 use DeepSpeed (experiments/accelerate/zero3.yaml) or dtype float32.",
            config.dtype,
        )
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.lora_rank is not None:
        model = apply_lora(model, config.lora_rank)
    model.train()
    return model, tokenizer


def apply_lora(model: PreTrainedModel, rank: int, *, alpha: float | None = None, dropout: float = 0.0):
    """Wrap ``model`` with LoRA adapters of ``rank`` on every linear layer; only the adapters train.

    ``alpha`` defaults to ``2 * rank``. Raises ImportError when peft is not installed.
    """
    try:
        peft = importlib.import_module("peft")
    except ImportError as error:
        raise ImportError(
            f"world.hf.lora_rank is {rank}, and LoRA needs the peft package, which is not installed. "
            f"Install it with 'pip install peft', or set world.hf.lora_rank to null to train all weights."
        ) from error
    lora_config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(model, lora_config)
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    logger.info("LoRA rank %d: %d trainable parameters", rank, trainable)
    return model


def save_policy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    *,
    accelerator: Any | None = None,
) -> None:
    """Save a policy as a plain checkpoint folder (safetensors, config, tokenizer).

    LoRA adapters are merged into the weights first, so every saved iterate loads
    without peft. With an ``accelerator``, pass the prepared model: its full state
    dict is gathered and only the main process writes. Under ZeRO-3 every process
    must call this, because each process contains only its shard of the weights.
    """
    path = Path(path)
    state_dict = None
    if accelerator is not None:
        state_dict = _full_state_dict(model, accelerator)
        model = accelerator.unwrap_model(model)
        if not accelerator.is_main_process:
            return
    if hasattr(model, "merge_and_unload"):
        # NOTE: merging needs the full adapter weights on one process; it is untested under ZeRO-3.
        model = model.merge_and_unload()
        state_dict = None
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, state_dict=state_dict)
    tokenizer.save_pretrained(path)
    logger.info("saved policy to %s", path)


def _full_state_dict(model: torch.nn.Module, accelerator: Any) -> dict[str, torch.Tensor] | None:
    """Return the unsharded state dict of a prepared model on the main process."""
    from accelerate.utils import DistributedType

    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if deepspeed and model.zero_optimization_partition_weights():
        # The engine gathers one layer at a time onto rank 0, in the weights' own dtype, and returns
        # None on the other ranks. accelerate 1.16's get_state_dict calls the same DeepSpeed 0.19.8
        # method but raises when zero3_save_16bit_model is false in the accelerate config.
        return model._zero3_consolidated_16bit_state_dict()
    return accelerator.get_state_dict(model)


# ---------------------------------------------------------------------------
# Sampling parameters shared by both backends
# ---------------------------------------------------------------------------


def sampling_key(sampling: SamplingConfig, seed: int) -> dict[str, Any]:
    """Return the sampling parameters and seed that define a set of samples, for cache keys.

    Both backends build their sampling parameters from this dictionary only. Top-k
    filtering is off (``top_k`` 0) and there is no repetition penalty. A sample ends at
    an end-of-sequence token of the tokenizer or the generation config, or after
    ``max_new_tokens``. ``sampling.batch_size`` is left out because it only sets
    throughput, although the transformers backend draws one random stream per batch.
    """
    return {
        "format": SAMPLING_KEY_FORMAT,
        "num_samples": int(sampling.num_samples),
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "top_k": 0,
        "repetition_penalty": 1.0,
        "max_new_tokens": int(sampling.max_new_tokens),
        "stop": "eos",
        "seed": int(seed),
    }


def _with_num_samples(sampling: SamplingConfig, num_samples: int | None) -> SamplingConfig:
    if num_samples is None:
        return sampling
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    return sampling.model_copy(update={"num_samples": num_samples})


def stop_token_ids(
    tokenizer: PreTrainedTokenizerBase, generation_config: GenerationConfig | None = None
) -> list[int]:
    """Return the tokenizer's end-of-sequence id followed by any other ids in the generation config."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        configured = [configured]
    for token_id in configured or []:
        if token_id not in ids:
            ids.append(int(token_id))
    return ids


def decode_completion(
    tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int], stop_ids: Sequence[int]
) -> tuple[str, bool, int]:
    """Decode generated ids up to the first stop token.

    Returns the text, whether a stop token ended it, and the number of generated tokens
    up to and including that stop token (padding after it is not counted).
    """
    token_ids = list(token_ids)
    cut = next((index for index, token_id in enumerate(token_ids) if token_id in stop_ids), None)
    if cut is None:
        return tokenizer.decode(token_ids, skip_special_tokens=True), False, len(token_ids)
    return tokenizer.decode(token_ids[:cut], skip_special_tokens=True), True, cut + 1


def _log_sampling_start(backend: str, key: dict[str, Any], num_prompts: int) -> None:
    """Log the backend and the sampling settings of :func:`sampling_key` before sampling starts."""
    logger.info(
        "%s backend: sampling %d responses for each of %d prompts (temperature %g, top-p %g, "
        "at most %d new tokens)",
        backend,
        key["num_samples"],
        num_prompts,
        key["temperature"],
        key["top_p"],
        key["max_new_tokens"],
    )


def _log_sampling_done(
    total: int, seconds: float, num_unfinished: int, max_new_tokens: int, num_tokens: int
) -> None:
    logger.info(
        "sampled %d responses in %.1f s (%.0f new tokens/s); "
        "%d of them reached %d new tokens without a stop token",
        total,
        seconds,
        num_tokens / seconds if seconds > 0 else float("nan"),
        num_unfinished,
        max_new_tokens,
    )


# ---------------------------------------------------------------------------
# transformers backend
# ---------------------------------------------------------------------------


def transformers_generation_config(
    key: dict[str, Any], stop_ids: Sequence[int], pad_token_id: int
) -> GenerationConfig:
    """Return the GenerationConfig of a :func:`sampling_key` for ``model.generate``.

    Fields left unset here (such as ``no_repeat_ngram_size``) still take the model's
    own ``generation_config`` values, as ``generate`` fills them in.
    """
    return GenerationConfig(
        **decoding_arguments(key["temperature"], key["top_p"], key["num_samples"]),
        repetition_penalty=key["repetition_penalty"],
        max_new_tokens=key["max_new_tokens"],
        num_return_sequences=key["num_samples"],
        eos_token_id=list(stop_ids),
        pad_token_id=pad_token_id,
    )


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    sampling: SamplingConfig,
    *,
    seed: int,
    num_samples: int | None = None,
    max_prompt_tokens: int | None = None,
    stats: dict[str, float] | None = None,
) -> list[list[str]]:
    """Sample ``num_samples`` (default ``sampling.num_samples``) responses per instruction with transformers.

    Prompts are rendered with the chat template, truncated from the left to
    ``max_prompt_tokens`` when set, and left-padded in batches of
    ``sampling.batch_size`` prompts. Each batch draws its own seed from ``seed``, so
    the same seed, prompts, batch size and hardware give the same responses. A
    response ends before its first stop token (see :func:`stop_token_ids`), and
    special tokens are removed from the text. A ``stats`` dictionary, when given,
    receives ``new_tokens`` (generated tokens up to and including each stop token),
    ``unfinished`` (responses cut at ``max_new_tokens``) and ``seconds``.
    """
    sampling = _with_num_samples(sampling, num_samples)
    if not prompts:
        return []
    key = sampling_key(sampling, seed)
    stop_ids = stop_token_ids(tokenizer, model.generation_config)
    generation_config = transformers_generation_config(key, stop_ids, tokenizer.pad_token_id)
    device = model.device
    prompt_ids = encode_prompts(tokenizer, prompts, max_prompt_tokens)
    batch_starts = range(0, len(prompts), sampling.batch_size)
    seed_rng = random.Random(seed)
    _log_sampling_start("transformers", key, len(prompts))

    responses: list[list[str]] = []
    num_unfinished = 0
    num_tokens = 0
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        for batch_start in progress(batch_starts, desc="sampling", total=len(batch_starts), unit="batch"):
            batch_prompt_ids = prompt_ids[batch_start : batch_start + sampling.batch_size]
            input_ids, attention_mask = left_pad(batch_prompt_ids, tokenizer.pad_token_id)
            with torch.inference_mode(), seeded_rng(seed_rng.getrandbits(63), device):
                output_ids = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=generation_config,
                )

            texts = []
            for ids in output_ids[:, input_ids.shape[1] :].cpu().tolist():
                text, finished, length = decode_completion(tokenizer, ids, stop_ids)
                num_unfinished += not finished
                num_tokens += length
                texts.append(text)

            # generate() returns the samples of one prompt next to each other.
            width = key["num_samples"]
            for row in range(len(batch_prompt_ids)):
                responses.append(texts[row * width : (row + 1) * width])
    finally:
        model.train(was_training)

    seconds = time.perf_counter() - start
    _log_sampling_done(
        len(prompts) * key["num_samples"], seconds, num_unfinished, key["max_new_tokens"], num_tokens
    )
    if stats is not None:
        stats.update(new_tokens=float(num_tokens), unfinished=float(num_unfinished), seconds=seconds)
    return responses


# ---------------------------------------------------------------------------
# vLLM backend
# ---------------------------------------------------------------------------


def import_vllm():
    """Import vllm, or raise ImportError naming the install command and the alternative backend."""
    try:
        return importlib.import_module("vllm")
    except ImportError as error:
        raise ImportError(
            f"the vLLM generation backend (world.hf.generation_backend: vllm) needs vllm, which is not "
            f"installed. Install it with {VLLM_INSTALL_HINT}, or set world.hf.generation_backend to "
            f"'transformers'."
        ) from error


def prompt_seeds(seed: int, count: int) -> list[int]:
    """Return one 31-bit seed per prompt, drawn from ``seed``; vLLM seeds each request with its own."""
    rng = random.Random(seed)
    return [rng.getrandbits(31) for _ in range(count)]


def vllm_sampling_params(vllm_module, key: dict[str, Any], stop_ids: Sequence[int], request_seed: int):
    """Return the ``vllm.SamplingParams`` of a :func:`sampling_key` for one request.

    Top-k is left at vLLM's default, which disables it, matching ``top_k`` 0 of the key.
    """
    return vllm_module.SamplingParams(
        n=key["num_samples"],
        temperature=key["temperature"],
        top_p=key["top_p"],
        repetition_penalty=key["repetition_penalty"],
        max_tokens=key["max_new_tokens"],
        stop_token_ids=list(stop_ids),
        seed=request_seed,
    )


class VLLMGenerator:
    """Generation through a vLLM engine, with the prompt encoding and parameters of :func:`generate`.

    The engine loads once per instance. Every request carries its own seed (see
    :func:`prompt_seeds`), so a prompt's samples do not depend on the batch around it.
    NOTE: this class is tested only against a stand-in of the vllm API, because vllm
    needs a GPU; the calls follow the vllm ``LLM.generate`` API with token-id prompts.
    """

    def __init__(
        self,
        config: HFModelConfig,
        *,
        name_or_path: str | Path | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.vllm = import_vllm()
        source = str(name_or_path or config.name_or_path)
        revision = config.revision if name_or_path is None else None
        self.tokenizer = tokenizer or load_tokenizer(
            source, revision=revision, trust_remote_code=config.trust_remote_code
        )
        self.generation_config = self._load_generation_config(source, revision)
        self.llm = self.vllm.LLM(
            model=source,
            tokenizer=source,
            revision=revision,
            tokenizer_revision=revision,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            **(engine_kwargs or {}),
        )
        logger.info("vLLM engine loaded %s%s", source, f" at revision {revision}" if revision else "")

    @staticmethod
    def _load_generation_config(source: str, revision: str | None) -> GenerationConfig | None:
        try:
            return GenerationConfig.from_pretrained(source, revision=revision)
        except OSError:
            return None

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: SamplingConfig,
        *,
        seed: int,
        num_samples: int | None = None,
        max_prompt_tokens: int | None = None,
    ) -> list[list[str]]:
        """Sample responses per instruction; the arguments and return value are those of :func:`generate`."""
        sampling = _with_num_samples(sampling, num_samples)
        if not prompts:
            return []
        key = sampling_key(sampling, seed)
        stop_ids = stop_token_ids(self.tokenizer, self.generation_config)
        prompt_ids = encode_prompts(self.tokenizer, prompts, max_prompt_tokens)
        params = [
            vllm_sampling_params(self.vllm, key, stop_ids, request_seed)
            for request_seed in prompt_seeds(seed, len(prompts))
        ]

        _log_sampling_start("vLLM", key, len(prompts))
        start = time.perf_counter()
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False)

        responses = []
        num_unfinished = 0
        num_tokens = 0
        for request in outputs:
            texts = []
            for completion in request.outputs:
                text, finished, length = decode_completion(self.tokenizer, completion.token_ids, stop_ids)
                num_unfinished += not finished
                num_tokens += length
                texts.append(text)
            responses.append(texts)

        _log_sampling_done(
            len(prompts) * key["num_samples"],
            time.perf_counter() - start,
            num_unfinished,
            key["max_new_tokens"],
            num_tokens,
        )
        return responses
