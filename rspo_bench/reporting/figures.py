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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, LogFormatterSciNotation, LogLocator, MaxNLocator, NullFormatter

from rspo_bench.reporting.collect import TrialData

DPI = 110
BASE_COLOR = "#222222"
BASE_MARKER = "*"
PARETO_COLOR = "#888888"
# Line styles of the reference lines in coefficient figures: base model, then up to two single-λ trials.
REFERENCE_STYLES = ("--", ":", "-.")
# Above this many trials, legends list variants instead of trials and scatter
# points lose their coefficient labels, which would otherwise cover the plot.
MAX_LABELED_TRIALS = 20
# A coefficient of 0 sits this factor left of the smallest positive one on a log axis.
ZERO_COEF_OFFSET = 4.0
# Group key of base-model points in the scatter. Its space keeps it apart from variant names.
BASE_VARIANT_GROUP = " base"
# Up to this many distinct λ values get a tick each. More λ values get a tick per decade.
MAX_COEF_TICKS = 8

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
GRAD_NORM_PANEL = CurvePanel(
    "train/grad_norm", "Gradient norm before clipping", "mean L2 norm per iteration"
)
REG_PREFIX = "train/reg/"


@dataclass(frozen=True)
class CoefMetric:
    """One panel of a per-variant coefficient figure: a final value of each trial against λ."""

    title: str
    ylabel: str
    value: Callable[[TrialData], float | None]
    error: Callable[[TrialData], float | None] | None = None
    log_y: bool = False


