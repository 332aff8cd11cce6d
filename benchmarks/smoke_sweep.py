"""Time the smoke sweep from an empty work folder, then its rerun from the cache.

    python benchmarks/smoke_sweep.py [--config experiments/smoke.yaml] [--workdir DIR]

Prints one Markdown table row per run with the machine, the command and the wall
time, ready for docs/benchmarks.md. Needs RSPO_BENCH_DATA (or --data-dir).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe_machine

REPO = Path(__file__).resolve().parent.parent


def run(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "RSPO_BENCH_PROGRESS": "0"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "smoke.yaml"))
    parser.add_argument("--workdir", default=None, help="Work folder; default: a fresh temporary folder.")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rspo-smoke-"))
    if workdir.exists() and any(workdir.iterdir()):
        sys.exit(f"work folder {workdir} is not empty; the first run must start without a cache")
    command = [sys.executable, "-m", "rspo_bench.cli", "sweep", args.config, "--workdir", str(workdir),
               "--report-dir", str(workdir / "report")]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    first = run(command)
    second = run(command)
    print("| run | wall time (s) | machine | command |")
    print("| --- | ---: | --- | --- |")
    shown = " ".join(["rspo-bench", *command[3:]])
    print(f"| first (empty cache) | {first:.0f} | {describe_machine()} | `{shown}` |")
    print(f"| rerun (same workdir) | {second:.0f} | {describe_machine()} | same |")
    print(f"\nrerun / first = {second / first:.3f}")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
