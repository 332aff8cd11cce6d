"""Two-process data-parallel training under ``accelerate launch`` matches one process.

The DDP launch uses ``experiments/accelerate/ddp.yaml``, whose multi-GPU launcher starts
two processes through torch.distributed; the script's ``Accelerator(cpu=True)``, from
``rspo_bench.trainer.build_accelerator``, then makes them CPU processes that communicate
over gloo. (``accelerate launch --cpu`` with several processes needs mpirun in
accelerate 1.16 and otherwise starts one.) The slow ZeRO-3 test launches
``experiments/accelerate/zero3.yaml`` in float32, where DeepSpeed runs on its CPU
accelerator over gloo and partitions the weights, gradients and optimiser state.
NOTE: DeepSpeed 0.19.8 keeps weights below stage3_param_persistence_threshold
(100,000 elements) whole on every process, which covers every weight of this model.
tests/test_launched_training.py sets the threshold to 0 to shard them.

``rspo_bench.trainer.train_iteration`` cuts each global batch of
``training.batch_size`` rows into one shard per process (rank r takes every
second row). The launched script gives both ranks all the records and the
global batch size. DDP averages the two ranks' gradients, and both the SPPO term and the regularizers are
means over the batch, so each step's averaged gradient equals the gradient of the
full global batch in one process. With one batch per rank and epoch, the shuffle
inside an epoch changes nothing, and several epochs give several comparable steps.

Tolerance: the two runs add the same float32 numbers in a different order (two
half-batch means, then gloo's all-reduce, instead of one full-batch mean), so
gradients differ by float32 rounding, about 1e-7 relative. RMSprop divides each
gradient by the root of its running square, so an update's relative error is of the
same order, except for gradients near RMSprop's eps of 1e-8, whose updates are below
lr * 1e-2 whichever way they round. After three steps at lr 1e-3 the weights must
agree within 1e-4 absolute (the largest difference measured on a 2-core x86 CPU was
8e-7 under DDP and 1.6e-6 under ZeRO-3 with DeepSpeed 0.19.8), while the training moves
them by more than 1e-2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator

from rspo_bench.config import TinyModelConfig, TrainingConfig
from rspo_bench.methods import RegularizerTerm, RSPOLoss, SoftSPPOLoss, build_regularizer
from rspo_bench.trainer import PairRecord, train_iteration
from rspo_bench.worlds import tiny

ROOT = Path(__file__).resolve().parent.parent
DDP_CONFIG = ROOT / "experiments" / "accelerate" / "ddp.yaml"
ZERO3_CONFIG = ROOT / "experiments" / "accelerate" / "zero3.yaml"
GLOBAL_BATCH = 8
EPOCHS = 3
LEARNING_RATE = 1e-3
TOLERANCE = 1e-4

TEXTS = [
    "Write a short poem about the sea and the wind.",
    "Explain how photosynthesis turns light into chemical energy.",
    "The capital of France is Paris, on the river Seine.",
    "List three prime numbers larger than ten: 11, 13 and 17.",
] * 8

# Runs under `accelerate launch`: every rank gets all records; train_iteration shards each global batch.
SCRIPT = """
import json
import sys

import torch
from accelerate.utils import DistributedType

from rspo_bench.config import TrainingConfig
from rspo_bench.methods import RegularizerTerm, RSPOLoss, SoftSPPOLoss, build_regularizer
from rspo_bench.trainer import PairRecord, build_accelerator, train_iteration
from rspo_bench.worlds import tiny

