"""Time the report of a synthetic 500-trial sweep: MLflow collection, HTML, and PDF separately.

The sweep (base, SPPO and 5 regularized variants at log-uniform λ, 3 iterations
with per-iteration evaluation, a few pruned and failed trials) is logged with
MlflowClient.log_batch into a SQLite store in a temporary folder, which is
deleted afterwards. Usage:

    python benchmarks/report_500.py [--trials 500] [--iterations 3] [--no-pdf] [--compare-history-reads]

With --compare-history-reads it also times collection without the bulk history
read: per run and metric on 8 threads, and one call at a time as before the bulk read.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from rspo_bench.reporting import collect
from rspo_bench.reporting.collect import collect_sweep
from rspo_bench.reporting.html import render_html, write_pdf
from rspo_bench.reporting.synthetic import benchmark_trials, log_sweep

SWEEP = "report-benchmark"


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _time_per_metric_reads(tracking_uri: str) -> dict[str, float]:
    """Time collect_sweep with the per-run, per-metric history reads, on 8 threads and on 1."""
    bulk = collect._read_histories
    threads = collect._HISTORY_THREADS
    times = {}
    try:
        collect._read_histories = collect._read_histories_per_metric
        for count in (threads, 1):
            collect._HISTORY_THREADS = count
            started = time.perf_counter()
            collect_sweep(tracking_uri, SWEEP)
            times[f"per-metric history reads on {count} thread{'s' if count > 1 else ''}"] = (
                time.perf_counter() - started
            )
    finally:
        collect._read_histories = bulk
        collect._HISTORY_THREADS = threads
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trials", type=int, default=500, help="Trials in the synthetic sweep, base model included."
    )
    parser.add_argument("--iterations", type=int, default=3, help="Self-play iterations logged per trial.")
    parser.add_argument("--no-pdf", action="store_true", help="Skip the PDF timing.")
    parser.add_argument(
        "--compare-history-reads",
        action="store_true",
        help="Also time collect_sweep with per-metric history reads (8 threads, then 1).",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rspo-report-bench-") as folder:
        root = Path(folder)
        tracking_uri = f"sqlite:///{root}/mlruns.db"
        started = time.perf_counter()
        trials = benchmark_trials(args.trials, args.iterations)
        log_sweep(tracking_uri, SWEEP, trials, iterations=args.iterations)
        logged = time.perf_counter() - started

        started = time.perf_counter()
        sweep = collect_sweep(tracking_uri, SWEEP)
        collected = time.perf_counter() - started
        per_metric = _time_per_metric_reads(tracking_uri) if args.compare_history_reads else {}

        started = time.perf_counter()
        html = render_html([sweep])
        (root / "report.html").write_text(html, encoding="utf-8")
        rendered = time.perf_counter() - started

        pdf_seconds = None
        if not args.no_pdf:
            started = time.perf_counter()
            write_pdf(html, root / "report.pdf")
            pdf_seconds = time.perf_counter() - started
            pdf_size = (root / "report.pdf").stat().st_size

        print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
        try:
            print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        except OSError:
            pass
        print(f"trials: {len(sweep.trials)}, iterations: {args.iterations}")
        print(f"log synthetic sweep (log_batch): {logged:.1f} s")
        print(f"collect_sweep: {collected:.1f} s")
        for label, seconds in per_metric.items():
            print(f"collect_sweep, {label}: {seconds:.1f} s")
        print(f"write_report HTML: {rendered:.1f} s ({len(html) / 2**20:.1f} MiB)")
        print(f"collect + HTML: {collected + rendered:.1f} s")
        if pdf_seconds is not None:
            print(f"PDF from the same HTML: {pdf_seconds:.1f} s ({pdf_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
