"""Time a 9-trial grid on the tiny world with one shared stage cache and with a cache per trial.

    python benchmarks/sweep_cache.py [--workdir DIR] [--data-dir DIR] [--runs shared,separate,subprocess]

Runs, each from empty folders and inside this Python process (so every run
pays the same imports once):

1. shared: the whole grid as one sweep with one cache. Its trials share the
   tokenizer, the base policy, the judge and iteration 1's samples,
   preferences and log-probs;
2. separate: each trial as a sweep of its own with a fresh cache, which
   recomputes everything a trial needs;
3. shared, trials in subprocesses: the grid again with ``--workers 1``
   semantics (one trial process at a time), to show the cost of a process
   per trial.

Engine overhead is the sweep's wall time minus the time spent inside the
trials (the ``trial/seconds`` metric of each MLflow run): opening the study
and the MLflow runs, claiming and recording trials, and, with subprocesses,
starting Python and loading the world for each trial. Prints Markdown rows
for docs/benchmarks.md. Needs RSPO_BENCH_DATA (or --data-dir).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import mlflow

from rspo_bench.config import parse_config
from rspo_bench.logs import setup_logging
from rspo_bench.sweeps.grid import expand_grid
from rspo_bench.sweeps.runner import SweepOptions, SweepPaths, run_sweep

WORLD = {
    "seed": 0,
    "world": {
        "model": {"vocab_size": 1024, "hidden_size": 48, "intermediate_size": 128, "num_hidden_layers": 2,
                  "num_attention_heads": 4},
        "warmup": {"num_examples": 300, "epochs": 2, "batch_size": 16},
    },
    "prompts": {"per_iteration": 32},
    "selfplay": {"iterations": 2, "sampling": {"num_samples": 4, "max_new_tokens": 32}},
    "training": {"batch_size": 8, "learning_rate": 3.0e-4},
    "evaluation": {"alpaca_eval2": {"max_instructions": 100,
                                    "sampling": {"num_samples": 1, "max_new_tokens": 32}}},
}
VARIANTS = [
    {"name": "reverse_kl", "regularizers": [{"name": "reverse_kl"}], "coefs": [0.01, 0.1, 1.0]},
    {"name": "is_forward_kl", "regularizers": [{"name": "is_forward_kl", "params": {"clip": 10}}],
     "coefs": [0.01, 0.1, 1.0]},
    {"name": "chi_squared", "regularizers": [{"name": "chi_squared", "params": {"clip": 10}}],
     "coefs": [0.01, 0.1, 1.0]},
]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def experiment(name: str, variants: list[dict]) -> dict:
    return {"name": name, **WORLD, "sweep": {"include_base": False, "variants": variants}}


def trial_seconds(tracking_uri: str, sweep: str) -> float:
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_experiment_by_name(sweep).experiment_id
    runs = client.search_runs([experiment_id], "tags.`rspo.role` = 'trial'")
    return sum(run.data.metrics["trial/seconds"] for run in runs)


def timed_sweep(raw: dict, workdir: Path, data_dir: str | None,
                workers: int = 0) -> tuple[float, float, float]:
    """Return (sweep wall time, engine set-up time, time inside trials) of one sweep from empty folders."""
    paths = SweepPaths.under(workdir)
    started = time.perf_counter()
    result = run_sweep(parse_config(raw), paths, data_dir=data_dir, report_formats=(),
                       options=SweepOptions(workers=workers))
    wall = time.perf_counter() - started
    if result.failed:
        raise SystemExit(f"trials failed: {result.failed}")
    return wall, result.setup_seconds, trial_seconds(paths.tracking_uri, raw["name"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None,
                        help="Empty folder for the runs; default: a new temporary folder.")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", default="shared,separate,subprocess",
                        help="Comma-separated runs to do: shared, separate, subprocess.")
    args = parser.parse_args()
    setup_logging("WARNING")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("RSPO_BENCH_PROGRESS", "0")
    root = Path(args.workdir or tempfile.mkdtemp(prefix="rspo-sweep-cache-"))
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"work folder {root} is not empty; every run must start without a cache")

    runs = {name.strip() for name in args.runs.split(",")}
    load_before = os.getloadavg()
    rows: dict[str, tuple[str, float, float, float]] = {}
    if "shared" in runs:
        rows["shared"] = ("shared cache, trials in-process",
                          *timed_sweep(experiment("shared", VARIANTS), root / "shared", args.data_dir))
    if "separate" in runs:
        trials = expand_grid(parse_config(experiment("x", VARIANTS)).sweep)
        totals = [0.0, 0.0, 0.0]
        for index, spec in enumerate(trials):
            variant = spec.variant.model_dump(mode="json") | {"coefs": [spec.coef]}
            measured = timed_sweep(experiment(f"separate{index}", [variant]), root / f"separate{index}",
                                   args.data_dir)
            totals = [total + value for total, value in zip(totals, measured, strict=True)]
        rows["separate"] = (f"cache per trial ({len(trials)} sweeps of 1 trial)", *totals)
    if "subprocess" in runs:
        rows["subprocess"] = ("shared cache, a subprocess per trial (--workers 1)",
                              *timed_sweep(experiment("subprocess", VARIANTS), root / "subprocess",
                                           args.data_dir, workers=1))
    load_after = os.getloadavg()

    print(f"machine: {machine()}; 1-minute load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    print("command: python benchmarks/sweep_cache.py")
    print()
    print("| run | wall time (s) | time in trials (s) | engine overhead (s): set-up + per trial "
          "| overhead / trial time: all, without set-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, wall, setup, inside in rows.values():
        overhead = wall - inside
        print(f"| {label} | {wall:.1f} | {inside:.1f} | {overhead:.1f}: {setup:.1f} + {overhead - setup:.1f} "
              f"| {overhead / inside:.1%}, {(overhead - setup) / inside:.1%} |")
    if "shared" in rows and "separate" in rows:
        print()
        print(f"wall-time ratio shared / separate: {rows['shared'][1] / rows['separate'][1]:.2f}")


if __name__ == "__main__":
    main()
