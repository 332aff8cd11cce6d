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

CPU time (this process and its trial processes) is reported beside the wall
time because the machine may be shared: other jobs lengthen the wall time much
more than the CPU time. Engine overhead is the sweep's wall time minus the
time spent inside the trials (the ``trial/seconds`` metric of each MLflow
run): opening the study and the MLflow runs, claiming and recording trials,
and, with subprocesses, starting Python and loading the world for each trial.
Prints Markdown rows for docs/benchmarks.md. Needs RSPO_BENCH_DATA (or
--data-dir).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import mlflow
from _machine import describe_machine

from rspo_bench.config import parse_config
from rspo_bench.logs import setup_logging
from rspo_bench.sweeps.grid import expand_grid
from rspo_bench.sweeps.runner import SweepOptions, SweepPaths, run_sweep

# The smoke sweep's world (experiments/smoke.yaml) with a shorter warm-up, so that the
# nine cache-per-trial sweeps, which each repeat the warm-up, finish in minutes.
WORLD = {
    "seed": 0,
    "world": {
        "model": {"vocab_size": 2048, "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
                  "num_attention_heads": 4},
        "warmup": {"num_examples": 400, "epochs": 2, "learning_rate": 3.0e-3, "batch_size": 16},
    },
    "prompts": {"per_iteration": 64},
    "selfplay": {"iterations": 2, "sampling": {"num_samples": 4, "max_new_tokens": 64}},
    "training": {"batch_size": 8, "learning_rate": 3.0e-4},
    "evaluation": {"alpaca_eval2": {"max_instructions": None,
                                    "sampling": {"num_samples": 1, "max_new_tokens": 64}}},
}
VARIANTS = [
    {"name": "reverse_kl", "regularizers": [{"name": "reverse_kl"}], "coefs": [0.01, 0.1, 1.0]},
    {"name": "is_forward_kl", "regularizers": [{"name": "is_forward_kl", "params": {"clip": 10}}],
     "coefs": [0.01, 0.1, 1.0]},
    {"name": "chi_squared", "regularizers": [{"name": "chi_squared", "params": {"clip": 10}}],
     "coefs": [0.01, 0.1, 1.0]},
]


def experiment(name: str, variants: list[dict]) -> dict:
    return {"name": name, **WORLD, "sweep": {"include_base": False, "variants": variants}}


def trial_seconds(tracking_uri: str, sweep: str) -> float:
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_experiment_by_name(sweep).experiment_id
    runs = client.search_runs([experiment_id], "tags.`rspo.role` = 'trial'")
    return sum(run.data.metrics["trial/seconds"] for run in runs)


def cpu_seconds() -> float:
    """Return the CPU time (user + system) of this process and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_sweep(raw: dict, workdir: Path, data_dir: str | None,
                workers: int = 0) -> tuple[float, float, float, float]:
    """Return (wall time, CPU time, fixed engine time, time in trials) of a sweep from empty folders."""
    paths = SweepPaths.under(workdir)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    result = run_sweep(parse_config(raw), paths, data_dir=data_dir, report_formats=(),
                       options=SweepOptions(workers=workers))
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    if result.failed:
        raise SystemExit(f"trials failed: {result.failed}")
    return wall, cpu, result.fixed_seconds, trial_seconds(paths.tracking_uri, raw["name"])


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
    rows: dict[str, tuple[str, float, float, float, float]] = {}
    if "shared" in runs:
        rows["shared"] = ("shared cache, trials in-process",
                          *timed_sweep(experiment("shared", VARIANTS), root / "shared", args.data_dir))
    if "separate" in runs:
        trials = expand_grid(parse_config(experiment("x", VARIANTS)).sweep)
        totals = [0.0, 0.0, 0.0, 0.0]
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

    print(f"machine: {describe_machine()}; 1-minute load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    print("command: python benchmarks/sweep_cache.py")
    print()
    print("| run | wall time (s) | CPU time (s) | time in trials (s) "
          "| engine overhead (s): fixed + per trial | overhead / trial time: all, per trial |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, wall, cpu, fixed, inside in rows.values():
        overhead = wall - inside
        print(f"| {label} | {wall:.1f} | {cpu:.1f} | {inside:.1f} | {overhead:.1f}: {fixed:.1f} + "
              f"{overhead - fixed:.1f} | {overhead / inside:.1%}, {(overhead - fixed) / inside:.1%} |")
    if "shared" in rows and "separate" in rows:
        print()
        print(f"ratio shared / separate: wall time {rows['shared'][1] / rows['separate'][1]:.2f}, "
              f"CPU time {rows['shared'][2] / rows['separate'][2]:.2f}")


if __name__ == "__main__":
    main()
