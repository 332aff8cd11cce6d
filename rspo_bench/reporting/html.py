"""Write the sweep report as one self-contained HTML file and, optionally, a PDF of it.

The HTML embeds its figures as PNG data URIs and its CSS inline, so it opens
offline and loads nothing. Its only links are in-page anchors and the MLflow UI
URLs of the provenance box, which a reader opens by hand. The PDF is the same
HTML rendered by WeasyPrint, which is only allowed to load ``data:`` URLs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from rspo_bench.logs import get_logger
from rspo_bench.reporting.checks import (
    cross_sweep_warnings,
    distinct_tag_values,
    last_iteration,
    state_label,
    sweep_warnings,
)
from rspo_bench.reporting.collect import SweepData, TrialData
from rspo_bench.reporting.compare import ComparisonView, compare_sweeps
from rspo_bench.reporting.figures import (
    LM_COEF_METRICS,
    CoefMetric,
    coefficient_figure,
    coefficient_variants,
    iteration_curves,
    length_win_rate_scatter,
    png_data_uri,
    training_diagnostics,
)
from rspo_bench.reporting.game import (
    EXPECTED_LENGTH,
    EXPLOITABILITY,
    GAME_COEF_METRICS,
    KL_TO_REFERENCE,
    convergence_figure,
    game_metric_figure,
    final_duality_gap,
    game_table_order,
)
from rspo_bench.reporting.mlflow_ui import MlflowUiView, mlflow_ui_view, redact_uri
from rspo_bench.reporting.paper import (
    PAPER_ITERATION,
    PAPER_MODEL,
    PAPER_SOURCE,
    difference,
    is_paper_config,
    match_paper_results,
    paper_iterations_note,
)

__all__ = ["PROXY_WARNING", "redact_uri", "render_html", "sweep_warnings", "write_report"]

log = get_logger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAME = "report.html.j2"
SUPPORTED_FORMATS = ("html", "pdf")
OUTPUT_NAMES = {"html": "report.html", "pdf": "report.pdf"}
PROXY_WARNING = "PROXY JUDGE: these numbers come from an offline proxy judge, not GPT-4"
FINISHED = "FINISHED"
MISSING = "\u2014"


@dataclass
class JudgeView:
    """One judge used by the trials of a sweep, as shown in the provenance box."""

    name: str
    description: str
    is_proxy: bool
    trial_count: int


@dataclass
class RowView:
    """One leaderboard row, with every number already formatted."""

    key: str
    variant: str
    coef: str
    status: str
    status_class: str
    is_base: bool
    win_rate: str
    lc_win_rate: str
    avg_length: str
    kl_to_base: str


@dataclass
class BenchmarkTableView:
    """Arena-Hard, MT-Bench, ArmoRM and diversity metrics per trial, with each benchmark's provenance."""

    headers: list[str]
    rows: list[tuple[str, list[str]]]
    provenance: list[str]


# (metric, column header, decimals); a benchmark's columns appear when some trial logged it.
BENCHMARK_COLUMNS = (
    ("arena_hard/score", "Arena-Hard (%) [95% CI]", 1),
    ("mt_bench/turn1", "MT-Bench turn 1", 2),
    ("mt_bench/turn2", "MT-Bench turn 2", 2),
    ("mt_bench/score", "MT-Bench", 2),
    ("armorm/score", "ArmoRM score", 4),
    ("diversity/self_bleu", "Self-BLEU (lower: more diverse)", 4),
    ("diversity/distinct_2", "Distinct-2", 3),
)


@dataclass
class GameRowView:
    """One row of the game world's final duality gap table."""

    key: str
    variant: str
    coef: str
    status: str
    status_class: str
    final_duality_gap: str
    exploitability: str
    kl_to_reference: str
    expected_length: str
    iterations: str


@dataclass
class FigureView:
    """One embedded figure: element id, PNG data URI, alt text and caption."""

    element_id: str
    uri: str
    alt: str
    caption: str = ""


@dataclass
class PaperRowView:
    """One paper setting beside this sweep's trial in the same setting."""

    setting: str
    trial_key: str
    source: str
    paper: list[str]
    ours: list[str]
    differences: list[str]


