"""PairRM, the pairwise preference model of ``llm-blender/PairRM``, on current transformers.

PairRM is a DeBERTa-v3-large encoder with a small head that compares two
candidate responses to one source text in a single forward pass. One input is::

    [CLS] <|source|> x [SEP] [CLS] <|candidate1|> y1 [SEP] [CLS] <|candidate2|> y2 [SEP]

The encoder's final hidden states at the three prefix tokens give h_s, h_1 and
h_2. The head, ``Dropout → Linear(2H, H) → Tanh → Dropout → Linear(H, n_tasks)``,
scores h_s concatenated with each candidate state, and the pair logit is the
mean over tasks of ``head([h_s; h_1]) − head([h_s; h_2])``. A positive logit
means y1 is preferred.

This module re-implements that architecture with the parameter names of
llm-blender's ``CrossCompareReranker`` (``pretrained_model.*`` for the DeBERTa
encoder, ``head_layer.1.*`` and ``head_layer.4.*`` for the two linear layers), so
the published weights load by name. Two checkpoint layouts load:

- a transformers layout (``llm-blender/PairRM-hf`` and folders written by
  :meth:`PairRMJudge.save_pretrained`): ``config.json`` is a DeBERTa-v2 config
  carrying ``n_tasks``, ``drop_out`` and the prefix token ids;
- the llm-blender layout (``llm-blender/PairRM``): ``config.json`` is llm-blender's
  ranker config with ``ranker_type: pairranker`` and the backbone name in
  ``model_name``. The backbone config comes from that backbone, and so does the
  tokenizer when the folder has none.

Preferences, with C_ij the logit of y_i as candidate 1 and y_j as candidate 2:

- ``probability="pairwise"`` (default): P(y_i ≻ y_j | x) = σ((C_ij − C_ji) / 2), so
  both orders count equally and P_ij + P_ji = 1.
- ``probability="rank_scores"``: P(y_i ≻ y_j | x) = σ(s_i − s_j) with llm-blender's
  ``Blender.rank`` scores s_i = mean_j (C_ij − C_ji) over all K responses (C_ii = 0).
  The official SPPO and RSPO pipelines compute their win probabilities this way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, DebertaV2Config, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.deberta_v2.modeling_deberta_v2 import DebertaV2Model, DebertaV2PreTrainedModel
from transformers.utils import cached_file

from rspo_bench.logs import get_logger, progress
from rspo_bench.preference.base import (
    GroupedPreferenceOracle,
    bradley_terry_matrix,
    bradley_terry_preferences,
    check_group_count,
    check_same_length,
    ordered_pair_matrices,
    sigmoid,
    vocabulary_sha256,
    weights_fingerprint,
)
from rspo_bench.worlds.hf import resolve_device

logger = get_logger(__name__)

PAIRRM_HUB_ID = "llm-blender/PairRM"
# llm-blender's ranker config names this backbone when a checkpoint does not.
DEFAULT_BACKBONE = "microsoft/deberta-v3-large"

SOURCE_PREFIX = "<|source|>"
CANDIDATE1_PREFIX = "<|candidate1|>"
CANDIDATE2_PREFIX = "<|candidate2|>"
CANDIDATE_PREFIX = "<|candidate|>"
# The order in which llm-blender adds the prefix tokens to the DeBERTa vocabulary, which fixes their ids.
PREFIX_TOKENS = (SOURCE_PREFIX, CANDIDATE1_PREFIX, CANDIDATE2_PREFIX, CANDIDATE_PREFIX)

# Token limits of the published PairRM: the source segment, and each candidate segment
# before it receives half of the budget the source leaves unused.
SOURCE_MAX_LENGTH = 1224
CANDIDATE_MAX_LENGTH = 412

FINGERPRINT_FORMAT = "pairrm-v1"
PROBABILITIES = ("pairwise", "rank_scores")
Probability = Literal["pairwise", "rank_scores"]


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


class PairRMModel(DebertaV2PreTrainedModel):
    """DeBERTa-v2 encoder plus the pairwise head of llm-blender's PairRM.

    Extra config fields: ``n_tasks`` (head outputs, 1 for PairRM), ``drop_out`` (head
    dropout) and ``source_prefix_id``, ``cand1_prefix_id``, ``cand2_prefix_id``.
    """

    config_class = DebertaV2Config
    base_model_prefix = "pretrained_model"
    # Checkpoints written by transformers before 4.31 stored this buffer.
    _keys_to_ignore_on_load_unexpected = [r"position_ids"]

    def __init__(self, config: DebertaV2Config) -> None:
        super().__init__(config)
        hidden_size = config.hidden_size
        dropout = float(getattr(config, "drop_out", 0.05))
        self.pretrained_model = DebertaV2Model(config)
        self.head_layer = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * hidden_size, hidden_size),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, int(getattr(config, "n_tasks", 1))),
        )
        self.post_init()

    def prefix_ids(self) -> tuple[int, int, int]:
        """Return the token ids of the source, candidate-1 and candidate-2 prefixes from the config."""
        ids = tuple(
            getattr(self.config, name, None)
            for name in ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id")
        )
        if any(value is None for value in ids):
            raise ValueError(
                "the PairRM config lacks source_prefix_id, cand1_prefix_id or cand2_prefix_id; "
                "load the checkpoint with PairRMJudge.from_pretrained, which sets them from the tokenizer"
            )
        return ids  # type: ignore[return-value]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Return the pair logits [B] (positive: candidate 1 preferred) as ``logits``.

        Every row must contain each of the three prefix tokens exactly once.
        """
        source_id, first_id, second_id = self.prefix_ids()
        hidden = self.pretrained_model(
            input_ids=input_ids, attention_mask=attention_mask, **kwargs
        ).last_hidden_state
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        states = []
        for token_id, label in ((source_id, "source"), (first_id, "candidate1"), (second_id, "candidate2")):
            matches = input_ids == token_id
            counts = matches.sum(-1)
            if not torch.all(counts == 1):
                raise ValueError(
                    f"every PairRM input needs exactly one {label} prefix token (id {token_id}); "
                    f"counts per row: {counts.tolist()}"
                )
            states.append(hidden[rows, matches.int().argmax(-1)])
        source, first, second = states
        first_scores = self.head_layer(torch.cat([source, first], dim=-1))
        second_scores = self.head_layer(torch.cat([source, second], dim=-1))
        return SequenceClassifierOutput(logits=(first_scores - second_scores).mean(dim=-1))


