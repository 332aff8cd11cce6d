"""The ``rspo-bench`` command line."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import ConfigError, load_config
from .data import ENV_VAR, DataFileNotFoundError
from .evals.score_cli import score_app
from .logs import get_logger, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sweeps, evaluation and reports for RSPO/SPPO.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect the stage cache.")
app.add_typer(cache_app, name="cache")
app.add_typer(score_app, name="score")
console = Console(stderr=True)
logger = get_logger("cli")

EXIT_INVALID_INPUT = 2

WorkdirOption = Annotated[
    Path, typer.Option("--workdir", help="Folder for the MLflow store, the Optuna study and the stage cache.")
]
DataDirOption = Annotated[
    Path | None,
    typer.Option("--data-dir", help=f"Benchmark data folder; default: ${ENV_VAR}, then ~/.cache/rspo-bench/data."),
]
TrackingOption = Annotated[
    str | None, typer.Option("--tracking-uri", help="MLflow tracking URI; default: sqlite:///WORKDIR/mlruns.db.")
]


def _load_or_exit(path: Path):
    try:
        return load_config(path)
    except ConfigError as error:
        console.print(f"[red]invalid config[/red]\n{error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)
    # transformers' own per-call bars (weight loading, shard writing) would interleave with ours.
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="Experiment YAML file.")]) -> None:
    """Check an experiment file and list every invalid field at once (exit code 2 when invalid)."""
    from .sweeps.grid import expand_grid

    experiment = _load_or_exit(config)
    trials = expand_grid(experiment.sweep)
    console.print(f"[green]valid[/green]: {config} ({len(trials)} trials: {', '.join(t.key for t in trials)})")


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    workdir: WorkdirOption = Path("runs"),
    data_dir: DataDirOption = None,
    tracking_uri: TrackingOption = None,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna storage URL; default: SQLite in WORKDIR.")] = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Stage cache folder; default: WORKDIR/cache.")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="Report folder; default: reports/<sweep name>.")] = None,
    report_format: Annotated[str, typer.Option("--format", help="Report formats, comma-separated: html, pdf; '' for none.")] = "html",
) -> None:
    """Run a grid sweep: self-play training and AlpacaEval-2 evaluation of every trial, then the report."""
    from .sweeps.runner import SweepPaths, run_sweep

    experiment = _load_or_exit(config)
    paths = SweepPaths.under(workdir, tracking_uri=tracking_uri, storage=storage, cache_dir=cache_dir)
    formats = tuple(item.strip() for item in report_format.split(",") if item.strip())
    try:
        result = run_sweep(experiment, paths, data_dir=data_dir, report_formats=formats, report_dir=report_dir)
    except DataFileNotFoundError as error:
        console.print(f"[red]missing data[/red]: {error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    table = Table(title=f"sweep {result.name}: {result.seconds:.0f} s")
    table.add_column("trial")
    table.add_column("state")
    table.add_column("LC win rate (proxy judge)", justify="right")
    for key, value in result.completed.items():
        table.add_row(key, "completed", f"{value:.2f}")
    for key, value in result.skipped.items():
        table.add_row(key, "already complete", f"{value:.2f}")
    for key, message in result.failed.items():
        table.add_row(key, "[red]failed[/red]", message[:80])
    Console().print(table)
    for kind, path in result.report.items():
        Console().print(f"report ({kind}): {path}")
    Console().print(f"MLflow: {result.tracking_uri}  (rspo-bench ui --workdir {workdir})")
    if result.failed:
        raise typer.Exit(1)


@app.command()
def report(
    sweeps: Annotated[list[str], typer.Argument(help="Sweep names (the experiment 'name' fields).")],
    workdir: WorkdirOption = Path("runs"),
    tracking_uri: TrackingOption = None,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Report folder; default: reports/<names>.")] = None,
    report_format: Annotated[str, typer.Option("--format", help="Comma-separated: html, pdf.")] = "html",
) -> None:
    """Write the HTML (and PDF) report of one or more sweeps from the MLflow store."""
    from .sweeps.runner import SweepPaths, write_sweep_report

    paths = SweepPaths.under(workdir, tracking_uri=tracking_uri)
    formats = tuple(item.strip() for item in report_format.split(",") if item.strip())
    try:
        written = write_sweep_report(paths.tracking_uri, sweeps, output_dir, formats)
    except LookupError as error:
        console.print(f"[red]{error}[/red]", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    for kind, path in written.items():
        Console().print(f"report ({kind}): {path}")


@app.command()
def ui(
    workdir: WorkdirOption = Path("runs"),
    tracking_uri: TrackingOption = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Start the MLflow UI on 127.0.0.1 for the sweep store."""
    from .sweeps.runner import SweepPaths

    paths = SweepPaths.under(workdir, tracking_uri=tracking_uri)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", paths.tracking_uri,
               "--host", "127.0.0.1", "--port", str(port)]
    console.print(f"MLflow UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(command, env=os.environ.copy()))


@app.command()
def doctor(
    workdir: WorkdirOption = Path("runs"),
    data_dir: DataDirOption = None,
    tracking_uri: TrackingOption = None,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Optuna storage URL; default: SQLite in WORKDIR.")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the tracking server and the storage.")
    ] = 5.0,
    iteration_check: Annotated[
        bool,
        typer.Option(
            "--iteration-check", help="Also run one offline self-play iteration of a model built from a config."
        ),
    ] = False,
    device: Annotated[
        str | None,
        typer.Option("--device", help="Iteration check device (cuda, cuda:1, cpu); default: cuda if available."),
    ] = None,
    tiny: Annotated[
        bool, typer.Option("--tiny", help="Iteration check with a tiny model instead of the ~0.5B-parameter one.")
    ] = False,
) -> None:
    """Report package versions, devices, memory, extras, data files and store reachability (exit 1 on errors)."""
    from .doctor import ERROR, render_checks, render_iteration_check, run_checks, run_iteration_check

    checks = run_checks(
        data_dir=data_dir, tracking_uri=tracking_uri, storage=storage, workdir=workdir, timeout=timeout
    )
    Console().print(render_checks(checks))
    if iteration_check:
        Console().print(render_iteration_check(run_iteration_check(device=device, tiny=tiny)))
    if any(check.status == ERROR for check in checks):
        raise typer.Exit(1)


@cache_app.command("info")
def cache_info(
    workdir: WorkdirOption = Path("runs"),
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Stage cache folder.")] = None,
) -> None:
    """Print the number of entries and the size of each cached stage."""
    from .cache import StageCache

    cache = StageCache(cache_dir or workdir / "cache")
    table = Table(title=f"stage cache {cache.root}")
    table.add_column("stage")
    table.add_column("entries", justify="right")
    table.add_column("MiB", justify="right")
    for stage, info in cache.size_report().items():
        table.add_row(stage, str(info["entries"]), f"{info['bytes'] / 2**20:.1f}")
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