@dataclass
class PaperView:
    """Table of the RSPO paper's numbers beside those of a sweep that reproduces its Mistral-7B setting."""

    rows: list[PaperRowView]
    source: str
    note: str
    judge_note: str


@dataclass
class SweepView:
    """Everything the template shows for one sweep."""

    name: str
    anchor: str
    parent_run_id: str
    tracking_uri: str
    judges: list[JudgeView]
    data: list[str]
    code_versions: list[str]
    worlds: list[str]
    any_proxy: bool
    is_game: bool
    rows: list[RowView]
    game_rows: list[GameRowView]
    trial_count: int
    status_counts: dict[str, int]
    ui: MlflowUiView
    experiment_id: str
    main_figure: FigureView
    curves: FigureView | None
    coefficient_figures: list[FigureView]
    diagnostics: FigureView | None
    paper: PaperView | None
    warnings: list[str] = field(default_factory=list)
    benchmarks: BenchmarkTableView | None = None
    # What the sweep optimized, with directions, e.g. "mt_bench/score (maximize)"; "" when not recorded.
    objectives: str = ""


def write_report(
    sweeps: Sequence[SweepData],
    output_dir: Path,
    *,
    formats: Sequence[str] = ("html",),
    generated_at: datetime | None = None,
) -> dict[str, Path]:
    """Write ``report.html`` and/or ``report.pdf`` for ``sweeps`` into ``output_dir``.

    Two or more sweeps also get a comparison table of their common trial keys.
    Returns a mapping from each requested format to the file written. Raises
    ValueError for an empty sweep list or a format outside SUPPORTED_FORMATS.
    """
    unknown = [fmt for fmt in formats if fmt not in SUPPORTED_FORMATS]
    if unknown:
        raise ValueError(
            f"Unsupported report format(s) {unknown}. Use one or more of {list(SUPPORTED_FORMATS)}."
        )
    if not formats:
        raise ValueError(f"No report format requested. Use one or more of {list(SUPPORTED_FORMATS)}.")

    html = render_html(sweeps, generated_at=generated_at)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    written: dict[str, Path] = {}
    if "html" in formats:
        path = output_dir / OUTPUT_NAMES["html"]
        path.write_text(html, encoding="utf-8")
        written["html"] = path
    if "pdf" in formats:
        path = output_dir / OUTPUT_NAMES["pdf"]
        write_pdf(html, path)
        written["pdf"] = path
    for fmt, path in written.items():
        log.info("Wrote %s report to %s", fmt.upper(), path)
    return written


def render_html(sweeps: Sequence[SweepData], *, generated_at: datetime | None = None) -> str:
    """Render the report for ``sweeps`` to an HTML string, with figures embedded as data URIs."""
    if not sweeps:
        raise ValueError("No sweeps given: pass at least one SweepData to render a report.")
    generated_at = generated_at or datetime.now(UTC)

    views = [sweep_view(sweep, index) for index, sweep in enumerate(sweeps)]
    comparison: ComparisonView | None = compare_sweeps(sweeps) if len(sweeps) > 1 else None
    return _environment().get_template(TEMPLATE_NAME).render(
        title="RSPO sweep report: " + ", ".join(sweep.name for sweep in sweeps),
        sweep_names=[sweep.name for sweep in sweeps],
        generated_at=generated_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip(),
        proxy_warning=PROXY_WARNING,
        report_warnings=cross_sweep_warnings(sweeps),
        comparison=comparison,
        sweeps=views,
    )