# ---------------------------------------------------------------------------
# Input encoding
# ---------------------------------------------------------------------------


def _clean(text: str, reserved: Sequence[str]) -> tuple[str, int]:
    """Replace every reserved token string in ``text`` with a space; return the text and the count."""
    count = 0
    for token in reserved:
        if token and token in text:
            count += text.count(token)
            text = text.replace(token, " ")
    return text, count


def _segment(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> list[int]:
    """Encode ``[CLS] text [SEP]`` with ``text`` truncated from the right to fit ``max_length`` tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.cls_token_id, *ids[: max(max_length - 2, 0)], tokenizer.sep_token_id]


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    candidate1: str,
    candidate2: str,
    *,
    source_max_length: int = SOURCE_MAX_LENGTH,
    candidate_max_length: int = CANDIDATE_MAX_LENGTH,
) -> tuple[list[int], int]:
    """Return the token ids of one PairRM input and how many reserved strings were replaced.

    The source segment contains at most ``source_max_length`` tokens. Each candidate segment
    contains at most ``(source_max_length + 2 * candidate_max_length - len(source segment)) // 2``
    tokens, so a short source leaves room for longer candidates. Occurrences of the
    tokenizer's [CLS]/[SEP] strings and of the prefix tokens inside the texts are
    replaced with a space, because they would break the segment layout.
    """
    reserved = [tokenizer.cls_token, tokenizer.sep_token, *PREFIX_TOKENS]
    source, replaced_source = _clean(source, reserved)
    candidate1, replaced_first = _clean(candidate1, reserved)
    candidate2, replaced_second = _clean(candidate2, reserved)
    source_ids = _segment(tokenizer, SOURCE_PREFIX + source, source_max_length)
    budget = (source_max_length + 2 * candidate_max_length - len(source_ids)) // 2
    first_ids = _segment(tokenizer, CANDIDATE1_PREFIX + candidate1, budget)
    second_ids = _segment(tokenizer, CANDIDATE2_PREFIX + candidate2, budget)
    return source_ids + first_ids + second_ids, replaced_source + replaced_first + replaced_second


def _pad_right(sequences: Sequence[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _optional_file(name_or_path: str, filename: str, **kwargs: Any) -> str | None:
    return cached_file(
        name_or_path,
        filename,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **kwargs,
    )


def _ensure_prefix_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Add the prefix tokens missing from the vocabulary, in llm-blender's order."""
    missing = [token for token in PREFIX_TOKENS if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing)
        logger.info("added PairRM prefix tokens %s to the tokenizer", missing)


def _set_prefix_ids(config: DebertaV2Config, tokenizer: PreTrainedTokenizerBase) -> None:
    """Copy the prefix token ids from the tokenizer into the config, checking any ids already there."""
    vocabulary = tokenizer.get_vocab()
    ids = {
        "source_prefix_id": vocabulary.get(SOURCE_PREFIX),
        "cand1_prefix_id": vocabulary.get(CANDIDATE1_PREFIX),
        "cand2_prefix_id": vocabulary.get(CANDIDATE2_PREFIX),
        "cand_prefix_id": vocabulary.get(CANDIDATE_PREFIX),
    }
    for name, token_id in ids.items():
        if token_id is None:
            raise ValueError(
                f"the PairRM tokenizer has no token for {name}; its vocabulary lacks the prefix tokens"
            )
        configured = getattr(config, name, None)
        if configured is not None and configured != token_id:
            raise ValueError(
                f"config {name} is {configured} but the tokenizer maps that prefix to {token_id}; "
                f"the tokenizer does not belong to this checkpoint"
            )
        setattr(config, name, token_id)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("the PairRM tokenizer needs [CLS], [SEP] and padding tokens")
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the checkpoint embeds only {config.vocab_size}"
        )


