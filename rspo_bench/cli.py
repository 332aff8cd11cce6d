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
from rich.markup import escape
from rich.table import Table

from .config import ConfigError, load_config
from .data import ENV_VAR, DataFileNotFoundError
from .evals.score_cli import score_app
from .logs import get_logger, setup_logging

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Sweeps, evaluation and reports for RSPO/SPPO.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect and clean the stage cache.")
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
CacheDirOption = Annotated[
    Path | None, typer.Option("--cache-dir", help="Stage cache folder; default: WORKDIR/cache.")
]
StorageOption = Annotated[
    str | None,
    typer.Option(
        "--storage", help="Optuna storage URL, e.g. postgresql://user@host/db; default: SQLite in WORKDIR."
    ),
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
    from .sweeps.grid import describe_trials

    experiment = _load_or_exit(config)
    console.print(f"[green]valid[/green]: {config} ({describe_trials(experiment.sweep)})")


def _parse_devices(devices: str | None) -> tuple[str, ...]:
    if devices is None:
        return ()
    items = tuple(item.strip() for item in devices.split(",") if item.strip())
    if not items:
        console.print(f"[red]invalid --devices[/red] {devices!r}: expected device ids such as 0,1",
                      highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT)
    return items


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    workdir: WorkdirOption = Path("runs"),
    data_dir: DataDirOption = None,
    tracking_uri: TrackingOption = None,
    storage: StorageOption = None,
    cache_dir: Annotated[Path | None, typer.Option("--cache-dir", help="Stage cache folder; default: WORKDIR/cache.")] = None,
    report_dir: Annotated[Path | None, typer.Option("--report-dir", help="Report folder; default: reports/<sweep name>.")] = None,
    report_format: Annotated[str, typer.Option("--format", help="Report formats, comma-separated: html, pdf; '' for none.")] = "html",
    workers: Annotated[int, typer.Option(
        "--workers", min=0,
        help="Trials this process runs at a time, each in its own subprocess; 0 (default) runs them "
             "one after another in this process.",
    )] = 0,
    devices: Annotated[str | None, typer.Option(
        "--devices",
        help="Comma-separated device ids; worker i gets CUDA_VISIBLE_DEVICES=devices[i mod count].",
    )] = None,
    resume: Annotated[bool, typer.Option(
        "--resume",
        help="Continue an existing study and fail when there is none. Without it an existing study "
             "of the same name is continued too; completed trials never run again.",
    )] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the trials, model loads and estimated training memory, and run nothing.",
    )] = False,
) -> None:
    """Run a sweep (grid or Optuna search): self-play training and AlpacaEval-2 evaluation of each trial.

    Several `rspo-bench sweep` processes with the same --storage (PostgreSQL
    for several machines) work on one study and never run a trial twice. The
    report is written by the process that finds the last trial finished.
    """
    from .sweeps.runner import SweepOptions, SweepPaths
    from .train_stage import LaunchError, check_launcher

    experiment = _load_or_exit(config)
    if dry_run:
        _print_plan(experiment)
        return
    try:
        check_launcher(experiment.training.launcher)
    except LaunchError as error:
        console.print(f"[red]cannot start the sweep[/red]: {error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    if devices is not None and workers == 0:
        console.print("[red]--devices needs --workers N[/red]: trials run in this process otherwise",
                      highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT)
    options = SweepOptions(workers=workers, devices=_parse_devices(devices), resume=resume)
    paths = SweepPaths.under(workdir, tracking_uri=tracking_uri, storage=storage, cache_dir=cache_dir)
    formats = tuple(item.strip() for item in report_format.split(",") if item.strip())
    _run_sweep_or_exit(experiment, paths, workdir, "sweep", data_dir=data_dir, report_formats=formats,
                       report_dir=report_dir, options=options)


def _run_sweep_or_exit(experiment, paths, workdir: Path, what: str, **options) -> None:
    """Run a sweep, print its result and exit 2 on missing data or setup errors, 1 when a trial failed."""
    from .sweeps.runner import SweepSetupError, run_sweep

    try:
        result = run_sweep(experiment, paths, **options)
    except DataFileNotFoundError as error:
        console.print(f"[red]missing data[/red]: {error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    except SweepSetupError as error:
        console.print(f"[red]cannot start the {what}[/red]: {error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    _print_sweep_result(result, workdir, experiment.sweep.objectives[0])
    if result.failed:
        raise typer.Exit(1)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="Experiment YAML file.")],
    variant: Annotated[str, typer.Option("--variant", help="Name of the variant in sweep.variants.")],
    coef: Annotated[float | None, typer.Option(
        "--coef", min=0,
        help="Regularizer coefficient λ; default: the variant's only entry in coefs.",
    )] = None,
    workdir: WorkdirOption = Path("runs"),
    data_dir: DataDirOption = None,
    tracking_uri: TrackingOption = None,
    storage: StorageOption = None,
    cache_dir: CacheDirOption = None,
) -> None:
    """Run one trial: self-play of one variant at one coefficient, then its evaluation, as a sweep does.

    The trial is recorded in its own study and MLflow experiment, named
    <experiment name>.train.<variant>-<coef>, and shares the stage cache of
    --workdir with sweeps, so a later sweep reuses its policies.
    """
    from .sweeps.grid import single_trial_config
    from .sweeps.runner import SweepPaths
    from .train_stage import LaunchError, check_launcher

    experiment = _load_or_exit(config)
    try:
        trial_config = single_trial_config(experiment, variant, coef)
        check_launcher(trial_config.training.launcher)
    except (ValueError, LaunchError) as error:
        console.print(f"[red]cannot start the trial[/red]: {error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    paths = SweepPaths.under(workdir, tracking_uri=tracking_uri, storage=storage, cache_dir=cache_dir)
    _run_sweep_or_exit(trial_config, paths, workdir, "trial", data_dir=data_dir, report_formats=())


def _print_plan(experiment) -> None:
    from .sweeps.plan import plan_sweep

    plans, summary = plan_sweep(experiment)
    table = Table(title=f"dry run of sweep {experiment.name} ({experiment.world.kind} world)")
    table.add_column("trial", no_wrap=True)
    table.add_column("iterations", justify="right")
    table.add_column("model loads", justify="right")
    table.add_column("training GiB (estimate)", justify="right")
    for plan in plans:
        memory = "—" if plan.training_gib is None else f"{plan.training_gib:.2f}"
        table.add_row(plan.key, str(plan.iterations), str(plan.model_loads), memory)
    Console().print(table)
    parameters = summary["parameters"]
    if experiment.world.kind == "game":
        described = "none (tabular policy)"
    else:
        described = "unknown offline" if parameters is None else f"{parameters:,}"
    Console().print(
        f"policy parameters: {described}; "
        f"model loads for the whole sweep with an empty cache: {summary['model_loads']} "
        f"(iteration 1 is shared by all variants). Memory counts weights, gradients and optimizer "
        f"state of the trained policy only, not activations."
    )
    if summary["optuna_trials_not_listed"]:
        Console().print(f"plus {summary['optuna_trials_not_listed']} Optuna trials sampled at run time")


def _print_sweep_result(result, workdir: Path, objective: str = "lc_win_rate") -> None:
    label = {"lc_win_rate": "LC win rate (proxy judge)", "win_rate": "win rate (proxy judge)",
             "avg_length": "avg length (chars)"}.get(objective, objective)
    table = Table(title=f"sweep {result.name}: {result.seconds:.0f} s")
    table.add_column("trial")
    table.add_column("state")
    table.add_column(label, justify="right")
    for key, value in result.completed.items():
        table.add_row(key, "completed", f"{value:.2f}")
    for key, value in result.skipped.items():
        table.add_row(key, "already complete", f"{value:.2f}")
    for key, value in result.pruned.items():
        last_value = "" if value is None else f"{value:.2f} (last iteration)"
        table.add_row(key, "[yellow]pruned[/yellow]", last_value)
    for key, message in result.failed.items():
        table.add_row(key, "[red]failed[/red]", message[:80])
    Console().print(table)
    if len(result.pareto_front) > 1 or (result.pareto_front and len(result.pareto_front[0]["values"]) > 1):
        front = ", ".join(
            f"{item['key']} ({', '.join(f'{name} {value:.2f}' for name, value in item['values'].items())})"
            for item in result.pareto_front
        )
        Console().print(f"Pareto front: {front}")
    for kind, path in result.report.items():
        Console().print(f"report ({kind}): {path}")
    Console().print(f"MLflow: {result.tracking_uri}  (rspo-bench ui --workdir {workdir})")


@app.command("sweep-status")
def sweep_status(
    target: Annotated[str, typer.Argument(help="Experiment YAML file, or the sweep (study) name.")],
    workdir: WorkdirOption = Path("runs"),
    storage: StorageOption = None,
) -> None:
    """Print a sweep's trials by state, the best trial so far and the Pareto front from its Optuna storage."""
    from .sweeps.runner import SweepPaths
    from .sweeps.status import StudyNotFoundError, collect_status, format_values

    name = _load_or_exit(Path(target)).name if target.endswith((".yaml", ".yml")) else target
    url = storage or f"sqlite:///{Path(workdir).resolve() / 'optuna.db'}"
    if storage is None and not (Path(workdir) / "optuna.db").is_file():
        console.print(f"[red]no Optuna storage[/red] at {url}; pass --storage or --workdir", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT)
    try:
        status = collect_status(url, name)
    except StudyNotFoundError as error:
        console.print(f"[red]{error}[/red]", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    out = Console()
    counts = ", ".join(f"{count} {state.lower()}" for state, count in status.states.items()) or "no trials"
    out.print(f"study {status.study_name} in {status.storage}: {counts}")
    if status.closed:
        out.print(f"({status.closed} trials closed without running are not counted)")
    pairs = zip(status.objectives, status.directions, strict=False)
    objectives = " / ".join(f"{name} ({direction})" for name, direction in pairs)
    table = Table(title=f"trials; objectives: {objectives}")
    for column in ("#", "trial", "state", "values", "last reported", "seconds", "retry of"):
        table.add_column(column)
    for row in status.trials:
        last = ""
        if row.last_intermediate is not None:
            last = f"{row.last_intermediate[1]:.2f} @ iter {row.last_intermediate[0]}"
        table.add_row(str(row.number), row.key, row.state.lower(), format_values(row.values), last,
                      "" if row.seconds is None else f"{row.seconds:.0f}",
                      "" if row.retry_of is None else f"#{row.retry_of}")
    out.print(table)
    title = "best trial" if len(status.directions) == 1 else "Pareto front"
    front = "; ".join(
        f"{row.key} (#{row.number}: {format_values(row.values)})" for row in status.pareto_front
    )
    out.print(f"{title}: {front or 'no complete trial yet'}")
    out.print(f"optuna-dashboard reads the same storage: optuna-dashboard {status.storage}")


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option("--model", help="Checkpoint folder or hub id of a causal LM with a chat template.")],
    bench: Annotated[str | None, typer.Option(
        "--bench", help="Comma-separated: alpaca_eval2, arena_hard, mt_bench, armorm, diversity. Default: the "
        "benchmarks that --config enables, else all but armorm.",
    )] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="Experiment YAML whose evaluation and world.hf sections set the benchmark settings; "
        "without it the benchmarks' own generation lengths apply (2048, 4096, 1024 and 200 new tokens).",
    )] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name in answer files and MLflow.")] = None,
    judge_url: Annotated[str | None, typer.Option(
        "--judge-url", help="OpenAI-compatible endpoint of the benchmark judge; default: the offline proxy judge.",
    )] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="Judge model name at --judge-url.")] = None,
    armorm: Annotated[str | None, typer.Option("--armorm", help="Reward model folder or hub id for armorm.")] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment of the run.")] = "rspo-bench-eval",
    workdir: WorkdirOption = Path("runs"),
    data_dir: DataDirOption = None,
    tracking_uri: TrackingOption = None,
    cache_dir: CacheDirOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics and tags as JSON.")] = False,
) -> None:
    """Evaluate one checkpoint on the benchmarks and log the metrics, tags and answer files to MLflow."""
    import json

    from pydantic import ValidationError

    from .evals.run_eval import eval_config, evaluate_checkpoint, parse_benchmarks, results_json
    from .sweeps.runner import SweepPaths

    looks_local = model.startswith(("/", "./", "../", "~")) or Path(model).exists()
    if looks_local and not Path(model).expanduser().is_dir():
        console.print(f"[red]checkpoint not found[/red]: {model} is not a folder; pass a checkpoint folder "
                      f"or a model hub id", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT)
    try:
        benchmarks = parse_benchmarks(bench) if bench is not None else None
        experiment_config = eval_config(
            model, benchmarks, config_path=config, name=name, judge_url=judge_url, judge_model=judge_model,
            armorm_model=armorm,
        )
    except ConfigError as error:
        console.print(f"[red]invalid config[/red]\n{error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in error.errors())
        console.print(f"[red]invalid evaluation settings[/red]: {problems}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    except ValueError as error:
        console.print(f"[red]invalid evaluation settings[/red]: {error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    paths = SweepPaths.under(workdir, tracking_uri=tracking_uri, cache_dir=cache_dir)
    from .evals.judges import JudgeError
    from .worlds.hf import MissingChatTemplateError

    try:
        run = evaluate_checkpoint(
            experiment_config, cache_dir=paths.cache_dir, data_dir=data_dir, tracking_uri=paths.tracking_uri,
            experiment=experiment,
        )
    except DataFileNotFoundError as error:
        console.print(f"[red]missing data[/red]: {error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    except MissingChatTemplateError as error:
        console.print(f"[red]no chat template[/red]: {error}", highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT) from None
    except JudgeError as error:
        console.print(f"[red]judge failed[/red]: {error}. Judgments received so far are cached; rerun to "
                      f"resume.", highlight=False)
        raise typer.Exit(1) from None
    except ValueError as error:
        console.print(f"[red]evaluation failed[/red]: {error}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(results_json(run), indent=2))
        return
    table = Table(title=f"{run.name}: {run.model}")
    for column in ("metric", "value", "judge", "proxy judge"):
        table.add_column(column)
    for result in run.results:
        proxy = result.tags.get(f"rspo.{result.benchmark}.judge_is_proxy") == "true"
        judge = result.tags.get(f"rspo.{result.benchmark}.judge", "")
        for metric, value in result.metrics.items():
            if metric.split("/")[-1].startswith("n_"):
                continue
            table.add_row(metric, f"{value:.4g}", escape(judge), "yes" if proxy else "no")
    Console().print(table)
    Console().print(f"MLflow: {paths.tracking_uri}, experiment {experiment}, run {run.run_id}")


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
    cache_dir: CacheDirOption = None,
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
    temp = cache.temp_folders()
    if temp:
        table.add_row("(temporary folders)", str(len(temp)), "")
    Console().print(table)


@cache_app.command("prune")
def cache_prune(
    workdir: WorkdirOption = Path("runs"),
    cache_dir: CacheDirOption = None,
    older_than: Annotated[float | None, typer.Option(
        "--older-than", min=0, help="Also remove entries not used for this many days.")] = None,
    stage: Annotated[
        str | None, typer.Option("--stage", help="Only this stage (e.g. policy, samples).")
    ] = None,
    keep_sweep: Annotated[list[str] | None, typer.Option(
        "--keep-sweep",
        help="Keep every entry a trial of this sweep used; repeat for several sweeps.")] = None,
    temp_older_than: Annotated[float, typer.Option(
        "--temp-older-than", min=0,
        help="Hours after which another host's temporary folder counts as abandoned; on this host a "
             "folder is abandoned as soon as its writer process is gone.")] = 6.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
) -> None:
    """Remove temporary folders of killed writers and, with --older-than, entries unused for that long."""
    from .cache import StageCache

    cache = StageCache(cache_dir or workdir / "cache")
    known = set(cache.size_report())
    if stage is not None and stage not in known:
        console.print(f"[red]unknown stage[/red] {stage!r}; stages in {cache.root}: {sorted(known)}",
                      highlight=False)
        raise typer.Exit(EXIT_INVALID_INPUT)
    report = cache.prune(older_than_days=older_than, stage=stage, keep_sweeps=keep_sweep or (),
                         temp_max_age_hours=temp_older_than, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    entries = ", ".join(f"{count} {name}" for name, count in sorted(report.entries.items())) or "no entries"
    Console().print(f"{verb} {entries} and {report.temp_folders} temporary folders "
                    f"({report.bytes_freed / 2**20:.1f} MiB)")
    if report.kept_for_sweeps:
        Console().print(f"kept {report.kept_for_sweeps} old entries used by {', '.join(keep_sweep or [])}")
    if report.skipped_live_temp:
        Console().print(f"left {report.skipped_live_temp} temporary folders of running writers")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
