"""Figures for the sweep report, rendered with Matplotlib's Agg canvas to PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` objects directly, never through
``pyplot``, so no global figure registry fills up and nothing needs closing. The
same input gives byte-identical PNGs because the PNG ``Software`` metadata (the
Matplotlib version) is left out.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from rspo_bench.reporting.collect import TrialData

DPI = 110
BASE_COLOR = "#222222"
BASE_MARKER = "*"
PARETO_COLOR = "#888888"

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class CurvePanel:
    """One panel of the per-iteration figure: an MLflow metric key and its axis labels."""

    metric: str
    title: str
    ylabel: str


# Panels that are always drawn, even when no trial logged the metric.
CORE_PANELS = (
    CurvePanel("train/loss", "Training loss", "loss (unitless)"),
    CurvePanel("train/sppo", "SPPO loss term", "loss (unitless)"),
    CurvePanel("train/reg_total", "Regularization total", "loss (unitless)"),
    # The runner estimates KL from natural-log probabilities (torch log-softmax), so the unit is nats.
    CurvePanel("selfplay/kl_to_base", "KL to base model", "KL (nats)"),
    CurvePanel("selfplay/response_length", "Self-play response length", "mean length (characters)"),
    CurvePanel("selfplay/win_prob_gap", "Winner minus loser win probability", "P̂(winner) − P̂(loser)"),
)
# Panels drawn only when at least one trial logged per-iteration evaluation.
EVAL_PANELS = (
    CurvePanel("eval_iter/alpaca_eval2/win_rate", "AlpacaEval 2 win rate per iteration", "win rate (%)"),
    CurvePanel(
        "eval_iter/alpaca_eval2/lc_win_rate", "AlpacaEval 2 LC win rate per iteration", "LC win rate (%)"
    ),
)


def png_data_uri(png: bytes) -> str:
    """Encode PNG bytes as a ``data:image/png;base64,...`` URI for embedding in HTML."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Return the indices of the points that no other point beats on both length and win rate.

    Each point is ``(length, win_rate)``. A point is on the front unless another
    point has a lower or equal length and a higher or equal win rate, with at
    least one of the two strict. Of identical points only the first is kept.
    Indices come back sorted by increasing length.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best_win_rate = -math.inf
    for index in order:
        win_rate = points[index][1]
        if win_rate > best_win_rate:
            front.append(index)
            best_win_rate = win_rate
    return front


def variant_colors(trials: Sequence[TrialData]) -> dict[str, RGB]:
    """Assign each non-base variant a color, stable for a given set of variant names."""
    variants = sorted({trial.variant for trial in trials if not trial.is_base})
    palette = colormaps["tab10" if len(variants) <= 10 else "tab20"]
    return {variant: to_rgb(palette(i % palette.N)) for i, variant in enumerate(variants)}


def trial_colors(trials: Sequence[TrialData]) -> dict[str, RGB]:
    """Assign each trial its variant's color, lighter for smaller coefficients within the variant."""
    base_colors = variant_colors(trials)
    colors: dict[str, RGB] = {}
    for variant, color in base_colors.items():
        members = sorted(
            (trial for trial in trials if trial.variant == variant and not trial.is_base),
            key=lambda trial: (math.inf if trial.coef is None else trial.coef, trial.key),
        )
        for rank, trial in enumerate(members):
            # The largest coefficient gets the full color; smaller ones mix in up to 55 % white.
            whiteness = 0.55 * (len(members) - 1 - rank) / max(len(members) - 1, 1)
            colors[trial.key] = _mix_with_white(color, whiteness)
    for trial in trials:
        if trial.is_base:
            colors[trial.key] = to_rgb(BASE_COLOR)
    return colors


