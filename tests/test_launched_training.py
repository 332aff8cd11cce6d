"""Self-play trained under ``training.launcher`` matches self-play trained in the sweep's process.

The launched runs train iteration 1 of a tiny-world trial under ``accelerate launch``
with 2 CPU processes. The reference run copies the launched run's stage cache without
its policy entries, so it trains in one process on the same pairs. One iteration keeps
the comparison exact, because iteration 2 would sample from two slightly different
policies. The helpers, the 1e-4 tolerance and the float32 ZeRO-3 config come from
tests/test_accelerate_launch.py, whose docstring explains the tolerance.

That explanation needs gradients that differ by float32 rounding only, relative to
their own size. Self-play pairs give some weights gradients near the optimiser's eps
of 1e-8, whose rounding error is large relative to them, and an update there changes
steeply with the gradient. With RMSprop and clipping to norm 1, as in the launch
test, one forward pass and two micro-batches in the same process already end 1.1e-4
apart. AdamW without clipping ends 7.6e-6 apart, and the launched runs 4.7e-5 from
the in-process run (largest weight difference, DDP and ZeRO-3 alike, 2-core x86 CPU),
after moving the weights by 2e-2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from rspo_bench.cache import COMPLETE_MARKER, StageCache
from rspo_bench.cli import app
from rspo_bench.config import ConfigError, LauncherConfig, TrainingConfig, parse_config
from rspo_bench.selfplay import TinyWorld, run_selfplay, training_key
from rspo_bench.train_stage import LaunchError, accelerate_cli, check_launcher, run_launch
from rspo_bench.worlds import tiny
from tests.conftest import DEFAULT_VARIANTS, MINI_CONFIG
from tests.test_accelerate_launch import assert_weights_match, cpu_zero3_config, missing_build_tool

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "is_forward_reverse"
COEF = 0.1
# No clipping: with clipping to norm 1, AdamW's in-process difference above grew from 7.6e-6 to 5.2e-5.
MAX_GRAD_NORM = 1e6


def launched_config(config_file: str | Path) -> dict:
    """Return the mini experiment with 1 iteration of 3 steps on 8 pairs and the given accelerate config."""
    raw = yaml.safe_load(MINI_CONFIG.format(name="launched", variants=DEFAULT_VARIANTS))
    raw["selfplay"]["iterations"] = 1
    raw["prompts"]["per_iteration"] = 8
    # One global batch of 8 pairs per epoch, so each of the 2 processes trains on 4 rows per step,
    # as in tests/test_accelerate_launch.py.
    raw["training"].update(
        batch_size=8, epochs=3, optimizer="adamw", learning_rate=1e-2, lr_warmup_ratio=0.0,
        max_grad_norm=MAX_GRAD_NORM,
        launcher={"config_file": str(config_file), "num_processes": 2},
    )
    return raw


def policy_entries(cache_dir: Path) -> set[str]:
    """Return the keys of the complete policy entries in ``cache_dir``."""
    return {marker.parent.name for marker in (cache_dir / "policy").glob(f"*/*/{COMPLETE_MARKER}")}


def cached_selfplay(raw: dict, cache_dir: Path, data_dir: Path) -> tuple[Path, Path]:
    """Return the trial's final and base policy from ``cache_dir``, training in this process where missing."""
    in_process = {**raw, "training": {**raw["training"], "launcher": None}}
    config = parse_config(in_process)
    world = TinyWorld(config, StageCache(cache_dir), data_dir)
    variant = next(item for item in config.sweep.variants if item.name == VARIANT)
    return run_selfplay(world, variant, COEF).path, world.base_policy.path


