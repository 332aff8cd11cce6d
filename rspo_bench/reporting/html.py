"""Write the sweep report as one self-contained HTML file and, optionally, a PDF of it.

The HTML embeds its figures as PNG data URIs and its CSS inline, so it opens
offline and links to nothing. The PDF is the same HTML rendered by WeasyPrint,
which is only allowed to load ``data:`` URLs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import jinja2

from rspo_bench.logs import get_logger
from rspo_bench.reporting.collect import SweepData, TrialData
from rspo_bench.reporting.figures import iteration_curves, length_win_rate_scatter, png_data_uri

log = get_logger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE_NAME = "report.html.j2"
SUPPORTED_FORMATS = ("html", "pdf")
OUTPUT_NAMES = {"html": "report.html", "pdf": "report.pdf"}
PROXY_WARNING = "PROXY JUDGE: these numbers come from an offline proxy judge, not GPT-4"
# A trial whose LC and raw win rates differ by more than this many percentage
# points gets a warning, because the length correction then dominates the result.
LC_RAW_GAP_POINTS = 10.0
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
    is_base: bool
    win_rate: str
    lc_win_rate: str
    avg_length: str
    kl_to_base: str


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
    rows: list[RowView]
    status_counts: dict[str, int]
    scatter_uri: str
    curves_uri: str
    warnings: list[str] = field(default_factory=list)


def write_report(
    sweeps: Sequence[SweepData],
    output_dir: Path,
    *,
    formats: Sequence[str] = ("html",),
    generated_at: datetime | None = None,
) -> dict[str, Path]:
    """Write ``report.html`` and/or ``report.pdf`` for ``sweeps`` into ``output_dir``.

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
        _write_pdf(html, path)
        written["pdf"] = path
    for fmt, path in written.items():
        log.info("Wrote %s report to %s", fmt.upper(), path)
    return written


def render_html(sweeps: Sequence[SweepData], *, generated_at: datetime | None = None) -> str:
    """Render the report for ``sweeps`` to an HTML string, with figures embedded as data URIs."""
    if not sweeps:
        raise ValueError("No sweeps given: pass at least one SweepData to render a report.")
    generated_at = generated_at or datetime.now(UTC)

    views = [_sweep_view(sweep, index) for index, sweep in enumerate(sweeps)]
    all_trials = [trial for sweep in sweeps for trial in sweep.trials]
    report_warnings: list[str] = []
    if len(sweeps) > 1:
        judges = sorted({trial.judge or "(unknown)" for trial in all_trials})
        if len(judges) > 1:
            report_warnings.append(
                "The sweeps in this report use different judges (" + ", ".join(judges) + "); "
                "win rates are comparable only between trials scored by the same judge."
            )

    return _environment().get_template(TEMPLATE_NAME).render(
        title="RSPO sweep report: " + ", ".join(sweep.name for sweep in sweeps),
        sweep_names=[sweep.name for sweep in sweeps],
        generated_at=generated_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip(),
        proxy_warning=PROXY_WARNING,
        report_warnings=report_warnings,
        sweeps=views,
    )


def sweep_warnings(sweep: SweepData) -> list[str]:
    """List the problems a reader must know before trusting the sweep's numbers."""
    warnings: list[str] = []
    if not sweep.trials:
        warnings.append(f"Sweep {sweep.name!r} has no trial runs under parent run {sweep.parent_run_id}.")

    judges = sorted({trial.judge or "(unknown)" for trial in sweep.trials})
    if len(judges) > 1:
        warnings.append(
            "Trials use different judges (" + ", ".join(judges) + "); "
            "win rates are comparable only between trials scored by the same judge."
        )
    for tag, label in (("rspo.data", "evaluation data"), ("rspo.code_version", "code versions")):
        values = _distinct_tag_values(sweep.trials, tag)
        if len(values) > 1:
            warnings.append(f"Trials use different {label}: " + "; ".join(values) + ".")

    for trial in sweep.trials:
        if trial.status != FINISHED:
            verb = "failed" if trial.status == "FAILED" else "did not finish"
            warnings.append(f"Trial {trial.key} {verb} (status {trial.status}).")
        elif trial.final("win_rate") is None:
            warnings.append(f"Trial {trial.key} finished but logged no final AlpacaEval 2 win rate.")

        win_rate = trial.final("win_rate")
        lc_win_rate = trial.final("lc_win_rate")
        if _finite(win_rate) and _finite(lc_win_rate) and abs(lc_win_rate - win_rate) > LC_RAW_GAP_POINTS:
            warnings.append(
                f"Trial {trial.key}: LC win rate {lc_win_rate:.1f}% differs from raw win rate "
                f"{win_rate:.1f}% by {abs(lc_win_rate - win_rate):.1f} points "
                f"(more than {LC_RAW_GAP_POINTS:g}); response length drives much of its result."
            )
    return warnings


def redact_uri(uri: str) -> str:
    """Replace the password in a URI (for example a PostgreSQL tracking URI) with ``***``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _sweep_view(sweep: SweepData, index: int) -> SweepView:
    status_counts: dict[str, int] = {}
    for trial in sweep.trials:
        status_counts[trial.status] = status_counts.get(trial.status, 0) + 1

    judges = _judge_views(sweep.trials)
    return SweepView(
        name=sweep.name,
        anchor=f"sweep-{index}-{_slug(sweep.name)}",
        parent_run_id=sweep.parent_run_id,
        tracking_uri=redact_uri(sweep.tracking_uri),
        judges=judges,
        data=_distinct_tag_values(sweep.trials, "rspo.data"),
        code_versions=_distinct_tag_values(sweep.trials, "rspo.code_version"),
        worlds=_distinct_tag_values(sweep.trials, "rspo.world"),
        any_proxy=any(judge.is_proxy for judge in judges),
        rows=[_row_view(trial) for trial in _leaderboard_order(sweep.trials)],
        status_counts=dict(sorted(status_counts.items())),
        scatter_uri=png_data_uri(length_win_rate_scatter(sweep.trials)),
        curves_uri=png_data_uri(iteration_curves(sweep.trials)),
        warnings=sweep_warnings(sweep),
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


def _row_view(trial: TrialData) -> RowView:
    length = trial.final("avg_length")
    kl = trial.last_value("selfplay/kl_to_base")
    return RowView(
        key=trial.key,
        variant=trial.variant or MISSING,
        coef=MISSING if trial.coef is None else f"{trial.coef:g}",
        status=trial.status,
        is_base=trial.is_base,
        win_rate=_format_rate(trial.final("win_rate"), trial.final("standard_error")),
        lc_win_rate=_format_rate(trial.final("lc_win_rate"), trial.final("lc_standard_error")),
        avg_length=f"{length:,.0f}" if _finite(length) else MISSING,
        kl_to_base=f"{kl:.3g}" if _finite(kl) else MISSING,
    )


def _format_rate(value: float | None, standard_error: float | None) -> str:
    if not _finite(value):
        return MISSING
    if not _finite(standard_error):
        return f"{value:.1f}"
    return f"{value:.1f} \u00b1 {standard_error:.1f}"


def _distinct_tag_values(trials: Sequence[TrialData], tag: str) -> list[str]:
    return sorted({trial.tags[tag] for trial in trials if trial.tags.get(tag)})


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


def _write_pdf(html: str, path: Path) -> None:
    # Imported here because WeasyPrint loads Pango and fonts at import, which
    # HTML-only callers do not need.
    import weasyprint
    from weasyprint.urls import URLFetcher

    fetcher = URLFetcher(allowed_protocols={"data"})
    weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf(path)