# Final metrics of language-model worlds, drawn against the coefficient λ.
LM_COEF_METRICS = (
    CoefMetric(
        "Win rate", "win rate (%)", lambda trial: trial.final("win_rate"),
        lambda trial: trial.final("standard_error"),
    ),
    CoefMetric(
        "LC win rate", "LC win rate (%)", lambda trial: trial.final("lc_win_rate"),
        lambda trial: trial.final("lc_standard_error"),
    ),
    CoefMetric("Mean response length", "length (characters)", lambda trial: trial.final("avg_length")),
    CoefMetric(
        "KL to base (last iteration)", "KL (nats)", lambda trial: trial.last_value("selfplay/kl_to_base")
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
            # The largest coefficient gets the full color, and smaller ones mix in up to 55 % white.
            whiteness = 0.55 * (len(members) - 1 - rank) / max(len(members) - 1, 1)
            colors[trial.key] = _mix_with_white(color, whiteness)
    for trial in trials:
        if trial.is_base:
            colors[trial.key] = to_rgb(BASE_COLOR)
    return colors


def length_win_rate_scatter(trials: Sequence[TrialData]) -> bytes:
    """Plot final AlpacaEval 2 win rate against mean response length, raw and length-controlled.

    Each trial with final metrics is one point, colored by variant and labeled
    with its coefficient (unlabeled above MAX_LABELED_TRIALS trials). The base
    model is a star. Error bars are one standard error. The dashed line joins
    the Pareto front (higher win rate, shorter responses). Trials without final
    metrics, for example failed ones, are left out.
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
        drawn |= _draw_scatter_panel(
            ax, trials, colors, metric, error_metric, label_points=len(trials) <= MAX_LABELED_TRIALS
        )
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
    return curve_grid(trials, iteration_panels(trials))


def iteration_panels(trials: Sequence[TrialData]) -> list[CurvePanel]:
    """Return CORE_PANELS, then the EVAL_PANELS that some trial logged."""
    panels = list(CORE_PANELS)
    panels += [panel for panel in EVAL_PANELS if any(trial.histories.get(panel.metric) for trial in trials)]
    return panels


def diagnostic_panels(trials: Sequence[TrialData]) -> list[CurvePanel]:
    """Return the logged training-diagnostic panels: gradient norm, then each ``train/reg/<name>``."""
    logged = {metric for trial in trials for metric, history in trial.histories.items() if history}
    panels = [GRAD_NORM_PANEL] if GRAD_NORM_PANEL.metric in logged else []
    for metric in sorted(metric for metric in logged if metric.startswith(REG_PREFIX)):
        name = metric.removeprefix(REG_PREFIX)
        panels.append(CurvePanel(metric, f"Regularizer term {name}", "mean value per iteration"))
    return panels


def training_diagnostics(trials: Sequence[TrialData]) -> bytes | None:
    """Plot the gradient norm and each regularizer term per iteration, or return None when none was logged."""
    panels = diagnostic_panels(trials)
    if not panels:
        return None
    return curve_grid(trials, panels)


def curve_grid(
    trials: Sequence[TrialData], panels: Sequence[CurvePanel], *, columns: int = 3, log_y: bool = False
) -> bytes:
    """Return the PNG of draw_curve_grid."""
    return _to_png(draw_curve_grid(trials, panels, columns=columns, log_y=log_y))


def draw_curve_grid(
    trials: Sequence[TrialData], panels: Sequence[CurvePanel], *, columns: int = 3, log_y: bool = False
) -> Figure:
    """Plot one panel per metric history, one line per trial, in a grid with a shared legend.

    With ``log_y``, values that are zero or negative cannot be drawn and are
    left out, and each panel that dropped some notes how many.
    """
    columns = max(1, min(columns, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure = Figure(figsize=(11, 2.6 * rows + 0.8), layout="constrained")
    FigureCanvasAgg(figure)
    colors = trial_colors(trials)
    by_variant = len(trials) > MAX_LABELED_TRIALS

    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    handles: dict[str, Line2D] = {}
    drawn_variants: set[str] = set()
    for ax, panel in zip(axes, panels, strict=False):
        drawn = 0
        dropped = 0
        # In large sweeps all non-base lines of a panel go into one LineCollection,
        # because one plot call per trial takes seconds for hundreds of trials.
        segments: list[list[tuple[float, float]]] = []
        segment_colors: list[RGB] = []
        for trial in trials:
            history = trial.histories.get(panel.metric)
            if not history:
                continue
            points = [(step, value) for step, value in history if math.isfinite(value)]
            if log_y:
                positive = [(step, value) for step, value in points if value > 0]
                dropped += len(points) - len(positive)
                points = positive
            if not points:
                continue
            drawn += 1
            drawn_variants.add(trial.variant)
            if by_variant and not trial.is_base:
                segments.append(points)
                segment_colors.append(colors[trial.key])
                continue
            steps = [step for step, _ in points]
            values = [value for _, value in points]
            (line,) = ax.plot(steps, values, color=colors[trial.key], linewidth=1.4, label=trial.key)
            line.set(marker="o", markersize=4)
            if trial.is_base:
                line.set(linestyle="--", marker=BASE_MARKER, markersize=9)
            handles.setdefault(trial.key, line)
        if segments:
            ax.add_collection(LineCollection(segments, colors=segment_colors, linewidths=1.0, alpha=0.8))
            ax.scatter(
                [step for segment in segments for step, _ in segment],
                [value for segment in segments for _, value in segment],
                c=[color for segment, color in zip(segments, segment_colors, strict=True) for _ in segment],
                s=6,
                zorder=3,
            )
            ax.autoscale_view()
        if drawn == 0:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#777777")
        elif log_y:
            ax.set_yscale("log")
        if dropped:
            ax.text(
                0.99, 0.98, f"{dropped} values \u2264 0 not shown", ha="right", va="top",
                transform=ax.transAxes, fontsize=7, color="#777777",
            )
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("self-play iteration")
        ax.set_ylabel(panel.ylabel, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)

    if by_variant:
        legend = _variant_handles(trials, drawn_variants)
    else:
        legend = [handles[trial.key] for trial in trials if trial.key in handles]
    if legend:
        figure.legend(
            handles=legend,
            loc="outside lower center",
            ncol=min(len(legend), 5),
            frameon=False,
            fontsize=8,
        )
    return figure


def coefficient_variants(trials: Sequence[TrialData]) -> list[str]:
    """Return the variants that get a coefficient figure: those run at two or more distinct λ.

    A variant run at one λ (SPPO at λ = 0, a single headline setting) would be a
    figure of lone points, so it is a reference line in the other figures instead.
    """
    coefs: dict[str, set[float]] = {}
    for trial in trials:
        if not trial.is_base and trial.coef is not None:
            coefs.setdefault(trial.variant, set()).add(trial.coef)
    return sorted(variant for variant, values in coefs.items() if len(values) > 1)


def reference_trials(trials: Sequence[TrialData]) -> list[TrialData]:
    """Return the trials drawn as horizontal lines in coefficient figures, at most three.

    These are the base model, then the trials of variants without a coefficient
    figure, those with final metrics first.
    """
    with_figure = set(coefficient_variants(trials))
    others = [trial for trial in trials if not trial.is_base and trial.variant not in with_figure]
    others.sort(key=lambda trial: not trial.final_metrics)
    references = [trial for trial in trials if trial.is_base] + others
    return references[: len(REFERENCE_STYLES)]


def coefficient_figure(
    trials: Sequence[TrialData], variant: str, metrics: Sequence[CoefMetric] = LM_COEF_METRICS
) -> bytes:
    """Return the PNG of draw_coefficient_figure."""
    return _to_png(draw_coefficient_figure(trials, variant, metrics))


def draw_coefficient_figure(
    trials: Sequence[TrialData], variant: str, metrics: Sequence[CoefMetric] = LM_COEF_METRICS
) -> Figure:
    """Plot each final metric of ``variant``'s trials against the coefficient λ, one panel per metric.

    The λ axis is logarithmic when the variant has a positive λ. A trial at
    λ = 0 then sits ZERO_COEF_OFFSET times left of the smallest positive λ, as
    an open diamond on a tick labeled "0" left of a dotted line, because a log
    axis has no 0. The reference_trials are horizontal lines, or a note with an
    arrow under the x-axis when a line would lie far outside the variant's values.
    """
    members = sorted(
        (
            trial
            for trial in trials
            if trial.variant == variant and not trial.is_base and trial.coef is not None
        ),
        key=lambda trial: (trial.coef, trial.key),
    )
    references = reference_trials(trials)
    palette = variant_colors(trials)
    color = palette.get(variant, to_rgb(BASE_COLOR))
    positive = [trial.coef for trial in members if trial.coef > 0]
    log_x = bool(positive)
    zero_x = min(positive) / ZERO_COEF_OFFSET if positive else 0.0

    figure = Figure(figsize=(11, 2.9), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(metrics), squeeze=False).ravel()
    legend: dict[str, Line2D] = {}
    for ax, metric in zip(axes, metrics, strict=True):
        values = _draw_coefficient_panel(ax, members, metric, color, log_x=log_x, zero_x=zero_x)
        notes: list[str] = []
        for index, reference in enumerate(references):
            value = metric.value(reference)
            if not _finite(value) or (metric.log_y and value <= 0):
                continue
            label = "base model" if reference.is_base else reference.key
            if not _near(value, values, log=metric.log_y):
                # A line far from the variant's points would squeeze them into a thin band.
                arrow = "\u2191" if value > max(values) else "\u2193"
                notes.append(f"{label}: {_short(value)} {arrow}")
                continue
            reference_color = to_rgb(BASE_COLOR) if reference.is_base else palette[reference.variant]
            line = ax.axhline(
                value, color=reference_color, linestyle=REFERENCE_STYLES[index], linewidth=1.2, zorder=1
            )
            legend.setdefault(label, line)
        ax.set_title(metric.title, fontsize=10)
        ax.set_ylabel(metric.ylabel, fontsize=9)
        xlabel = "coefficient \u03bb" + (" (log scale)" if log_x else "")
        if notes:
            xlabel += "\n" + "\n".join(notes)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
    figure.suptitle(f"{variant}: final metrics against \u03bb", fontsize=11)
    if legend:
        labels = [
            label
            for label in ("base model" if reference.is_base else reference.key for reference in references)
            if label in legend
        ]
        figure.legend(
            handles=[legend[label] for label in labels], labels=labels, loc="outside lower center",
            ncol=len(labels), frameon=False, fontsize=8,
        )
    return figure


def _near(value: float, values: Sequence[float], *, log: bool) -> bool:
    """Check that ``value`` lies within one data range of ``values`` (at least 25 % of their size).

    Returns True when ``values`` is empty.
    """
    if not values:
        return True
    scale = math.log10 if log else (lambda x: x)
    low, high = scale(min(values)), scale(max(values))
    span = max(high - low, 0.25 * max(abs(low), abs(high)), 1e-12)
    return low - span <= scale(value) <= high + span


def _draw_coefficient_panel(
    ax, members: Sequence[TrialData], metric: CoefMetric, color: RGB, *, log_x: bool, zero_x: float
) -> list[float]:
    """Draw one metric of one variant against λ and return the values drawn.

    Up to MAX_LABELED_TRIALS points are joined by a line in λ order. More points
    are a plain scatter, because a line through many noisy points hides the trend.
    Error bars and points take one call each, which keeps large sweeps fast.
    """
    points: list[tuple[float, float, float]] = []
    for trial in members:
        value = metric.value(trial)
        if not _finite(value) or (metric.log_y and value <= 0):
            continue
        error = metric.error(trial) if metric.error is not None else None
        x = zero_x if (trial.coef == 0 and log_x) else trial.coef
        points.append((x, value, error if _finite(error) else math.nan))
    drawn = [value for _, value, _ in points]
    zero_values = [value for x, value, _ in points if log_x and x == zero_x]
    xs = [x for x, _, _ in points if not (log_x and x == zero_x)]
    ys = [value for x, value, _ in points if not (log_x and x == zero_x)]
    has_zero = bool(zero_values)

    if any(math.isfinite(error) for _, _, error in points):
        ax.errorbar(
            [x for x, _, _ in points], drawn, yerr=[error for _, _, error in points], fmt="none",
            ecolor=color, alpha=0.45, capsize=2, zorder=2,
        )
    if zero_values:
        ax.scatter(
            [zero_x] * len(zero_values), zero_values, marker="D", s=46, facecolors="white", edgecolors=color,
            linewidths=1.5, zorder=4,
        )
    if xs and len(points) <= MAX_LABELED_TRIALS:
        ax.plot(xs, ys, color=color, linewidth=1.4, marker="o", markersize=5, zorder=3)
    elif xs:
        ax.scatter(xs, ys, color=color, s=14, alpha=0.8, zorder=3)
    if not xs and not has_zero:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#777777")
    if log_x:
        _set_log_coef_axis(ax, sorted({trial.coef for trial in members if trial.coef > 0}), zero_x, has_zero)
    if metric.log_y and (xs or has_zero):
        ax.set_yscale("log")
    if has_zero:
        separator = zero_x * math.sqrt(ZERO_COEF_OFFSET)
        ax.axvline(separator, color="#bbbbbb", linewidth=0.8, linestyle=(0, (2, 2)))
    ax.margins(x=0.08, y=0.18)
    return drawn


def _set_log_coef_axis(ax, coefs: Sequence[float], zero_x: float, has_zero: bool) -> None:
    """Put λ on a log axis with a tick per λ tried (per decade if many) and "0" at ``zero_x``."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(coefs) <= MAX_COEF_TICKS:
        ticks = list(coefs)
        labels = [f"{coef:g}" for coef in coefs]
    else:
        low, high = math.floor(math.log10(min(coefs))), math.ceil(math.log10(max(coefs)))
        ticks = [10.0**exponent for exponent in range(low, high + 1)]
        formatter = LogFormatterSciNotation()
        labels = [formatter(tick) for tick in ticks]
    if has_zero:
        ticks.insert(0, zero_x)
        labels.insert(0, "0")
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xticks(ticks, labels)
    if len(coefs) > MAX_COEF_TICKS:
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs="auto"))
    else:
        ax.xaxis.set_minor_locator(FixedLocator([]))