def sweep_view(sweep: SweepData, index: int) -> SweepView:
    """Build the view of one sweep: tables, provenance, warnings and rendered figures."""
    status_counts: dict[str, int] = {}
    for trial in sweep.trials:
        label = state_label(trial)
        status_counts[label] = status_counts.get(label, 0) + 1

    anchor = f"sweep-{index}-{_slug(sweep.name)}"
    judges = _judge_views(sweep.trials)
    is_game = sweep.is_game
    if is_game:
        main_figure, curves = _game_figures(sweep, anchor)
    else:
        main_figure, curves = _lm_figures(sweep, anchor)

    paper = _paper_view(sweep, judges) if not is_game and is_paper_config(sweep) else None
    return SweepView(
        name=sweep.name,
        anchor=anchor,
        parent_run_id=sweep.parent_run_id,
        tracking_uri=redact_uri(sweep.tracking_uri),
        judges=judges,
        data=distinct_tag_values(sweep.trials, "rspo.data"),
        code_versions=distinct_tag_values(sweep.trials, "rspo.code_version"),
        worlds=distinct_tag_values(sweep.trials, "rspo.world"),
        any_proxy=any(judge.is_proxy for judge in judges),
        is_game=is_game,
        rows=[] if is_game else [_row_view(trial) for trial in _leaderboard_order(sweep.trials)],
        benchmarks=None if is_game else _benchmark_table(sweep.trials),
        objectives=_objectives_text(sweep.parent_tags.get("rspo.objectives", "")),
        game_rows=[_game_row_view(trial) for trial in game_table_order(sweep.trials)] if is_game else [],
        trial_count=len(sweep.trials),
        status_counts=dict(sorted(status_counts.items())),
        ui=mlflow_ui_view(sweep.tracking_uri, sweep.experiment_id, sweep.parent_run_id),
        experiment_id=sweep.experiment_id,
        main_figure=main_figure,
        curves=curves,
        coefficient_figures=_coefficient_figures(
            sweep, anchor, GAME_COEF_METRICS if is_game else LM_COEF_METRICS
        ),
        diagnostics=_diagnostics_figure(sweep, anchor),
        paper=paper,
        warnings=sweep_warnings(sweep),
    )


def _game_figures(sweep: SweepData, anchor: str) -> tuple[FigureView, FigureView | None]:
    """Render the game world's convergence figure and, when logged, its other per-iteration metrics."""
    main_figure = FigureView(
        f"{anchor}-convergence",
        png_data_uri(convergence_figure(sweep.trials)),
        "Duality gap and exploitability per self-play iteration, log scale, "
        f"one line per trial of sweep {sweep.name}",
        "One line per trial on a log y-axis; lighter shades are smaller coefficients within a variant. "
        "Both quantities are 0 at the equilibrium of the regularized game.",
    )
    game_metrics = game_metric_figure(sweep.trials)
    curves = None
    if game_metrics is not None:
        curves = FigureView(
            f"{anchor}-game-metrics",
            png_data_uri(game_metrics),
            "Per-iteration divergences to the reference policy, expected length and other game metrics "
            f"of sweep {sweep.name}",
            "One line per trial. Divergences are to the reference policy \u03bc, in nats.",
        )
    return main_figure, curves


def _lm_figures(sweep: SweepData, anchor: str) -> tuple[FigureView, FigureView]:
    """Render the length-vs-win-rate scatter and the per-iteration curves of a language-model sweep."""
    main_figure = FigureView(
        f"{anchor}-scatter",
        png_data_uri(length_win_rate_scatter(sweep.trials)),
        "Scatter plot of AlpacaEval 2 win rate and LC win rate against mean response length "
        f"for each trial of sweep {sweep.name}",
        "One point per trial with final metrics, colored by variant and labeled with its coefficient "
        "(unlabeled in large sweeps); the star is the base model. Error bars are one standard error; "
        "the dashed line is the Pareto front (higher win rate at shorter length).",
    )
    curves = FigureView(
        f"{anchor}-curves",
        png_data_uri(iteration_curves(sweep.trials)),
        "Per-iteration training loss, regularization, KL to base, response length and win probability "
        f"for each trial of sweep {sweep.name}",
        "One line per trial; lighter shades are smaller coefficients within a variant.",
    )
    return main_figure, curves


def _coefficient_figures(sweep: SweepData, anchor: str, metrics: Sequence[CoefMetric]) -> list[FigureView]:
    figures = []
    names = ", ".join(metric.title.lower() for metric in metrics)
    for variant in coefficient_variants(sweep.trials):
        figures.append(
            FigureView(
                f"{anchor}-coef-{_slug(variant)}",
                png_data_uri(coefficient_figure(sweep.trials, variant, metrics)),
                f"Final metrics of variant {variant} against its coefficient lambda: {names}",
            )
        )
    return figures