policy, records_path, output_path, epochs, learning_rate, per_device_batch_size = sys.argv[1:7]
# CPU processes over gloo, under DDP or DeepSpeed, whichever the launch config sets.
accelerator = build_accelerator()
rank, world_size = accelerator.process_index, accelerator.num_processes
records = [PairRecord(**row) for row in json.loads(open(records_path).read())]
model, tokenizer = tiny.load_policy(policy)
loss = RSPOLoss(
    base=SoftSPPOLoss(beta=0.1),
    terms=[
        RegularizerTerm(build_regularizer("is_forward_kl", {"clip": 10.0}), 1.0),
        RegularizerTerm(build_regularizer("reverse_kl", {}), 5.0),
    ],
    coef=0.1,
)
config = TrainingConfig(
    batch_size=len(records), epochs=int(epochs), learning_rate=float(learning_rate), lr_warmup_ratio=0.0,
    max_prompt_tokens=48, max_response_tokens=24,
    per_device_batch_size=None if per_device_batch_size == "none" else int(per_device_batch_size),
)
metrics = train_iteration(model, tokenizer, records, loss, config, seed=0, iteration=1, accelerator=accelerator)
if accelerator.distributed_type == DistributedType.DEEPSPEED:
    import deepspeed

    # ZeRO-3 leaves each process one shard of every parameter, so every process joins the gather.
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
else:
    weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
if accelerator.is_main_process:
    torch.save(weights, output_path)
    print(json.dumps({"world_size": world_size, "distributed_type": str(accelerator.distributed_type),
                      "metrics": metrics}))
