"""The policy stage of one self-play iteration, trained under ``accelerate launch``.

With ``training.launcher`` set, :func:`rspo_bench.selfplay.run_selfplay` writes a
job file and runs::

    accelerate launch --config_file F --num_processes N -m rspo_bench.train_stage JOB.json

Every launched process loads the parent policy, trains its shard of each global
batch with :func:`rspo_bench.trainer.train_iteration` and joins the saving of the
full weights. The main process writes the policy and ``train_metrics.json`` into
the job's output folder, which is the stage cache's staging folder, so the cache
publishes the entry only after the launch exits with status 0.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .cache import StageCache
from .config import ExperimentConfig, LauncherConfig, VariantConfig
from .logs import get_logger
from .trainer import PairRecord

if TYPE_CHECKING:
    from .selfplay import PolicyRef, TinyWorld

logger = get_logger(__name__)

JOB_FORMAT = 1
# Lines of the launch's output quoted in the error when it fails.
LOG_TAIL_LINES = 40
# A Python exception line, such as "ValueError: ..." or "torch.OutOfMemoryError: ...".
EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception)\b.*:")


class LaunchError(RuntimeError):
    """``training.launcher`` cannot start, or the launched training failed."""


def accelerate_cli(python: str | os.PathLike[str] = sys.executable) -> str:
    """Return the ``accelerate`` command next to ``python``, or else the one on PATH.

    The command next to the interpreter comes first, because ``accelerate launch``
    starts the training processes with its own Python, which must have rspo_bench.
    """
    beside_python = Path(python).parent / "accelerate"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("accelerate")
    if on_path is not None:
        return on_path
    raise LaunchError(
        f"training.launcher is set, but the accelerate command was not found in {beside_python.parent} or on "
        f"PATH; install it with 'pip install accelerate' in the environment of {python}, or remove "
        f"training.launcher to train in this process"
    )


def resolve_config_file(launcher: LauncherConfig) -> Path:
    """Return the launcher's accelerate config file as an absolute path; a relative one starts at the CWD."""
    path = launcher.config_file.expanduser().resolve()
    if not path.is_file():
        raise LaunchError(
            f"training.launcher.config_file {launcher.config_file} not found (resolved against the working "
            f"directory {Path.cwd()} to {path}); give an existing accelerate config file such as "
            f"experiments/accelerate/ddp.yaml, or an absolute path"
        )
    return path


def check_launcher(launcher: LauncherConfig | None) -> None:
    """Raise :class:`LaunchError` when the launcher's config file or the accelerate command is missing."""
    if launcher is None:
        return
    resolve_config_file(launcher)
    accelerate_cli()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(launcher: LauncherConfig, job_path: Path) -> list[str]:
    """Return the ``accelerate launch`` command line that runs the job in ``job_path``."""
    command = [accelerate_cli(), "launch", "--config_file", str(resolve_config_file(launcher))]
    if launcher.num_processes is not None:
        command += ["--num_processes", str(launcher.num_processes)]
    # A fresh port per launch, so trainings that sweep workers launch on one machine do not collide
    # on the config's default port. NOTE: another program can take the port before the launch binds it.
    command += ["--main_process_port", str(_free_port())]
    return command + ["-m", "rspo_bench.train_stage", str(job_path)]


def write_job(
    path: Path,
    *,
    world: TinyWorld,
    parent: PolicyRef,
    records: list[PairRecord],
    variant: VariantConfig,
    coef: float,
    iteration: int,
    seed: int,
    output_dir: Path,
) -> None:
    """Write everything the launched processes need to train one iteration as the sweep process would."""
    # The launched processes train in their own process, so their copy of the config has no launcher.
    training = world.config.training.model_copy(update={"launcher": None})
    config = world.config.model_copy(update={"training": training})
    job = {
        "format": JOB_FORMAT,
        "config": config.model_dump(mode="json"),
        "data_dir": str(world.data_dir),
        "cache_dir": str(Path(world.cache.root).resolve()),
        "parent": {"key": parent.key, "path": str(Path(parent.path))},
        "records": [asdict(record) for record in records],
        "variant": variant.model_dump(mode="json"),
        "coef": coef,
        "iteration": iteration,
        "seed": seed,
        "output_dir": str(Path(output_dir).resolve()),
    }
    path.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")


def run_launch(command: list[str], log_path: Path) -> None:
    """Run ``command``, copy its output to stderr and ``log_path``, and raise :class:`LaunchError` on failure.

    The error quotes the first exception line of the output, which is usually the
    training process's own error, and the last lines, which are torchrun's summary.
    """
    python_folder = str(Path(sys.executable).parent)
    environment = {**os.environ, "PATH": os.pathsep.join([python_folder, os.environ.get("PATH", "")])}
    logger.info("launching: %s", " ".join(command))
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    first_error = None
    with log_path.open("w", encoding="utf-8") as log, subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, bufsize=1
    ) as process:
        for line in process.stdout:
            log.write(line)
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
            if first_error is None and EXCEPTION_LINE.match(line):
                first_error = line.strip()
        returncode = process.wait()
    if returncode != 0:
        last_lines = "\n".join(tail)
        raise LaunchError(
            f"accelerate launch exited with status {returncode}. First error: {first_error or 'none found'}. "
            f"The full output is in {log_path}; its last {len(tail)} lines:\n{last_lines}"
        )