def _diagnostics_figure(sweep: SweepData, anchor: str) -> FigureView | None:
    png = training_diagnostics(sweep.trials)
    if png is None:
        return None
    return FigureView(
        f"{anchor}-diagnostics",
        png_data_uri(png),
        f"Gradient norm and regularizer terms per self-play iteration for each trial of sweep {sweep.name}",
        "Means over the optimizer steps of each iteration. The gradient norm is measured before clipping "
        "to training.max_grad_norm. Each regularizer term is its value before its weight and the "
        "coefficient \u03bb.",
    )


def _paper_view(sweep: SweepData, judges: Sequence[JudgeView]) -> PaperView:
    matches = match_paper_results(sweep)
    rows = []
    for match in matches:
        paper = match.paper
        paper_values = (paper.lc_win_rate, paper.win_rate, paper.avg_length)
        ours = (match.ours("lc_win_rate"), match.ours("win_rate"), match.ours("avg_length"))
        digits = (2, 2, 0)
        rows.append(
            PaperRowView(
                setting=paper.setting,
                trial_key=match.trial.key if match.trial is not None else "",
                source=match.source,
                paper=[
                    _format_number(value, places) for value, places in zip(paper_values, digits, strict=True)
                ],
                ours=[_format_number(value, places) for value, places in zip(ours, digits, strict=True)],
                differences=[
                    _format_number(difference(mine, theirs), places, signed=True)
                    for mine, theirs, places in zip(ours, paper_values, digits, strict=True)
                ],
            )
        )
    judge_names = ", ".join(judge.name for judge in judges) or "unknown"
    judge_note = (
        f"The paper's judge is GPT-4 Turbo (AlpacaEval 2 default); this sweep's judge is {judge_names}."
    )
    if any(judge.is_proxy for judge in judges):
        judge_note += " A proxy judge gives numbers on another scale, so compare trends, not absolute values."
    return PaperView(
        rows=rows,
        source=f"{PAPER_SOURCE}; {PAPER_MODEL}, AlpacaEval 2 at self-play iteration {PAPER_ITERATION}",
        note=paper_iterations_note(matches),
        judge_note=judge_note,
    )


def _judge_views(trials: Sequence[TrialData]) -> list[JudgeView]:
    judges: dict[str, JudgeView] = {}
    for trial in trials:
        name = trial.judge or "(unknown)"
        view = judges.setdefault(name, JudgeView(name=name, description="", is_proxy=False, trial_count=0))
        view.trial_count += 1
        view.is_proxy = view.is_proxy or trial.judge_is_proxy
        if not view.description:
            view.description = trial.tags.get("rspo.judge_description", "")
    return list(judges.values())


def _leaderboard_order(trials: Sequence[TrialData]) -> list[TrialData]:
    """Sort by LC win rate, highest first. Trials without one keep their order at the end."""
    scored = [trial for trial in trials if _finite(trial.final("lc_win_rate"))]
    unscored = [trial for trial in trials if not _finite(trial.final("lc_win_rate"))]
    scored.sort(key=lambda trial: -trial.final("lc_win_rate"))
    return scored + unscored


def _status_class(trial: TrialData) -> str:
    if trial.is_pruned:
        return "pruned"
    if trial.status == FINISHED:
        return "finished"
    return "failed" if trial.status == "FAILED" else "other"


def _objectives_text(recorded: str) -> str:
    """Return the sweep's objectives with their directions, from the parent run's ``rspo.objectives`` tag."""
    from ..config import OBJECTIVE_DIRECTIONS

    names = [name for name in recorded.split(",") if name]
    return ", ".join(f"{name} ({OBJECTIVE_DIRECTIONS.get(name, 'direction not recorded')})" for name in names)