def length_win_rate_scatter(trials: Sequence[TrialData]) -> bytes:
    """Plot final AlpacaEval 2 win rate against mean response length, raw and length-controlled.

    Each trial with final metrics is one point, colored by variant and labeled
    with its coefficient. The base model is a star. Error bars are one standard
    error. The dashed line joins the Pareto front (higher win rate, shorter
    responses). Trials without final metrics, for example failed ones, are left out.
    """
    figure = Figure(figsize=(11, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    colors = variant_colors(trials)
    panels = (
        ("win_rate", "standard_error", "Win rate vs. baseline (%)", "Raw win rate"),
        (
            "lc_win_rate",
            "lc_standard_error",
            "Length-controlled win rate (%)",
            "Length-controlled (LC) win rate",
        ),
    )
    axes = figure.subplots(1, 2)
    drawn: set[str] = set()
    for ax, (metric, error_metric, ylabel, title) in zip(axes, panels, strict=True):
        drawn |= _draw_scatter_panel(ax, trials, colors, metric, error_metric)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("Mean response length (characters)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)

    handles = [
        Line2D([], [], linestyle="", marker="o", color=color, label=variant)
        for variant, color in colors.items()
        if variant in drawn
    ]
    if any(trial.is_base and trial.variant in drawn for trial in trials):
        handles.append(
            Line2D(
                [], [], linestyle="", marker=BASE_MARKER, markersize=12, color=BASE_COLOR, label="base model"
            )
        )
    handles.append(Line2D([], [], linestyle="--", color=PARETO_COLOR, label="Pareto front"))
    figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False)
    return _to_png(figure)


def iteration_curves(trials: Sequence[TrialData]) -> bytes:
    """Plot per-iteration training and self-play metrics, one small panel per metric and one line per trial.

    The per-iteration AlpacaEval 2 panels appear only when some trial logged
    ``eval_iter/alpaca_eval2/*`` metrics.
    """
    panels = list(CORE_PANELS)
    panels += [panel for panel in EVAL_PANELS if any(trial.histories.get(panel.metric) for trial in trials)]
    columns = 3
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(11, 2.6 * rows + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    colors = trial_colors(trials)

    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    handles: dict[str, Line2D] = {}
    for ax, panel in zip(axes, panels, strict=False):
        drawn = 0
        for trial in trials:
            history = trial.histories.get(panel.metric)
            if not history:
                continue
            steps = [step for step, _ in history]
            values = [value for _, value in history]
            (line,) = ax.plot(steps, values, color=colors[trial.key], linewidth=1.4, label=trial.key)
            line.set(marker="o", markersize=4)
            if trial.is_base:
                line.set(linestyle="--", marker=BASE_MARKER, markersize=9)
            handles.setdefault(trial.key, line)
            drawn += 1
        if drawn == 0:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#777777")
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("self-play iteration")
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)

    ordered = [handles[trial.key] for trial in trials if trial.key in handles]
    if ordered:
        figure.legend(
            handles=ordered,
            loc="outside lower center",
            ncol=min(len(ordered), 5),
            frameon=False,
            fontsize=8,
        )
    return _to_png(figure)


def _draw_scatter_panel(
    ax, trials: Sequence[TrialData], colors: dict[str, RGB], metric: str, error_metric: str
) -> set[str]:
    """Draw one panel and return the variants that got at least one point."""
    points: list[tuple[float, float]] = []
    drawn: set[str] = set()
    for trial in trials:
        length = trial.final("avg_length")
        win_rate = trial.final(metric)
        if not _finite(length) or not _finite(win_rate):
            continue
        points.append((length, win_rate))
        drawn.add(trial.variant)
        error = trial.final(error_metric)
        color = to_rgb(BASE_COLOR) if trial.is_base else colors[trial.variant]
        if _finite(error):
            ax.errorbar(
                length, win_rate, yerr=error, fmt="none", ecolor=color, alpha=0.45, capsize=2, zorder=2
            )
        if trial.is_base:
            ax.scatter(length, win_rate, marker=BASE_MARKER, s=190, color=color, edgecolors="white", zorder=4)
            label = "base"
        else:
            ax.scatter(length, win_rate, marker="o", s=42, color=color, edgecolors="white", zorder=3)
            label = trial.key if trial.coef is None else f"{trial.coef:g}"
        ax.annotate(
            label, (length, win_rate), xytext=(5, 4), textcoords="offset points", fontsize=8, zorder=5
        )

    if not points:
        ax.text(
            0.5,
            0.5,
            "no trial has final AlpacaEval 2 metrics",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="#777777",
        )
        return drawn
    front = pareto_front(points)
    if len(front) > 1:
        lengths = [points[i][0] for i in front]
        win_rates = [points[i][1] for i in front]
        ax.plot(lengths, win_rates, linestyle="--", color=PARETO_COLOR, linewidth=1.2, zorder=1)
    ax.margins(x=0.12, y=0.15)
    return drawn


def _to_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _mix_with_white(color: RGB, whiteness: float) -> RGB:
    return tuple(channel + (1.0 - channel) * whiteness for channel in color)  # type: ignore[return-value]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