def launch_training(
    world: TinyWorld,
    parent: PolicyRef,
    records: list[PairRecord],
    variant: VariantConfig,
    coef: float,
    *,
    iteration: int,
    seed: int,
    output_dir: Path,
) -> None:
    """Train one iteration under ``training.launcher``; the policy and its metrics go to ``output_dir``."""
    launcher = world.config.training.launcher
    if launcher is None:
        raise ValueError("launch_training needs training.launcher to be set")
    # Removed after a successful launch only, so that a failed launch's log stays readable.
    folder = Path(tempfile.mkdtemp(prefix=f"rspo-train-iter{iteration}-"))
    job_path = folder / "job.json"
    write_job(
        job_path, world=world, parent=parent, records=records, variant=variant, coef=coef,
        iteration=iteration, seed=seed, output_dir=output_dir,
    )
    run_launch(launch_command(launcher, job_path), folder / "launch.log")
    shutil.rmtree(folder, ignore_errors=True)
    if not (Path(output_dir) / "train_metrics.json").is_file():
        raise LaunchError(
            f"accelerate launch exited with status 0 but wrote no train_metrics.json into {output_dir}"
        )


# ---------------------------------------------------------------------------
# Inside the launched processes
# ---------------------------------------------------------------------------


def _build_world(config: ExperimentConfig, cache: StageCache, data_dir: str) -> TinyWorld:
    """Construct the world of ``config``; the constructors read no data and load no model."""
    from .selfplay import TinyWorld

    if config.world.kind == "tiny":
        return TinyWorld(config, cache, data_dir)
    if config.world.kind == "hf":
        from .worlds.hf_selfplay import HFWorld

        return HFWorld(config, cache, data_dir)
    raise ValueError(f"world.kind {config.world.kind!r} has no language-model policy to train")


def _mean_over_processes(metrics: dict[str, float], accelerator) -> dict[str, float]:
    """Average each process's mean metrics, which are over its own rows, into the global batch's means.

    Every process trains on the same number of rows per step, so the mean of the
    processes' means is the mean over the global batch, as in one process.
    """
    names = sorted(metrics)
    values = torch.tensor([metrics[name] for name in names], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(names, values.tolist(), strict=True))


def run_job(job: dict[str, Any]) -> dict[str, float]:
    """Train the job's iteration in this launched process and save the policy; return the mean metrics."""
    from .selfplay import PolicyRef, build_loss
    from .trainer import build_accelerator, train_iteration

    if job.get("format") != JOB_FORMAT:
        raise ValueError(f"job file format {job.get('format')!r} is not {JOB_FORMAT}; rerun the sweep")
    config = ExperimentConfig.model_validate(job["config"])
    world = _build_world(config, StageCache(job["cache_dir"]), job["data_dir"])
    variant = VariantConfig.model_validate(job["variant"])
    loss_fn = build_loss(variant, float(job["coef"]), config.sweep.beta)
    records = [PairRecord(**row) for row in job["records"]]
    output_dir = Path(job["output_dir"])
    seed = int(job["seed"])

    # Before the policy loads: under ZeRO-3 with zero3_init_flag, loading then partitions the weights.
    accelerator = build_accelerator()
    parent = PolicyRef(job["parent"]["key"], Path(job["parent"]["path"]))
    model, tokenizer = world.load_policy(parent, training=True)
    torch.manual_seed(seed)

    def save(prepared: torch.nn.Module) -> None:
        world.save_policy(prepared, tokenizer, output_dir, accelerator=accelerator)

    metrics = train_iteration(
        model, tokenizer, records, loss_fn, config.training, seed=seed, iteration=int(job["iteration"]),
        accelerator=accelerator, after_training=save,
    )
    metrics = _mean_over_processes(metrics, accelerator)
    if accelerator.is_main_process:
        (output_dir / "train_metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    # All processes close the process group together; a process that exits first made another
    # abort with "terminate called without an active exception" on a 2-core CPU.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def main(argv: list[str] | None = None) -> None:
    from .logs import setup_logging

    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        raise SystemExit("usage: python -m rspo_bench.train_stage JOB.json")
    setup_logging()
    job = json.loads(Path(arguments[0]).read_text(encoding="utf-8"))
    run_job(job)
    # Every output file is written and the process group is closed, so skip the interpreter's
    # teardown: in it rank 1 still aborted with "terminate called without an active exception"
    # in 2 of 6 ZeRO-3 launches on a 2-core CPU (DeepSpeed 0.19.8, torch 2.13).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
