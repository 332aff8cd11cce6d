"""Shared fixtures: the benchmark data folder and small experiment configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RSPO_BENCH_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("RSPO_BENCH_DATA")
    if not value or not Path(value).is_dir():
        pytest.skip("RSPO_BENCH_DATA is not set to the benchmark data folder")
    return Path(value)


MINI_CONFIG = """\
name: {name}
seed: 0
world:
  model: {{vocab_size: 384, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}}
  warmup: {{num_examples: 60, epochs: 1, batch_size: 16, max_prompt_tokens: 48, max_response_tokens: 24}}
prompts: {{per_iteration: 6}}
selfplay:
  iterations: 2
  sampling: {{num_samples: 3, max_new_tokens: 12, batch_size: 16}}
training: {{batch_size: 3, learning_rate: 1.0e-3, max_prompt_tokens: 48, max_response_tokens: 16}}
evaluation:
  alpaca_eval2:
    max_instructions: 30
    sampling: {{num_samples: 1, max_new_tokens: 12, batch_size: 32}}
sweep:
  beta: 0.1
  variants:
{variants}
"""

DEFAULT_VARIANTS = """\
    - name: sppo
    - name: reverse_kl
      regularizers: [{name: reverse_kl}]
      coefs: [0.1]
    - name: is_forward_reverse
      regularizers: [{name: is_forward_kl, params: {clip: 10}}, {name: reverse_kl, weight: 5}]
      coefs: [0.1]
"""


@pytest.fixture
def mini_config(tmp_path: Path):
    """Return a function writing a tiny experiment file with the given name and variants block."""

    def write(name: str = "mini", variants: str = DEFAULT_VARIANTS) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(MINI_CONFIG.format(name=name, variants=variants), encoding="utf-8")
        return path

    return write