def saved_weights(policy_path: Path) -> dict[str, torch.Tensor]:
    model, _ = tiny.load_policy(policy_path)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_launch_matches_in_process(raw: dict, launched_cache: Path, tmp_path: Path, data_dir: Path) -> Path:
    """Compare the launched policy in ``launched_cache`` with one trained in process; return its path."""
    entries = policy_entries(launched_cache)
    assert len(entries) == 1, f"expected the launched run's one policy entry, found {sorted(entries)}"
    # The launcher is not in the stage key, so the in-process config finds the launched policy.
    launched_path, _ = cached_selfplay(raw, launched_cache, data_dir)
    assert policy_entries(launched_cache) == entries, "the in-process config trained again"

    reference_cache = tmp_path / "reference-cache"
    shutil.copytree(launched_cache, reference_cache, ignore=shutil.ignore_patterns("policy"))
    reference_path, base_path = cached_selfplay(raw, reference_cache, data_dir)
    assert reference_path.name == launched_path.name
    assert policy_entries(reference_cache) == entries

    launched, reference = saved_weights(launched_path), saved_weights(reference_path)
    assert_weights_match(launched, reference, saved_weights(base_path))
    launched_metrics = json.loads((launched_path / "train_metrics.json").read_text(encoding="utf-8"))
    reference_metrics = json.loads((reference_path / "train_metrics.json").read_text(encoding="utf-8"))
    assert launched_metrics.keys() == reference_metrics.keys()
    for name, value in reference_metrics.items():
        # Means over the global batch, not over rank 0's half of it.
        assert launched_metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    return launched_path


def partitioned_zero3_config(folder: Path, save_16bit_model: bool) -> Path:
    """Write the float32 ZeRO-3 config with its DeepSpeed settings in a JSON file that shards every weight.

    DeepSpeed 0.19.8 keeps parameters below stage3_param_persistence_threshold (default
    100,000 elements) whole on every process. That is every weight of the tiny model,
    so the shipped settings would leave nothing to gather. The threshold is set only in a
    DeepSpeed JSON file, which accelerate then takes in place of its own ZeRO fields.
    """
    accelerate_config = yaml.safe_load(cpu_zero3_config(folder).read_text(encoding="utf-8"))
    # accelerate 1.16 rejects mixed_precision next to a DeepSpeed file; without bf16 there it runs float32.
    assert accelerate_config.pop("mixed_precision") == "no"
    shipped = accelerate_config["deepspeed_config"]
    deepspeed_config = {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": shipped["gradient_accumulation_steps"],
        # DeepSpeed clips inside its engine with this value instead of training.max_grad_norm.
        "gradient_clipping": MAX_GRAD_NORM,
        "zero_optimization": {
            "stage": shipped["zero_stage"],
            "stage3_param_persistence_threshold": 0,
            "stage3_gather_16bit_weights_on_model_save": save_16bit_model,
        },
    }
    json_path = folder / "zero3_partitioned.json"
    json_path.write_text(json.dumps(deepspeed_config), encoding="utf-8")
    accelerate_config["deepspeed_config"] = {
        "deepspeed_config_file": str(json_path),
        "deepspeed_multinode_launcher": shipped["deepspeed_multinode_launcher"],
        "zero3_init_flag": shipped["zero3_init_flag"],
    }
    path = folder / "zero3_partitioned.yaml"
    path.write_text(yaml.safe_dump(accelerate_config), encoding="utf-8")
    return path


def launch_environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "RSPO_BENCH_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_command_ddp_matches_in_process(tmp_path, data_dir):
    """`rspo-bench train` with the shipped DDP config, named relative to the working directory."""
    raw = launched_config("experiments/accelerate/ddp.yaml")
    config_path = tmp_path / "launched.yaml"
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    workdir = tmp_path / "runs"

    result = subprocess.run(
        [sys.executable, "-m", "rspo_bench.cli", "train", str(config_path), "--variant", VARIANT,
         "--workdir", str(workdir), "--data-dir", str(data_dir)],
        cwd=ROOT, env=launch_environment(), capture_output=True, text=True, timeout=540,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    assert "launching: " in result.stderr
    assert f"launched.train.{VARIANT}-{COEF:g}" in result.stdout + result.stderr
    assert_launch_matches_in_process(raw, workdir / "cache", tmp_path, data_dir)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="deepspeed is not installed; install it with pip install 'rspo-bench[deepspeed]'",
)
@pytest.mark.skipif(
    missing_build_tool() is not None,
    reason=f"DeepSpeed builds its shared-memory communication op at start-up: {missing_build_tool()}",
)
@pytest.mark.parametrize("save_16bit_model", [True, False], ids=["save_16bit_model", "no_save_16bit_model"])
def test_zero3_launch_saves_full_weights(tmp_path, data_dir, monkeypatch, save_16bit_model):
    """ZeRO-3 leaves each process one shard, but the saved policy must contain every full weight.

    accelerate's get_state_dict raises without zero3_save_16bit_model, so the second
    case checks that worlds.hf.save_policy gathers the shards without it.
    """
    raw = launched_config(partitioned_zero3_config(tmp_path, save_16bit_model))
    cache_dir = tmp_path / "cache"
    config = parse_config(raw)
    world = TinyWorld(config, StageCache(cache_dir), data_dir)
    variant = next(item for item in config.sweep.variants if item.name == VARIANT)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    policy = run_selfplay(world, variant, COEF)

    saved = load_file(policy.path / "model.safetensors")
    assert saved, "the saved checkpoint has no tensors"
    for name, tensor in saved.items():
        assert tensor.numel() > 0, f"{name} was saved empty, as a ZeRO-3 shard placeholder"
    launched_path = assert_launch_matches_in_process(raw, cache_dir, tmp_path, data_dir)
    assert launched_path == policy.path