# Both ranks close the process group together. Without this, rank 1 sometimes aborted at exit with
# "terminate called without an active exception" (3 of about 50 launches on a 2-core CPU).
accelerator.wait_for_everyone()
accelerator.end_training()
"""


def headline_loss() -> RSPOLoss:
    return RSPOLoss(
        base=SoftSPPOLoss(beta=0.1),
        terms=[
            RegularizerTerm(build_regularizer("is_forward_kl", {"clip": 10.0}), 1.0),
            RegularizerTerm(build_regularizer("reverse_kl", {}), 5.0),
        ],
        coef=0.1,
    )


def fixed_records() -> list[PairRecord]:
    records = []
    for index in range(GLOBAL_BATCH):
        records.append(
            PairRecord(
                prompt=TEXTS[index % 4] + f" Variant {index}.",
                chosen=TEXTS[(index + 1) % 4],
                rejected=TEXTS[(index + 2) % 4][: 10 + index],
                chosen_win_prob=0.6 + 0.03 * index,
                rejected_win_prob=0.4 - 0.03 * index,
                chosen_prev_logp=-40.0 - index,
                rejected_prev_logp=-20.0 + index,
                chosen_ref_logp=-41.0 - index,
                rejected_ref_logp=-19.0 + index,
            )
        )
    return records


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("policy")
    tokenizer = tiny.train_tokenizer(TEXTS, vocab_size=300)
    model_config = TinyModelConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    tiny.save_policy(tiny.build_tiny_model(model_config, tokenizer, seed=0), tokenizer, folder)
    return folder


def single_process_weights(policy_dir: Path) -> dict[str, torch.Tensor]:
    model, tokenizer = tiny.load_policy(policy_dir)
    config = TrainingConfig(
        batch_size=GLOBAL_BATCH,
        epochs=EPOCHS,
        learning_rate=LEARNING_RATE,
        lr_warmup_ratio=0.0,
        max_prompt_tokens=48,
        max_response_tokens=24,
    )
    train_iteration(
        model,
        tokenizer,
        fixed_records(),
        headline_loss(),
        config,
        seed=0,
        iteration=1,
        accelerator=Accelerator(cpu=True),
    )
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def launch_training(
    config_path: Path, policy_dir: Path, tmp_path: Path, per_device_batch_size: int | None, *, timeout: int
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Train on 2 processes under ``accelerate launch`` and return rank 0's summary and the full weights."""
    if shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists():
        pytest.skip("the accelerate command is not installed")
    launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    records_path = tmp_path / "records.json"
    records_path.write_text(json.dumps([asdict(record) for record in fixed_records()]), encoding="utf-8")
    script_path = tmp_path / "train_shard.py"
    script_path.write_text(SCRIPT, encoding="utf-8")
    output_path = tmp_path / "distributed_weights.pt"

    command = [
        launcher,
        "launch",
        "--config_file",
        str(config_path),
        "--num_processes",
        "2",
        "--num_cpu_threads_per_process",
        "1",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(free_port()),
        str(script_path),
        str(policy_dir),
        str(records_path),
        str(output_path),
        str(EPOCHS),
        str(LEARNING_RATE),
        str(per_device_batch_size).lower(),
    ]
    environment = {
        **os.environ,
        "RSPO_BENCH_PROGRESS": "0",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=environment, cwd=tmp_path
    )
    assert result.returncode == 0, (
        f"accelerate launch failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return summary, torch.load(output_path, weights_only=True)


def assert_matches_single_process(distributed: dict[str, torch.Tensor], policy_dir: Path) -> None:
    initial, _ = tiny.load_policy(policy_dir)
    assert_weights_match(distributed, single_process_weights(policy_dir), initial.state_dict())


def assert_weights_match(
    distributed: dict[str, torch.Tensor], single: dict[str, torch.Tensor], initial: dict[str, torch.Tensor]
) -> None:
    """Check that training moved the weights from ``initial`` and that both runs agree within TOLERANCE."""
    largest_update = max((single[name] - initial[name]).abs().max().item() for name in single)
    assert largest_update > 100 * TOLERANCE, "training barely moved the weights, so the comparison is empty"
    assert distributed.keys() == single.keys()
    for name, tensor in single.items():
        assert distributed[name].shape == tensor.shape, f"{name}: {distributed[name].shape}, not {tensor.shape}"
        difference = (distributed[name] - tensor).abs().max().item()
        assert difference <= TOLERANCE, (
            f"{name}: two-process and single-process weights differ by {difference:.3g}"
        )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("per_device_batch_size", [None, 2], ids=["one_forward", "two_micro_batches"])
def test_two_process_ddp_matches_single_process(policy_dir, tmp_path, per_device_batch_size):
    """Each rank's 4 rows run in one forward pass, or in 2 micro-batches whose gradients accumulate."""
    summary, distributed = launch_training(
        DDP_CONFIG, policy_dir, tmp_path, per_device_batch_size, timeout=240
    )
    assert summary["world_size"] == 2
    assert summary["distributed_type"] == "DistributedType.MULTI_CPU"
    assert_matches_single_process(distributed, policy_dir)


def missing_build_tool() -> str | None:
    """Return what torch's C++ extension builder lacks here, or None when it has a compiler and Python.h."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"the C++ compiler {compiler!r} is not on PATH"
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        return f"Python.h is missing from {sysconfig.get_paths()['include']}; install the Python headers"
    return None


def cpu_zero3_config(folder: Path) -> Path:
    """Write the shipped ZeRO-3 config with float32 weights, because bf16 rounding exceeds TOLERANCE."""
    config = yaml.safe_load(ZERO3_CONFIG.read_text(encoding="utf-8"))
    assert config["distributed_type"] == "DEEPSPEED"
    assert config["deepspeed_config"]["zero_stage"] == 3
    config["mixed_precision"] = "no"
    path = folder / "zero3_cpu.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


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
@pytest.mark.parametrize("per_device_batch_size", [None, 2], ids=["one_forward", "two_micro_batches"])
def test_two_process_zero3_matches_single_process(policy_dir, tmp_path, per_device_batch_size):
    """ZeRO-3 partitions the weights over 2 CPU processes and must train them as one process does."""
    # The first launch on a machine also compiles DeepSpeed's shared-memory op (20 s on a 2-core x86 CPU).
    summary, distributed = launch_training(
        cpu_zero3_config(tmp_path), policy_dir, tmp_path, per_device_batch_size, timeout=600
    )
    assert summary["world_size"] == 2
    assert summary["distributed_type"] == "DistributedType.DEEPSPEED"
    assert_matches_single_process(distributed, policy_dir)