def _short(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _variant_handles(trials: Sequence[TrialData], drawn: set[str]) -> list[Line2D]:
    handles = [
        Line2D([], [], color=color, linewidth=1.6, label=variant)
        for variant, color in variant_colors(trials).items()
        if variant in drawn
    ]
    if any(trial.is_base and trial.variant in drawn for trial in trials):
        handles.append(
            Line2D([], [], color=BASE_COLOR, linestyle="--", marker=BASE_MARKER, label="base model")
        )
    return handles


def _draw_scatter_panel(
    ax,
    trials: Sequence[TrialData],
    colors: dict[str, RGB],
    metric: str,
    error_metric: str,
    *,
    label_points: bool,
) -> set[str]:
    """Draw one panel and return the variants that got at least one point.

    Points are drawn with one errorbar and one scatter call per variant, because
    per-point calls take seconds in sweeps of hundreds of trials.
    """
    points: list[tuple[float, float]] = []
    drawn: set[str] = set()
    groups: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for trial in trials:
        length = trial.final("avg_length")
        win_rate = trial.final(metric)
        if not _finite(length) or not _finite(win_rate):
            continue
        points.append((length, win_rate))
        drawn.add(trial.variant)
        error = trial.final(error_metric)
        group = BASE_VARIANT_GROUP if trial.is_base else trial.variant
        lengths, win_rates, errors = groups.setdefault(group, ([], [], []))
        lengths.append(length)
        win_rates.append(win_rate)
        errors.append(error if _finite(error) else math.nan)
        if label_points or trial.is_base:
            if trial.is_base:
                label = "base"
            elif trial.coef is None:
                label = trial.key
            else:
                label = f"{trial.coef:g}"
            ax.annotate(
                label, (length, win_rate), xytext=(5, 4), textcoords="offset points", fontsize=8, zorder=5
            )

    for group, (lengths, win_rates, errors) in groups.items():
        is_base = group == BASE_VARIANT_GROUP
        color = to_rgb(BASE_COLOR) if is_base else colors[group]
        if any(math.isfinite(error) for error in errors):
            ax.errorbar(
                lengths, win_rates, yerr=errors, fmt="none", ecolor=color, alpha=0.45, capsize=2, zorder=2
            )
        if is_base:
            ax.scatter(
                lengths, win_rates, marker=BASE_MARKER, s=190, color=color, edgecolors="white", zorder=4
            )
        else:
            size = 42 if label_points else 22
            ax.scatter(lengths, win_rates, marker="o", s=size, color=color, edgecolors="white", zorder=3)

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