def _benchmark_table(trials: Sequence[TrialData]) -> BenchmarkTableView | None:
    """Return the table of the other benchmarks, or None when no trial logged any."""
    columns = [column for column in BENCHMARK_COLUMNS
               if any(column[0] in trial.final_metrics for trial in trials)]
    if not columns:
        return None
    rows = []
    for trial in _leaderboard_order(trials):
        cells = []
        for metric, _, places in columns:
            value = trial.final_metrics.get(metric)
            cell = f"{value:.{places}f}" if _finite(value) else MISSING
            if metric == "arena_hard/score" and _finite(value):
                low = trial.final_metrics.get("arena_hard/ci_low")
                high = trial.final_metrics.get("arena_hard/ci_high")
                if _finite(low) and _finite(high):
                    cell += f" [{low:.1f}, {high:.1f}]"
            cells.append(cell)
        rows.append((trial.key, cells))
    provenance = []
    for benchmark in sorted({metric.split("/")[0] for metric, _, _ in columns}):
        judges = distinct_tag_values(trials, f"rspo.{benchmark}.judge")
        versions = distinct_tag_values(trials, f"rspo.{benchmark}.version")
        baselines = distinct_tag_values(trials, f"rspo.{benchmark}.baseline")
        proxy = "true" in distinct_tag_values(trials, f"rspo.{benchmark}.judge_is_proxy")
        label = "; a proxy judge, not comparable with leaderboard numbers" if proxy else ""
        provenance.append(
            f"{benchmark}: judge {', '.join(judges) or MISSING}{label}; "
            f"version {'; '.join(versions) or MISSING}; baseline {', '.join(baselines) or MISSING}"
        )
    return BenchmarkTableView(headers=[header for _, header, _ in columns], rows=rows, provenance=provenance)


def _row_view(trial: TrialData) -> RowView:
    length = trial.final("avg_length")
    kl = trial.last_value("selfplay/kl_to_base")
    return RowView(
        key=trial.key,
        variant=trial.variant or MISSING,
        coef=MISSING if trial.coef is None else f"{trial.coef:g}",
        status=state_label(trial),
        status_class=_status_class(trial),
        is_base=trial.is_base,
        win_rate=_format_rate(trial.final("win_rate"), trial.final("standard_error")),
        lc_win_rate=_format_rate(trial.final("lc_win_rate"), trial.final("lc_standard_error")),
        avg_length=f"{length:,.0f}" if _finite(length) else MISSING,
        kl_to_base=f"{kl:.3g}" if _finite(kl) else MISSING,
    )


def _game_row_view(trial: TrialData) -> GameRowView:
    iterations = last_iteration(trial)
    return GameRowView(
        key=trial.key,
        variant=trial.variant or MISSING,
        coef=MISSING if trial.coef is None else f"{trial.coef:g}",
        status=state_label(trial),
        status_class=_status_class(trial),
        final_duality_gap=_format_small(final_duality_gap(trial)),
        exploitability=_format_small(trial.last_value(EXPLOITABILITY)),
        kl_to_reference=_format_small(trial.last_value(KL_TO_REFERENCE)),
        expected_length=_format_number(trial.last_value(EXPECTED_LENGTH), 1),
        iterations=MISSING if iterations is None else str(iterations),
    )


def _format_rate(value: float | None, standard_error: float | None) -> str:
    if not _finite(value):
        return MISSING
    if not _finite(standard_error):
        return f"{value:.1f}"
    return f"{value:.1f} \u00b1 {standard_error:.1f}"


def _format_number(value: float | None, places: int, *, signed: bool = False) -> str:
    if not _finite(value):
        return MISSING
    return f"{value:+,.{places}f}" if signed else f"{value:,.{places}f}"


def _format_small(value: float | None) -> str:
    """Format a value that may span many orders of magnitude (a duality gap) with 3 significant digits."""
    return f"{value:.3g}" if _finite(value) else MISSING


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "sweep"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def write_pdf(html: str, path: Path) -> None:
    """Render the report HTML to a PDF at ``path`` with WeasyPrint, loading only ``data:`` URLs."""
    # Imported here because WeasyPrint loads Pango and fonts at import, which
    # HTML-only callers do not need.
    import weasyprint
    from weasyprint.urls import URLFetcher

    fetcher = URLFetcher(allowed_protocols={"data"})
    weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf(path)