def test_launcher_missing_config_file_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    launcher = LauncherConfig(config_file="accelerate/missing.yaml")

    with pytest.raises(LaunchError, match="accelerate/missing.yaml") as raised:
        check_launcher(launcher)

    assert str(tmp_path / "accelerate" / "missing.yaml") in str(raised.value)


def test_launcher_relative_path_uses_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)

    check_launcher(LauncherConfig(config_file="experiments/accelerate/ddp.yaml"))


def test_accelerate_cli_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(LaunchError, match="accelerate command was not found"):
        accelerate_cli(python=tmp_path / "bin" / "python")


def test_accelerate_cli_prefers_python_folder(tmp_path, monkeypatch):
    beside_python = Path(sys.executable).parent / "accelerate"
    if not beside_python.is_file():
        pytest.skip(f"no accelerate command in {beside_python.parent}, the folder of this Python")
    other = tmp_path / "accelerate"
    other.write_text("#!/bin/sh\nexit 1\n", encoding="utf-8")
    other.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert accelerate_cli() == str(beside_python)


def test_launch_failure_quotes_log_and_status(tmp_path):
    command = [sys.executable, "-c", "print('loading policy'); print('step 3 diverged'); raise SystemExit(3)"]

    with pytest.raises(LaunchError, match="status 3") as raised:
        run_launch(command, tmp_path / "launch.log")

    assert "step 3 diverged" in str(raised.value)
    assert "First error: none found" in str(raised.value)
    assert "step 3 diverged" in (tmp_path / "launch.log").read_text(encoding="utf-8")


def test_launch_failure_quotes_first_error(tmp_path):
    script = "print('ValueError: invalid deepspeed config'); print('summary\\n' * 50); raise SystemExit(1)"

    with pytest.raises(LaunchError, match="First error: ValueError: invalid deepspeed config"):
        run_launch([sys.executable, "-c", script], tmp_path / "launch.log")


def test_launcher_num_processes_positive():
    raw = launched_config("experiments/accelerate/ddp.yaml")
    raw["training"]["launcher"]["num_processes"] = 0

    with pytest.raises(ConfigError, match=r"training\.launcher\.num_processes"):
        parse_config(raw)


def test_launcher_rejected_in_game_world():
    raw = launched_config("experiments/accelerate/ddp.yaml")
    raw["world"] = {"kind": "game", "game": {}}

    with pytest.raises(ConfigError, match="training.launcher applies only to world.kind 'tiny' or 'hf'"):
        parse_config(raw)


def test_launcher_not_in_stage_key():
    plain = TrainingConfig(batch_size=2)
    launched = TrainingConfig(batch_size=2, launcher={"config_file": "experiments/accelerate/ddp.yaml"})

    assert training_key(launched) == training_key(plain)
    assert "launcher" not in training_key(plain)


def test_sweep_command_rejects_missing_launcher_file(tmp_path):
    raw = launched_config(tmp_path / "missing.yaml")
    config_path = tmp_path / "launched.yaml"
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")

    result = CliRunner().invoke(app, ["sweep", str(config_path), "--workdir", str(tmp_path / "runs")])

    assert result.exit_code == 2, result.output
    assert "missing.yaml" in result.output


def test_train_command_rejects_unknown_variant(tmp_path):
    config_path = tmp_path / "launched.yaml"
    raw = launched_config(ROOT / "experiments/accelerate/ddp.yaml")
    config_path.write_text(yaml.safe_dump(raw), encoding="utf-8")

    result = CliRunner().invoke(
        app, ["train", str(config_path), "--variant", "nope", "--workdir", str(tmp_path)]
    )

    assert result.exit_code == 2, result.output
    assert "variant 'nope' not found" in result.output
