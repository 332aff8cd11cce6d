"""A sweep in the hf world on a local checkpoint folder, with the offline judge, on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from rspo_bench.config import TinyModelConfig
from rspo_bench.data import load_ultrafeedback
from rspo_bench.worlds import tiny

REPO = Path(__file__).resolve().parent.parent

CONFIG = """\
name: hfmini
seed: 0
world:
  kind: hf
  hf: {{name_or_path: "{checkpoint}", dtype: float32, gradient_checkpointing: false}}
prompts: {{per_iteration: 4}}
selfplay:
  iterations: 1
  sampling: {{num_samples: 3, max_new_tokens: 8, batch_size: 8}}
training: {{batch_size: 2, learning_rate: 1.0e-3, max_prompt_tokens: 48, max_response_tokens: 12}}
evaluation:
  alpaca_eval2:
    max_instructions: 12
    sampling: {{num_samples: 1, max_new_tokens: 8, batch_size: 16}}
sweep:
  beta: 0.1
  include_base: true
  variants:
    - name: reverse_kl
      regularizers: [{{name: reverse_kl}}]
      coefs: [0.1]
"""


@pytest.fixture
def checkpoint(tmp_path, data_dir) -> Path:
    """A randomly initialised Llama checkpoint with its own tokenizer and chat template."""
    records = load_ultrafeedback("train", data_dir)[:100]
    tokenizer = tiny.train_tokenizer([record["prompt"] for record in records], vocab_size=300)
    model = tiny.build_tiny_model(
        TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        tokenizer,
        seed=0,
    )
    path = tmp_path / "checkpoint"
    tiny.save_policy(model, tokenizer, path)
    return path


def test_hf_world_sweep_runs(tmp_path, checkpoint):
    config = tmp_path / "hfmini.yaml"
    config.write_text(CONFIG.format(checkpoint=checkpoint), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "rspo_bench.cli", "sweep", str(config), "--workdir", str(tmp_path / "runs"),
         "--format", ""],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("hfmini")
    runs = client.search_runs([experiment.experiment_id], "tags.`rspo.role` = 'trial'")
    assert sorted(run.data.tags["rspo.trial"] for run in runs) == ["base", "reverse_kl-0.1"]
    for run in runs:
        assert run.data.tags["rspo.world"] == "hf"
        assert run.info.status == "FINISHED"
        assert "alpaca_eval2/lc_win_rate" in run.data.metrics