def _load_state_dict(name_or_path: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    """Load ``model.safetensors`` or ``pytorch_model.bin`` of a checkpoint into CPU tensors."""
    safetensors_file = _optional_file(name_or_path, "model.safetensors", **kwargs)
    if safetensors_file is not None:
        from safetensors.torch import load_file

        return load_file(safetensors_file)
    bin_file = _optional_file(name_or_path, "pytorch_model.bin", **kwargs)
    if bin_file is None:
        raise FileNotFoundError(
            f"PairRM checkpoint {name_or_path} has neither model.safetensors nor pytorch_model.bin"
        )
    return torch.load(bin_file, map_location="cpu", weights_only=True)


def _load_llm_blender_layout(
    name_or_path: str, ranker_config: dict[str, Any], *, trust_remote_code: bool = False, **kwargs: Any
) -> tuple[PairRMModel, PreTrainedTokenizerBase, dict[str, int]]:
    """Load a checkpoint whose config.json is llm-blender's ranker config."""
    if ranker_config.get("ranker_type") != "pairranker":
        raise ValueError(
            f"{name_or_path}: ranker_type is {ranker_config.get('ranker_type')!r}; "
            f"only 'pairranker' (PairRM) is supported"
        )
    backbone = ranker_config.get("model_name") or DEFAULT_BACKBONE
    local_only = {"local_files_only": kwargs.get("local_files_only", False), "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(backbone, **local_only)
    if config.model_type != "deberta-v2":
        raise ValueError(
            f"{name_or_path}: backbone {backbone} is a {config.model_type} model, expected deberta-v2"
        )
    config.n_tasks = int(ranker_config.get("n_tasks", 1))
    config.drop_out = float(ranker_config.get("drop_out", 0.05))

    if _optional_file(name_or_path, "tokenizer_config.json", **kwargs) is not None:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    else:
        tokenizer = AutoTokenizer.from_pretrained(backbone, **local_only)
    _ensure_prefix_tokens(tokenizer)

    state_dict = _load_state_dict(name_or_path, **kwargs)
    ignored = [key for key in state_dict if key.endswith("position_ids")]
    for key in ignored:
        del state_dict[key]
    embeddings = state_dict.get("pretrained_model.embeddings.word_embeddings.weight")
    if embeddings is None:
        raise ValueError(
            f"{name_or_path}: the weights lack pretrained_model.embeddings.word_embeddings.weight"
        )
    config.vocab_size = int(embeddings.shape[0])
    _set_prefix_ids(config, tokenizer)

    model = PairRMModel(config)
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{name_or_path}: the weights do not match PairRM's parameter names; missing "
            f"{result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}"
        )
    lengths = {
        "source_max_length": int(ranker_config.get("source_maxlength") or SOURCE_MAX_LENGTH),
        "candidate_max_length": int(ranker_config.get("candidate_maxlength") or CANDIDATE_MAX_LENGTH),
    }
    return model, tokenizer, lengths


def _load_transformers_layout(
    name_or_path: str, *, trust_remote_code: bool = False, **kwargs: Any
) -> tuple[PairRMModel, PreTrainedTokenizerBase, dict[str, int]]:
    """Load a checkpoint whose config.json is a DeBERTa-v2 config with the PairRM fields."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    _ensure_prefix_tokens(tokenizer)
    model, info = PairRMModel.from_pretrained(
        name_or_path, output_loading_info=True, dtype=torch.float32, **kwargs
    )
    if info["missing_keys"] or info["unexpected_keys"]:
        raise ValueError(
            f"{name_or_path}: the weights do not match PairRM's parameter names; missing "
            f"{sorted(info['missing_keys'])[:10]}, unexpected {sorted(info['unexpected_keys'])[:10]}"
        )
    _set_prefix_ids(model.config, tokenizer)
    lengths = {
        "source_max_length": int(getattr(model.config, "source_max_length", SOURCE_MAX_LENGTH)),
        "candidate_max_length": int(getattr(model.config, "candidate_max_length", CANDIDATE_MAX_LENGTH)),
    }
    return model, tokenizer, lengths


# ---------------------------------------------------------------------------
# Judge
# ---------------------------------------------------------------------------


class PairRMJudge(GroupedPreferenceOracle):
    """Preference oracle backed by PairRM: pair logits, preference matrices and rank scores."""

    def __init__(
        self,
        model: PairRMModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name_or_path: str,
        revision: str | None = None,
        batch_size: int = 16,
        source_max_length: int = SOURCE_MAX_LENGTH,
        candidate_max_length: int = CANDIDATE_MAX_LENGTH,
        probability: Probability = "pairwise",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if probability not in PROBABILITIES:
            raise ValueError(f"unknown probability {probability!r}; use one of {PROBABILITIES}")
        self.model = model.eval()
        self.probability = probability
        self.tokenizer = tokenizer
        self.name_or_path = name_or_path
        self.revision = revision
        self.batch_size = batch_size
        self.source_max_length = source_max_length
        self.candidate_max_length = candidate_max_length
        self._fingerprint: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = PAIRRM_HUB_ID,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 16,
        probability: Probability = "pairwise",
        local_files_only: bool = False,
    ) -> PairRMJudge:
        """Load PairRM from a local folder or hub id in either supported layout.

        ``device`` defaults to CUDA when available; ``dtype`` defaults to float16 on CUDA,
        as llm-blender runs PairRM, and float32 elsewhere. ``probability`` selects the
        preference formula (see the module docstring). The model is always this module's
        PairRMModel, so ``trust_remote_code`` applies only to loading the tokenizer and
        the backbone config.
        """
        name_or_path = str(name_or_path)
        kwargs = {"revision": revision, "local_files_only": local_files_only}
        config_file = cached_file(name_or_path, "config.json", **kwargs)
        raw_config = _read_json(config_file)
        if "ranker_type" in raw_config:
            model, tokenizer, lengths = _load_llm_blender_layout(
                name_or_path, raw_config, trust_remote_code=trust_remote_code, **kwargs
            )
            layout = "llm-blender"
        else:
            model, tokenizer, lengths = _load_transformers_layout(
                name_or_path, trust_remote_code=trust_remote_code, **kwargs
            )
            layout = "transformers"
        target = resolve_device(device)
        if dtype is None:
            dtype = torch.float16 if target.type == "cuda" else torch.float32
        model.to(device=target, dtype=dtype)
        num_parameters = sum(parameter.numel() for parameter in model.parameters())
        logger.info(
            "loaded PairRM %s (%s layout): %.3g M parameters, %s on %s",
            name_or_path,
            layout,
            num_parameters / 1e6,
            str(dtype).removeprefix("torch."),
            target,
        )
        return cls(
            model,
            tokenizer,
            name_or_path=name_or_path,
            revision=revision,
            batch_size=batch_size,
            probability=probability,
            **lengths,
        )

    def save_pretrained(self, path: str | Path) -> None:
        """Write the model, its PairRM config fields and the tokenizer in the transformers layout."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.config.source_max_length = self.source_max_length
        self.model.config.candidate_max_length = self.candidate_max_length
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    @property
    def name(self) -> str:
        """Judge identifier for reports and annotation files."""
        return f"pairrm:{self.name_or_path}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # Pair logits --------------------------------------------------------------

    def pair_logits(
        self, sources: Sequence[str], candidates1: Sequence[str], candidates2: Sequence[str]
    ) -> np.ndarray:
        """Return the logit of each (source, candidate 1, candidate 2) triple, shape [N].

        A positive logit means candidate 1 is preferred. The triples are sorted by length
        and run in batches of ``batch_size``; the result keeps the input order.
        """
        check_same_length(sources=sources, candidates1=candidates1, candidates2=candidates2)
        if not sources:
            return np.zeros(0, dtype=np.float64)
        encoded = []
        replaced = 0
        for source, first, second in zip(sources, candidates1, candidates2, strict=True):
            ids, count = encode_pair(
                self.tokenizer,
                source,
                first,
                second,
                source_max_length=self.source_max_length,
                candidate_max_length=self.candidate_max_length,
            )
            encoded.append(ids)
            replaced += count
        if replaced:
            logger.warning("PairRM: replaced %d reserved token strings inside texts with spaces", replaced)

        order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]), reverse=True)
        result = np.zeros(len(encoded), dtype=np.float64)
        device = self.device
        batch_starts = range(0, len(order), self.batch_size)
        with torch.inference_mode():
            for start in progress(batch_starts, desc="PairRM", total=len(batch_starts), unit="batch"):
                indices = order[start : start + self.batch_size]
                input_ids, attention_mask = _pad_right(
                    [encoded[i] for i in indices], self.tokenizer.pad_token_id
                )
                logits = self.model(
                    input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
                ).logits
                result[indices] = logits.float().cpu().numpy()
        return result

    def batch_preferences(
        self, instructions: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
    ) -> np.ndarray:
        """Return P(responses_a[n] ≻ responses_b[n] | instructions[n]), shape [N].

        Each pair is a group of K = 2 responses: σ((C_ab − C_ba) / 2) with ``pairwise``,
        and σ(C_ab − C_ba) with ``rank_scores``, whose scores are ±(C_ab − C_ba) / 2.
        """
        forward = self.pair_logits(instructions, responses_a, responses_b)
        backward = self.pair_logits(instructions, responses_b, responses_a)
        temperature = 2.0 if self.probability == "pairwise" else 1.0
        return bradley_terry_preferences(forward, backward, temperature)

    # Matrices -----------------------------------------------------------------

    def pairwise_logit_matrices(
        self, instructions: Sequence[str], response_groups: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """Return, per instruction, C with C[i, j] the logit of (response i, response j) and C[i, i] = 0.

        All ordered pairs of all instructions run through :meth:`pair_logits` together.
        """
        check_group_count(instructions, response_groups)
        return ordered_pair_matrices(instructions, response_groups, self.pair_logits)

    def preference_matrices(
        self, instructions: Sequence[str], response_groups: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """Return, per instruction, the matrix P[i, j] = P(y_i ≻ y_j | x) of the judge's formula.

        P[i, j] + P[j, i] = 1 and the diagonal is 0.5 under both formulas.
        """
        matrices = []
        for logits in self.pairwise_logit_matrices(instructions, response_groups):
            if self.probability == "pairwise":
                matrices.append(sigmoid((logits - logits.T) / 2.0))
            else:
                scores = (logits - logits.T).mean(axis=1)
                matrices.append(bradley_terry_matrix(scores))
        return matrices

    def rank_scores(self, instruction: str, responses: Sequence[str]) -> np.ndarray:
        """Return llm-blender's rank scores s_i = mean_j (C_ij − C_ji), with C_ii = 0, shape [K]."""
        logits = self.pairwise_logit_matrices([instruction], [responses])[0]
        return (logits - logits.T).mean(axis=1)

    # Identity ----------------------------------------------------------------

    def fingerprint(self) -> str:
        """Return a sha256 over the weights (names, dtypes, shapes, bytes), tokenizer and length limits."""
        if self._fingerprint is None:
            settings = {
                "format": FINGERPRINT_FORMAT,
                "source_max_length": self.source_max_length,
                "candidate_max_length": self.candidate_max_length,
                "probability": self.probability,
                "vocabulary": vocabulary_sha256(self.tokenizer),
            }
            self._fingerprint = weights_fingerprint(settings, self.model)
        return self._fingerprint

    def description(self) -> str:
        """Return one paragraph that states the model and the preference formula, for reports."""
        if self.probability == "pairwise":
            formula = (
                "P(y_i preferred over y_j | x) = sigmoid((C_ij - C_ji) / 2), averaging both candidate orders."
            )
        else:
            formula = (
                "P(y_i preferred over y_j | x) = sigmoid(s_i - s_j), with the rank score "
                "s_i = mean over all K responses j of (C_ij - C_ji), "
                "as in the official SPPO and RSPO pipelines."
            )
        return (
            f"Preferences come from PairRM ({self.name_or_path}"
            f"{', revision ' + self.revision if self.revision else ''}), "
            f"a DeBERTa-v3 pairwise ranker that reads "
            f"the instruction and two responses together and returns a logit C_ij for response i over "
            f"response j. {formula} Inputs are truncated to {self.source_max_length} instruction tokens and "
            f"a shared budget of {self.candidate_max_length} or more tokens per response. "
            f"Fingerprint {self.fingerprint()[:16]}."
        )


# ---------------------------------------------------------------------------
# Random checkpoints for tests and benchmarks
# ---------------------------------------------------------------------------


def train_pairrm_tokenizer(texts: Sequence[str], *, vocab_size: int = 512) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer with DeBERTa's special tokens on ``texts``, without prefix tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        clean_up_tokenization_spaces=False,
    )


def random_pairrm_config(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    intermediate_size: int = 64,
) -> DebertaV2Config:
    """Return a small DeBERTa-v2 config with DeBERTa-v3's structural settings and the PairRM fields.

    Relative attention with 256 position buckets, shared attention keys and no absolute
    position or token type embeddings give the parameter names of the published
    checkpoint. Only the sizes differ.
    """
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type="p2c|c2p",
        position_biased_input=False,
        max_relative_positions=-1,
        type_vocab_size=0,
        layer_norm_eps=1e-7,
        pad_token_id=tokenizer.pad_token_id,
        n_tasks=1,
        drop_out=0.05,
    )
    _set_prefix_ids(config, tokenizer)
    return config


def build_random_pairrm(
    texts: Sequence[str], *, vocab_size: int = 512, seed: int = 0, **sizes: int
) -> tuple[PairRMModel, PreTrainedTokenizerBase]:
    """Build a randomly initialised PairRM and its tokenizer, trained on ``texts``, for tests and benchmarks.

    ``sizes`` are passed to :func:`random_pairrm_config`. The tokenizer gets the prefix
    tokens after its own vocabulary, as llm-blender adds them. Equal seeds give equal weights.
    """
    tokenizer = train_pairrm_tokenizer(texts, vocab_size=vocab_size)
    _ensure_prefix_tokens(tokenizer)
    config = random_pairrm_config(tokenizer, **sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PairRMModel(config)
    model.eval()
    return model, tokenizer
