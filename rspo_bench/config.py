"""Typed experiment configuration, parsed from YAML.

Every model forbids unknown keys, so a misspelled field is an error rather than a
silently ignored setting. :func:`load_config` collects every validation error of a
file at once and reports each with its field path and the value received.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Base of all config models: unknown keys are rejected, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TinyModelConfig(StrictModel):
    """Shape of the small Llama-style causal LM of the ``tiny`` world, built from a config."""

    vocab_size: int = Field(2048, ge=256, description="Size of the BPE vocabulary trained on the training prompts.")
    hidden_size: int = Field(64, ge=8)
    intermediate_size: int = Field(192, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(512, ge=32)


class WarmupConfig(StrictModel):
    """Supervised warm-up that teaches the tiny base policy to produce text before self-play."""

    num_examples: int = Field(1000, ge=1, description="UltraFeedback (prompt, chosen) pairs used for SFT.")
    epochs: int = Field(3, ge=0)
    learning_rate: float = Field(3e-3, gt=0)
    batch_size: int = Field(16, ge=1)
    max_prompt_tokens: int = Field(96, ge=8, description="Prompts are truncated from the left to this many tokens.")
    max_response_tokens: int = Field(96, ge=8, description="Responses are truncated to this many tokens.")


class SamplingConfig(StrictModel):
    """Sampling settings for self-play generation and evaluation."""

    num_samples: int = Field(5, ge=2, description="K: responses sampled per prompt.")
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.9, gt=0, le=1)
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(64, ge=1, description="Prompts per generation batch.")
