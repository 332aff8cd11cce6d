"""Tests of the sweep report: collection, figures, warnings, paper table, game world, Chromium and the PDF.

The helpers at the top (store creation, logging, DOM parsing, Chromium) are
also used by tests/test_report_compare.py.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import subprocess
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import mlflow
import pytest
from mlflow.entities import Metric, Param
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from PIL import Image

from rspo_bench.reporting import collect
from rspo_bench.reporting.checks import cross_sweep_warnings
from rspo_bench.reporting.collect import SweepData, SweepNotFoundError, TrialData, collect_sweep
from rspo_bench.reporting.figures import (
    CORE_PANELS,
    EVAL_PANELS,
    coefficient_variants,
    diagnostic_panels,
    draw_coefficient_figure,
    draw_curve_grid,
    iteration_curves,
    iteration_panels,
    length_win_rate_scatter,
    pareto_front,
    reference_trials,
)
from rspo_bench.reporting.game import (
    AVERAGE_PANELS,
    CONVERGENCE_PANELS,
    convergence_panels,
    final_duality_gap,
    game_metric_panels,
)
from rspo_bench.reporting.html import PROXY_WARNING, redact_uri, render_html, sweep_warnings, write_report
from rspo_bench.reporting.mlflow_ui import mlflow_ui_view
from rspo_bench.reporting.paper import is_paper_config, match_paper_results, variant_regularizers

SWEEP = "demo-sweep"
OTHER_SWEEP = "other-sweep"
GAME_SWEEP = "game-sweep"
JUDGE = "offline-proxy-judge-v1"
JUDGE_DESCRIPTION = "Offline <b>proxy</b> judge & reward model trained on synthetic preferences."
START_MS = 1_700_000_000_000
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Trial key -> (variant, coef tag, status, final metrics, iterations with metrics, per-iteration eval).
# Final metrics are (win rate %, LC win rate %, mean length in characters).
TRIALS = {
    "base": ("base", "0", "FINISHED", (10.0, 12.0, 1400.0), 0, False),
    "reverse_kl-0.1": ("reverse_kl", "0.1", "FINISHED", (20.0, 22.0, 1800.0), 2, False),
    "reverse_kl-0.5": ("reverse_kl", "0.5", "FINISHED", (18.0, 24.0, 1500.0), 2, False),
    # The LC win rate is 15 points below the raw win rate, which must raise a warning.
    "forward_kl-0.1": ("forward_kl", "0.1", "FINISHED", (30.0, 15.0, 2600.0), 2, True),
    "forward_kl-0.5": ("forward_kl", "0.5", "FINISHED", (16.0, 19.0, 1450.0), 2, True),
    # Failed during iteration 2: one iteration of metrics and no final evaluation.
    "chi2-1.0": ("chi2", "1.0", "FAILED", None, 1, False),
    # Pruned by the sweep engine after iteration 1, so it has no final evaluation.
    "reverse_kl-1": ("reverse_kl", "1", "KILLED", None, 1, True),
}
# The rspo.state tag the sweep engine sets for each MLflow status.
STATES = {"FINISHED": "complete", "FAILED": "failed", "KILLED": "pruned"}

# Game-world trials: key -> (variant, coef, final duality gap). Each logs 4 iterations
# whose duality gap falls geometrically to the final one; reverse_kl-1 reaches exactly 0.
GAME_TRIALS = {
    "reverse_kl-0": ("reverse_kl", 0.0, 3e-4),
    "reverse_kl-0.1": ("reverse_kl", 0.1, 2e-6),
    "reverse_kl-1": ("reverse_kl", 1.0, 0.0),
    "chi_squared-0.5": ("chi_squared", 0.5, 5e-9),
}
GAME_ITERATIONS = 4


def new_store(root: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Return the URI of an empty SQLite MLflow store at ``root/mlruns.db``.

    Creating the MLflow tables takes several seconds, so the first call makes a
    template database in the session's temporary folder and later calls copy it.
    """
    template = tmp_path_factory.getbasetemp() / "mlflow-template" / "mlruns.db"
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        mlflow.MlflowClient(f"sqlite:///{template}").search_experiments()
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, root / "mlruns.db")
    return f"sqlite:///{root}/mlruns.db"


def _trial_tags(key: str, variant: str, coef: str, parent_id: str) -> dict[str, str]:
    return {
        "mlflow.parentRunId": parent_id,
        "rspo.role": "trial",
        "rspo.sweep": SWEEP,
        "rspo.trial": key,
        "rspo.variant": variant,
        "rspo.coef": coef,
        "rspo.judge": JUDGE,
        "rspo.judge_is_proxy": "true",
        "rspo.judge_description": JUDGE_DESCRIPTION,
        "rspo.data": "AlpacaEval 805 instructions; baseline gpt4_1106_preview",
        "rspo.code_version": "rspo-bench 0.1.0 (git abc1234)",
        "rspo.world": "tiny",
    }


def _iteration_metrics(key: str, iterations: int, with_eval: bool) -> list[Metric]:
    # Distinct, smooth values per trial so that lines in the figures do not overlap.
    offset = (sum(map(ord, key)) % 11) / 10
    metrics: list[Metric] = []
    for step in range(1, iterations + 1):
        timestamp = START_MS + step * 1000
        values = {
            "train/loss": 0.7 - (0.08 + 0.02 * offset) * step,
            "train/sppo": 0.6 - (0.1 + 0.03 * offset) * step,
            "train/reg/reverse_kl": (0.03 + 0.02 * offset) * step,
            "train/reg_total": (0.03 + 0.02 * offset) * step,
            "selfplay/kl_to_base": (0.02 + 0.05 * offset) * step,
            "selfplay/response_length": 1300.0 + (100 + 80 * offset) * step,
            "selfplay/win_prob_gap": 0.1 + (0.02 + 0.02 * offset) * step,
            "selfplay/win_prob_std": 0.1,
            "selfplay/chosen_win_prob": 0.6 + 0.02 * step,
            "selfplay/rejected_win_prob": 0.4 - 0.02 * step,
            "train/grad_norm": 1.5 - (0.2 + 0.05 * offset) * step,
        }
        if with_eval:
            values["eval_iter/alpaca_eval2/win_rate"] = 12.0 + (2 + offset) * step
            values["eval_iter/alpaca_eval2/lc_win_rate"] = 13.0 + (1 + offset) * step
            values["eval_iter/alpaca_eval2/avg_length"] = 1400.0 + 100 * step
        metrics += [Metric(name, value, timestamp, step) for name, value in values.items()]
    return metrics


def _final_values(final: tuple[float, float, float] | None) -> dict[str, float]:
    if final is None:
        return {}
    win_rate, lc_win_rate, avg_length = final
    return {"win_rate": win_rate, "lc_win_rate": lc_win_rate, "avg_length": avg_length}


def _final_metrics(final: tuple[float, float, float] | None, step: int) -> list[Metric]:
    if final is None:
        return []
    values = {
        **_final_values(final),
        "standard_error": 1.2,
        "lc_standard_error": 0.9,
        "n_instructions": 805.0,
    }
    return [Metric(f"alpaca_eval2/{name}", value, START_MS + 10_000, step) for name, value in values.items()]


def _log_store(root: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    tracking_uri = new_store(root, tmp_path_factory)
    client = mlflow.MlflowClient(tracking_uri)

    experiment_id = client.create_experiment(SWEEP, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(
        experiment_id, start_time=START_MS, run_name=SWEEP, tags={"rspo.role": "sweep", "rspo.sweep": SWEEP}
    )
    parent_id = parent.info.run_id
    client.log_batch(parent_id, params=[Param("world.kind", "tiny"), Param("selfplay.iterations", "2")])
    for key, (variant, coef, status, final, iterations, with_eval) in TRIALS.items():
        tags = {**_trial_tags(key, variant, coef, parent_id), "rspo.state": STATES[status]}
        run = client.create_run(experiment_id, start_time=START_MS, run_name=key, tags=tags)
        params = [
            Param("loss.type", "rspo"),
            Param("loss.regularizers.0.name", variant),
            Param("loss.regularizers.0.coef", coef),
        ]
        # Final metrics go at step 0 for the base model and at the last iteration otherwise.
        metrics = _iteration_metrics(key, iterations, with_eval) + _final_metrics(final, iterations)
        client.log_batch(run.info.run_id, metrics=metrics, params=params)
        client.set_terminated(run.info.run_id, status=status, end_time=START_MS + 20_000)
    client.set_terminated(parent_id, status="FINISHED")

    # A resumed trial logs iteration 2 a second time, and the later value must win.
    resumed = client.search_runs([experiment_id], "tags.`rspo.trial` = 'reverse_kl-0.1'")[0]
    client.log_metric(resumed.info.run_id, "train/loss", 0.123, timestamp=START_MS + 60_000, step=2)

    # A second sweep with one trial, which must not leak into the first.
    other_id = client.create_experiment(OTHER_SWEEP, artifact_location=(root / "artifacts-other").as_uri())
    other_parent = client.create_run(other_id, tags={"rspo.role": "sweep", "rspo.sweep": OTHER_SWEEP})
    other_tags = _trial_tags("reverse_kl-9", "reverse_kl", "9", other_parent.info.run_id)
    other_tags["rspo.sweep"] = OTHER_SWEEP
    client.create_run(other_id, tags=other_tags)

    _log_game_sweep(client, root)
    return tracking_uri


def _log_game_sweep(client: mlflow.MlflowClient, root: Path) -> None:
    experiment_id = client.create_experiment(GAME_SWEEP, artifact_location=(root / "artifacts-game").as_uri())
    parent = client.create_run(
        experiment_id, start_time=START_MS, tags={"rspo.role": "sweep", "rspo.sweep": GAME_SWEEP}
    )
    client.log_batch(parent.info.run_id, params=[Param("world.kind", "game")])
    for key, (variant, coef, final_gap) in GAME_TRIALS.items():
        tags = {
            **_trial_tags(key, variant, f"{coef:g}", parent.info.run_id),
            "rspo.sweep": GAME_SWEEP,
            "rspo.world": "game",
            "rspo.judge": "exact preference matrix",
            "rspo.judge_is_proxy": "false",
            "rspo.state": "complete",
        }
        run = client.create_run(experiment_id, start_time=START_MS, run_name=key, tags=tags)
        metrics = []
        for step in range(1, GAME_ITERATIONS + 1):
            # Geometric decay from 0.2 at iteration 1 to the final gap at the last iteration.
            fraction = (GAME_ITERATIONS - step) / (GAME_ITERATIONS - 1)
            if step == GAME_ITERATIONS:
                gap = final_gap
            else:
                gap = 0.2 * (max(final_gap, 1e-14) / 0.2) ** (1 - fraction)
            values = {
                "game/duality_gap": gap,
                "game/exploitability": 1.5 * gap,
                "game/reverse_kl": 0.4 / (1 + coef) * step / GAME_ITERATIONS,
                "game/expected_length": 100.0 + 5 * step / (1 + coef),
            }
            if variant == "chi_squared":
                values["game/chi_squared"] = 0.3 * step / GAME_ITERATIONS
                values["game/average_duality_gap"] = 2 * gap
                values["game/win_rate_vs_reference"] = 0.5 + 0.01 * step
            metrics += [Metric(name, value, START_MS + step * 1000, step) for name, value in values.items()]
        metrics.append(Metric("game/final_duality_gap", final_gap, START_MS + 10_000, GAME_ITERATIONS))
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id, status="FINISHED", end_time=START_MS + 20_000)
    client.set_terminated(parent.info.run_id, status="FINISHED")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _log_store(tmp_path_factory.mktemp("mlflow"), tmp_path_factory)


@pytest.fixture(scope="module")
def sweep(tracking_uri: str) -> SweepData:
    return collect_sweep(tracking_uri, SWEEP)


@pytest.fixture(scope="module")
def report_files(sweep: SweepData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    output_dir = tmp_path_factory.mktemp("report")
    generated_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    return write_report([sweep], output_dir, formats=("html", "pdf"), generated_at=generated_at)


@pytest.fixture(scope="module")
def game_sweep(tracking_uri: str) -> SweepData:
    return collect_sweep(tracking_uri, GAME_SWEEP)


@pytest.fixture(scope="module")
def game_report(game_sweep: SweepData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_report([game_sweep], tmp_path_factory.mktemp("game-report"), formats=("html",))["html"]


class ReportDom(HTMLParser):
    """Collect the attributes of every <img> and <section>, the cell texts of every table by id, and links."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.trial_rows: list[str] = []
        self.body: dict[str, str | None] = {}
        self.links: list[str] = []
        self.sections: list[dict[str, str | None]] = []
        # Table id -> rows, each a list of cell texts.
        self.tables: dict[str, list[list[str]]] = {}
        # Table id -> the data-* attributes of each body row.
        self.row_attributes: dict[str, list[dict[str, str | None]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
        elif tag == "tr" and "data-trial" in attributes:
            self.trial_rows.append(attributes["data-trial"] or "")
        elif tag == "body":
            self.body = attributes
        elif tag == "a":
            self.links.append(attributes.get("href") or "")
        elif tag == "section":
            self.sections.append(attributes)
        if tag == "table" and attributes.get("id"):
            self._table = attributes["id"]
            self.tables[self._table] = []
            self.row_attributes[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
            self.row_attributes[self._table].append(attributes)
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def body_rows(self, table_id: str) -> dict[str, list[str]]:
        """Map each body row's data-* attribute (trial key or paper setting) to its cell texts."""
        rows = self.tables[table_id]
        attributes = self.row_attributes[table_id]
        return {
            _row_key(row_attributes): cells
            for row_attributes, cells in zip(attributes, rows, strict=True)
            if _row_key(row_attributes)
        }


def _row_key(attributes: dict[str, str | None]) -> str:
    return next((value or "" for name, value in attributes.items() if name.startswith("data-")), "")


def parse_report(html: str) -> ReportDom:
    dom = ReportDom()
    dom.feed(html)
    return dom


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install chromium poppler-utils)")
    return path


def chromium_dom(html: Path, profile: Path) -> ReportDom:
    """Load ``html`` in headless Chromium, run its scripts and parse the resulting DOM."""
    command = [
        require_binary("chromium"),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=5000",
        "--dump-dom",
        html.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return parse_report(result.stdout)


def assert_images_loaded(dom: ReportDom, expected: int) -> None:
    """Check that the browser decoded every figure of the page, and that there are ``expected`` figures."""
    assert dom.body.get("data-images-checked") == str(expected)
    assert len(dom.images) == expected
    for image in dom.images:
        assert image.get("data-loaded") == "true", image.get("id")
        assert int(image.get("data-natural-width") or 0) > 0, image.get("id")



# Collection from MLflow.


def test_collect_returns_every_trial(sweep: SweepData) -> None:
    assert sweep.name == SWEEP
    assert sweep.parent_run_id
    assert sorted(trial.key for trial in sweep.trials) == sorted(TRIALS)
    assert sweep.trials[0].key == "base"
    assert sweep.trials[0].is_base


def test_collect_reads_parent_and_experiment(sweep: SweepData, tracking_uri: str) -> None:
    experiment = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(SWEEP)
    assert sweep.experiment_id == experiment.experiment_id
    assert sweep.experiment_name == SWEEP
    assert sweep.parent_params["world.kind"] == "tiny"
    assert sweep.world == "tiny"
    assert not sweep.is_game


def test_collect_reads_tags_status_params(sweep: SweepData) -> None:
    trials = {trial.key: trial for trial in sweep.trials}
    for key, (variant, coef, status, _, _, _) in TRIALS.items():
        trial = trials[key]
        assert trial.variant == variant
        assert trial.coef == float(coef)
        assert trial.status == status
        assert trial.state == STATES[status]
        assert trial.params["loss.regularizers.0.name"] == variant
        assert trial.judge == JUDGE
        assert trial.judge_is_proxy
    assert trials["reverse_kl-1"].is_pruned
    assert not trials["chi2-1.0"].is_pruned


def test_collect_reads_final_metrics(sweep: SweepData) -> None:
    trials = {trial.key: trial for trial in sweep.trials}
    for key, (_, _, _, final, _, _) in TRIALS.items():
        for name, value in _final_values(final).items():
            assert trials[key].final(name) == pytest.approx(value)
    assert trials["reverse_kl-0.5"].final("n_instructions") == 805
    assert trials["chi2-1.0"].final_metrics == {}


def test_collect_reads_histories(sweep: SweepData) -> None:
    trials = {trial.key: trial for trial in sweep.trials}
    for key, (_, _, _, _, iterations, with_eval) in TRIALS.items():
        histories = trials[key].histories
        expected_steps = list(range(1, iterations + 1))
        if iterations == 0:
            assert histories == {}
            continue
        for metric in ("train/loss", "train/sppo", "train/reg/reverse_kl", "selfplay/kl_to_base"):
            assert [step for step, _ in histories[metric]] == expected_steps
        assert ("eval_iter/alpaca_eval2/win_rate" in histories) == with_eval
        assert not any(metric.startswith("alpaca_eval2/") for metric in histories)


def test_collect_keeps_latest_value_per_step(sweep: SweepData) -> None:
    trial = next(trial for trial in sweep.trials if trial.key == "reverse_kl-0.1")
    assert len(trial.histories["train/loss"]) == 2
    assert trial.last_value("train/loss") == pytest.approx(0.123)
    assert trial.value_at("train/loss", 2) == pytest.approx(0.123)
    assert trial.value_at("train/loss", 7) is None


def test_collect_without_bulk_reads_same(
    sweep: SweepData, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store without get_metric_history_bulk (file or REST store) is read per run and metric.
    monkeypatch.setattr(SqlAlchemyStore, "get_metric_history_bulk", None)
    per_metric = collect_sweep(tracking_uri, SWEEP)
    assert {trial.key: trial.histories for trial in per_metric.trials} == {
        trial.key: trial.histories for trial in sweep.trials
    }


def test_collect_rereads_truncated_bulk(
    sweep: SweepData, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a row limit of 1 every bulk query may be cut off, so every run is read again per metric.
    monkeypatch.setattr(collect, "_BULK_ROW_LIMIT", 1)
    reread = collect_sweep(tracking_uri, SWEEP)
    assert {trial.key: trial.histories for trial in reread.trials} == {
        trial.key: trial.histories for trial in sweep.trials
    }


def test_collect_unknown_sweep_lists_existing(tracking_uri: str) -> None:
    with pytest.raises(SweepNotFoundError) as error:
        collect_sweep(tracking_uri, "no-such-sweep")
    message = str(error.value)
    assert "'no-such-sweep'" in message
    assert tracking_uri in message
    assert f"'{SWEEP}'" in message
    assert f"'{OTHER_SWEEP}'" in message


def test_collect_other_sweep_is_separate(tracking_uri: str) -> None:
    other = collect_sweep(tracking_uri, OTHER_SWEEP)
    assert [trial.key for trial in other.trials] == ["reverse_kl-9"]
    assert other.trials[0].status == "RUNNING"


def test_collect_game_final_metrics(game_sweep: SweepData) -> None:
    assert game_sweep.is_game
    trials = {trial.key: trial for trial in game_sweep.trials}
    assert sorted(trials) == sorted(GAME_TRIALS)
    for key, (_, _, final_gap) in GAME_TRIALS.items():
        assert final_duality_gap(trials[key]) == pytest.approx(final_gap)
        assert "game/final_duality_gap" not in trials[key].histories
        assert [step for step, _ in trials[key].histories["game/duality_gap"]] == list(
            range(1, GAME_ITERATIONS + 1)
        )


# Figures.


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        ([], []),
        ([(100.0, 10.0)], [0]),
        # The second point is longer and worse, so it is dominated.
        ([(100.0, 10.0), (200.0, 5.0)], [0]),
        ([(300.0, 30.0), (100.0, 10.0), (200.0, 20.0)], [1, 2, 0]),
        # Same length, lower win rate: dominated. Exact duplicates keep the first.
        ([(100.0, 10.0), (100.0, 8.0), (100.0, 10.0)], [0]),
        # Same win rate at a greater length: dominated.
        ([(100.0, 10.0), (150.0, 10.0)], [0]),
    ],
)
def test_pareto_front_cases(points: list[tuple[float, float]], expected: list[int]) -> None:
    assert pareto_front(points) == expected


def test_figures_are_deterministic_png(sweep: SweepData) -> None:
    first = length_win_rate_scatter(sweep.trials[:3])
    second = length_win_rate_scatter(sweep.trials[:3])
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    assert first == second


def test_curves_add_eval_panels_when_logged(sweep: SweepData) -> None:
    eval_metric = "eval_iter/alpaca_eval2/win_rate"
    without_eval = [trial for trial in sweep.trials if eval_metric not in trial.histories]
    assert iteration_panels(without_eval) == list(CORE_PANELS)
    assert iteration_panels(sweep.trials) == [*CORE_PANELS, *EVAL_PANELS]


def test_figures_accept_trials_without_metrics(sweep: SweepData) -> None:
    failed = [trial for trial in sweep.trials if trial.status == "FAILED"]
    assert length_win_rate_scatter(failed).startswith(b"\x89PNG")
    assert iteration_curves([]).startswith(b"\x89PNG")


def test_coefficient_variants_and_references(sweep: SweepData) -> None:
    # chi2 ran at one λ only, so it is a reference line instead of a figure.
    assert coefficient_variants(sweep.trials) == ["forward_kl", "reverse_kl"]
    assert [trial.key for trial in reference_trials(sweep.trials)] == ["base", "chi2-1.0"]
    sppo = _trial_copy(sweep, "reverse_kl-0.1", key="sppo-0", variant="sppo", coef=0.0)
    headline = _trial_copy(sweep, "reverse_kl-0.5", key="mix-0.1", variant="mix", coef=0.1)
    trials = [*sweep.trials, sppo, headline]
    assert coefficient_variants(trials) == ["forward_kl", "reverse_kl"]
    # Trials with final metrics come before chi2-1.0, which failed, and three is the maximum.
    assert [trial.key for trial in reference_trials(trials)] == ["base", "sppo-0", "mix-0.1"]


def test_coefficient_figure_log_axis_zero(sweep: SweepData) -> None:
    at_zero = _trial_copy(sweep, "reverse_kl-0.5", key="reverse_kl-0", coef=0.0)
    figure = draw_coefficient_figure([*sweep.trials, at_zero], "reverse_kl")
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert len(axes) == 4
    for ax in axes:
        assert ax.get_xscale() == "log"
        labels = [label.get_text() for label in ax.get_xticklabels()]
        # λ = 0 sits left of the smallest positive λ, on a tick labeled 0.
        assert labels[0] == "0"
        assert ax.get_xticks()[0] < 0.1
        assert "0.1" in labels
        assert "0.5" in labels


def test_coefficient_figure_linear_without_positive(sweep: SweepData) -> None:
    zero = _trial_copy(sweep, "reverse_kl-0.5", key="mix-0", variant="mix", coef=0.0)
    other = _trial_copy(sweep, "reverse_kl-0.1", key="mix-0b", variant="mix", coef=0.0)
    figure = draw_coefficient_figure([zero, other], "mix")
    assert all(ax.get_xscale() == "linear" for ax in figure.axes)


def test_diagnostic_panels_list_reg_terms(sweep: SweepData) -> None:
    panels = [panel.metric for panel in diagnostic_panels(sweep.trials)]
    assert panels == ["train/grad_norm", "train/reg/reverse_kl"]
    assert diagnostic_panels([sweep.trials[0]]) == []


def test_game_convergence_uses_log_axis(game_sweep: SweepData) -> None:
    panels = convergence_panels(game_sweep.trials)
    # Only chi_squared-0.5 logged the average iterate's gap, and no trial logged its exploitability.
    assert panels == [*CONVERGENCE_PANELS, AVERAGE_PANELS[0]]
    figure = draw_curve_grid(game_sweep.trials, panels, columns=2, log_y=True)
    axes = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [panel.title for panel in panels]
    assert all(ax.get_yscale() == "log" for ax in axes)
    # One line per trial in each panel, and the gap of exactly 0 is left out with a note.
    assert [len(ax.get_lines()) for ax in axes] == [len(GAME_TRIALS), len(GAME_TRIALS), 1]
    notes = [text.get_text() for text in axes[0].texts]
    assert "1 values \u2264 0 not shown" in notes


def test_game_metric_panels(game_sweep: SweepData) -> None:
    panels = game_metric_panels(game_sweep.trials)
    assert [panel.metric for panel in panels] == [
        "game/reverse_kl",
        "game/chi_squared",
        "game/expected_length",
        "game/win_rate_vs_reference",
    ]
    assert panels[-1].title == "win_rate_vs_reference"


# Warnings.


def test_warnings_flag_lc_gap_and_failure(sweep: SweepData) -> None:
    warnings = sweep_warnings(sweep)
    assert any("forward_kl-0.1" in warning and "LC win rate" in warning for warning in warnings)
    assert any("chi2-1.0 failed (status FAILED, state failed)" in warning for warning in warnings)
    assert not any("reverse_kl-0.5" in warning for warning in warnings)
    assert not any("different judges" in warning for warning in warnings)
    assert not any("Misaligned instructions" in warning for warning in warnings)


def test_warnings_list_pruned_trial(sweep: SweepData) -> None:
    warnings = [warning for warning in sweep_warnings(sweep) if "reverse_kl-1 " in warning]
    assert len(warnings) == 1
    assert "was pruned after iteration 1 (state pruned, MLflow status KILLED)" in warnings[0]
    assert "last per-iteration LC win rate" in warnings[0]


def test_warnings_flag_mixed_judges(sweep: SweepData) -> None:
    other = sweep.trials[1]
    tags = {**other.tags, "rspo.judge": "alpaca_eval_gpt4_turbo_fn", "rspo.judge_is_proxy": "false"}
    mixed = dataclasses.replace(sweep, trials=[sweep.trials[0], dataclasses.replace(other, tags=tags)])
    warnings = sweep_warnings(mixed)
    judge_warnings = [warning for warning in warnings if "different judges" in warning]
    assert len(judge_warnings) == 1
    assert judge_warnings[0].startswith("Mixed judges:")
    assert "alpaca_eval_gpt4_turbo_fn" in judge_warnings[0]


def test_warnings_flag_misaligned_instructions(sweep: SweepData) -> None:
    shorter = dataclasses.replace(
        sweep.trials[1], final_metrics={**sweep.trials[1].final_metrics, "alpaca_eval2/n_instructions": 400.0}
    )
    trials = [sweep.trials[0], shorter, *sweep.trials[2:]]
    warnings = [
        warning
        for warning in sweep_warnings(dataclasses.replace(sweep, trials=trials))
        if warning.startswith("Misaligned instructions")
    ]
    assert len(warnings) == 1
    assert f"400 for {shorter.key}" in warnings[0]
    assert "805 for " in warnings[0]


def test_warnings_flag_instruction_subset(sweep: SweepData) -> None:
    trials = [
        dataclasses.replace(trial, final_metrics={**trial.final_metrics, "alpaca_eval2/n_instructions": 40.0})
        for trial in sweep.trials
    ]
    warnings = [
        warning
        for warning in sweep_warnings(dataclasses.replace(sweep, trials=trials))
        if warning.startswith("Instruction subset")
    ]
    assert len(warnings) == 1
    assert "40 of the 805" in warnings[0]
    assert not any(w.startswith("Instruction subset") for w in sweep_warnings(sweep))


def test_warnings_flag_unfinished_trial(sweep: SweepData) -> None:
    running = dataclasses.replace(sweep.trials[1], status="RUNNING", tags={})
    warnings = sweep_warnings(dataclasses.replace(sweep, trials=[running]))
    assert any(f"{running.key} did not finish (status RUNNING)" in warning for warning in warnings)


def test_warnings_game_missing_final_gap(game_sweep: SweepData) -> None:
    assert sweep_warnings(game_sweep) == []
    trial = dataclasses.replace(game_sweep.trials[0], final_metrics={})
    warnings = sweep_warnings(dataclasses.replace(game_sweep, trials=[trial]))
    expected = f"Trial {trial.key} finished but logged no final duality gap (game/final_duality_gap)."
    assert warnings == [expected]


def test_cross_sweep_warnings(sweep: SweepData, game_sweep: SweepData) -> None:
    assert cross_sweep_warnings([sweep]) == []
    shorter = []
    for trial in sweep.trials:
        if trial.final_metrics:
            final = {**trial.final_metrics, "alpaca_eval2/n_instructions": 100.0}
            trial = dataclasses.replace(trial, final_metrics=final)
        shorter.append(trial)
    warnings = cross_sweep_warnings([sweep, dataclasses.replace(sweep, name="short", trials=shorter)])
    assert len(warnings) == 1
    assert warnings[0].startswith("Misaligned instructions")
    assert f"{SWEEP}: 805" in warnings[0]
    assert "short: 100" in warnings[0]
    mixed = cross_sweep_warnings([sweep, game_sweep])
    assert any("different judges" in warning for warning in mixed)
    assert any("different worlds (game, tiny)" in warning for warning in mixed)


# Paper comparison.


PAPER_PARAMS = {
    "world.kind": "hf",
    "world.hf.name_or_path": "mistralai/Mistral-7B-Instruct-v0.2",
    "selfplay.iterations": "2",
    "sweep.variants.0.name": "sppo",
    "sweep.variants.0.regularizers": "[]",
    "sweep.variants.1.name": "headline",
    "sweep.variants.1.regularizers.0.name": "is_forward_kl",
    "sweep.variants.1.regularizers.0.weight": "1.0",
    "sweep.variants.1.regularizers.1.name": "reverse_kl",
    "sweep.variants.1.regularizers.1.weight": "5.0",
    "sweep.variants.2.name": "reverse_kl",
    "sweep.variants.2.regularizers.0.name": "reverse_kl",
    "sweep.variants.2.regularizers.0.weight": "1.0",
}


def _trial_copy(sweep: SweepData, source: str, **changes: object) -> TrialData:
    """Copy the trial with key ``source``, changing the given fields (key, variant, coef, ...)."""
    trial = next(trial for trial in sweep.trials if trial.key == source)
    return dataclasses.replace(trial, **changes)


def _paper_sweep(sweep: SweepData) -> SweepData:
    """Return a paper-reproduction sweep: base, SPPO, the headline mix at 0.1 and reverse KL at 0.5."""
    trials = [
        sweep.trials[0],
        _trial_copy(sweep, "forward_kl-0.5", key="sppo-0", variant="sppo", coef=0.0),
        _trial_copy(sweep, "reverse_kl-0.1", key="headline-0.1", variant="headline", coef=0.1),
        _trial_copy(sweep, "reverse_kl-0.5"),
    ]
    return dataclasses.replace(sweep, name="mistral-repro", trials=trials, parent_params=PAPER_PARAMS)


@pytest.mark.parametrize(
    ("params", "name", "expected"),
    [
        ({"world.kind": "hf", "world.hf.name_or_path": "mistralai/Mistral-7B-Instruct-v0.2"}, "x", True),
        ({"world.kind": "hf", "world.hf.name_or_path": "/models/mistral-7b-instruct-v0.2"}, "x", True),
        ({"world.kind": "hf", "world.hf.name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct"}, "x", False),
        ({"world.kind": "tiny"}, "mistral7b-rspo-grid", False),
        # Without a world.kind param, the sweep name decides.
        ({}, "mistral7b-rspo-grid", True),
        ({}, "demo-sweep", False),
    ],
)
def test_paper_config_detection(sweep: SweepData, params: dict[str, str], name: str, expected: bool) -> None:
    assert is_paper_config(dataclasses.replace(sweep, name=name, parent_params=params)) is expected


def test_paper_matches_by_regularizers(sweep: SweepData) -> None:
    paper_sweep = _paper_sweep(sweep)
    assert variant_regularizers(PAPER_PARAMS) == {
        "sppo": (),
        "headline": (("is_forward_kl", 1.0), ("reverse_kl", 5.0)),
        "reverse_kl": (("reverse_kl", 1.0),),
    }
    matched = {match.paper.setting: match for match in match_paper_results(paper_sweep)}
    keys = {setting: match.trial.key if match.trial else None for setting, match in matched.items()}
    assert keys == {
        "SPPO, official checkpoint": "sppo-0",
        "SPPO, re-run in the RSPO paper": "sppo-0",
        "0.1 \u00d7 (IS-forward KL + 5 \u00d7 reverse KL), the paper's headline": "headline-0.1",
        "reverse KL, \u03bb = 0.5": "reverse_kl-0.5",
        "IS-forward KL, \u03bb = 0.1": None,
    }
    # The test trials stop after 2 iterations, so the final values stand in for iteration 3.
    headline = matched["0.1 \u00d7 (IS-forward KL + 5 \u00d7 reverse KL), the paper's headline"]
    assert headline.source == "final (after 2 iterations)"
    assert headline.ours("lc_win_rate") == pytest.approx(22.0)


def test_paper_matches_by_name_without_params(sweep: SweepData) -> None:
    unnamed = dataclasses.replace(_paper_sweep(sweep), parent_params={})
    matched = [match.trial.key for match in match_paper_results(unnamed) if match.trial is not None]
    # Without variant params only the experiment files' names match: sppo and reverse_kl, not "headline".
    assert matched == ["sppo-0", "sppo-0", "reverse_kl-0.5"]


def test_paper_table_only_for_paper_configs(report_files: dict[str, Path]) -> None:
    html = report_files["html"].read_text(encoding="utf-8")
    assert "Comparison with the RSPO paper" not in html
    assert not any(table.endswith("-paper") for table in parse_report(html).tables)


# MLflow UI links.


def test_mlflow_ui_for_workdir_store(tmp_path: Path) -> None:
    view = mlflow_ui_view(f"sqlite:///{tmp_path}/mlruns.db", "7", "abc123")
    assert view.commands == [
        f"rspo-bench ui --workdir {tmp_path}",
        f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlruns.db --host 127.0.0.1 --port 5000",
    ]
    url = urlsplit(view.runs_url)
    assert f"{url.scheme}://{url.netloc}" == "http://127.0.0.1:5000"
    path, _, query = url.fragment.partition("?")
    assert path == "/experiments/7/runs"
    assert parse_qs(query)["searchFilter"] == ["tags.`mlflow.parentRunId` = 'abc123'"]
    assert view.parent_url == "http://127.0.0.1:5000/#/experiments/7/runs/abc123"
    assert not view.password_hidden


def test_mlflow_ui_hides_password() -> None:
    view = mlflow_ui_view("postgresql://mlflow:secret@db.local:5432/mlflow", "3", "abc")
    assert view.commands[0] == "rspo-bench ui --tracking-uri 'postgresql://mlflow:***@db.local:5432/mlflow'"
    assert "secret" not in " ".join(view.commands)
    assert view.password_hidden
    assert view.runs_url.startswith("http://127.0.0.1:5000/#/experiments/3/runs?")


def test_mlflow_ui_for_tracking_server() -> None:
    view = mlflow_ui_view("http://mlflow.internal:8080/", "5", "abc")
    assert view.commands == []
    assert view.runs_url.startswith("http://mlflow.internal:8080/#/experiments/5/runs?searchFilter=")


# HTML content.


def test_html_lists_every_trial(report_files: dict[str, Path]) -> None:
    dom = parse_report(report_files["html"].read_text(encoding="utf-8"))
    assert sorted(dom.trial_rows) == sorted(TRIALS)


def test_html_lists_pruned_state(report_files: dict[str, Path]) -> None:
    dom = parse_report(report_files["html"].read_text(encoding="utf-8"))
    rows = dom.body_rows(f"sweep-0-{SWEEP}-leaderboard")
    assert rows["reverse_kl-1"][3] == "KILLED (pruned)"
    assert rows["chi2-1.0"][3] == "FAILED (failed)"
    assert rows["reverse_kl-0.5"][3] == "FINISHED"


def test_html_images_have_alt_and_id(report_files: dict[str, Path]) -> None:
    dom = parse_report(report_files["html"].read_text(encoding="utf-8"))
    ids = [image.get("id") for image in dom.images]
    anchor = f"sweep-0-{SWEEP}"
    assert ids == [
        f"{anchor}-scatter",
        f"{anchor}-coef-forward_kl",
        f"{anchor}-coef-reverse_kl",
        f"{anchor}-curves",
        f"{anchor}-diagnostics",
    ]
    assert all(image.get("alt") for image in dom.images)
    assert all((image.get("src") or "").startswith("data:image/png;base64,") for image in dom.images)


def test_html_is_self_contained(report_files: dict[str, Path]) -> None:
    html = report_files["html"].read_text(encoding="utf-8")
    sources = re.findall(r'src\s*=\s*"([^"]*)"', html)
    assert sources
    assert all(source.startswith("data:") for source in sources)
    # The only links leave the page by hand: in-page anchors and the local MLflow UI.
    for link in re.findall(r'href\s*=\s*"([^"]*)"', html):
        assert link.startswith(("#", "http://127.0.0.1:5000/#/experiments/")), link
    assert "https://" not in html
    assert "<link" not in html
    assert "@import" not in html
    assert "url(" not in html


def test_html_shows_provenance_and_proxy_warning(report_files: dict[str, Path], tracking_uri: str) -> None:
    html = report_files["html"].read_text(encoding="utf-8")
    assert PROXY_WARNING in html
    assert JUDGE in html
    assert "AlpacaEval 805 instructions; baseline gpt4_1106_preview" in html
    assert "rspo-bench 0.1.0 (git abc1234)" in html
    assert tracking_uri in html
    assert SWEEP in html
    assert "2025-01-02 03:04:05" in html


def test_html_shows_mlflow_ui_commands(report_files: dict[str, Path], sweep: SweepData) -> None:
    html = report_files["html"].read_text(encoding="utf-8")
    workdir = sweep.tracking_uri.removeprefix("sqlite:///").removesuffix("/mlruns.db")
    assert f"rspo-bench ui --workdir {workdir}" in html
    assert f"mlflow ui --backend-store-uri {sweep.tracking_uri} --host 127.0.0.1 --port 5000" in html
    links = parse_report(html).links
    assert f"http://127.0.0.1:5000/#/experiments/{sweep.experiment_id}/runs/{sweep.parent_run_id}" in links
    runs_link = next(link for link in links if "searchFilter=" in link)
    query = urlsplit(runs_link).fragment.partition("?")[2]
    assert parse_qs(query)["searchFilter"] == [f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}'"]


def test_html_escapes_tag_values(report_files: dict[str, Path]) -> None:
    html = report_files["html"].read_text(encoding="utf-8")
    assert "Offline &lt;b&gt;proxy&lt;/b&gt; judge &amp; reward model" in html
    assert "<b>proxy</b>" not in html


def test_html_omits_proxy_warning_for_real_judge(sweep: SweepData) -> None:
    trials = [
        dataclasses.replace(trial, tags={**trial.tags, "rspo.judge_is_proxy": "false"})
        for trial in sweep.trials[:1]
    ]
    html = render_html([dataclasses.replace(sweep, trials=trials)])
    assert PROXY_WARNING not in html


def test_write_report_rejects_unknown_format(sweep: SweepData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="docx"):
        write_report([sweep], tmp_path, formats=("html", "docx"))
    assert not (tmp_path / "report.html").exists()


def test_redact_uri_hides_password() -> None:
    redacted = redact_uri("postgresql://mlflow:secret@db.local:5432/mlflow")
    assert redacted == "postgresql://mlflow:***@db.local:5432/mlflow"
    assert redact_uri("sqlite:////tmp/mlruns.db") == "sqlite:////tmp/mlruns.db"
    assert redact_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_game_report_sections(game_report: Path) -> None:
    dom = parse_report(game_report.read_text(encoding="utf-8"))
    assert dom.sections[0].get("data-world") == "game"
    anchor = f"sweep-0-{GAME_SWEEP}"
    assert [image.get("id") for image in dom.images] == [
        f"{anchor}-convergence",
        f"{anchor}-coef-reverse_kl",
        f"{anchor}-game-metrics",
    ]
    assert f"{anchor}-leaderboard" not in dom.tables
    # Sorted by final duality gap, smallest first.
    rows = dom.tables[f"{anchor}-duality-gaps"][1:]
    assert [row[0] for row in rows] == ["reverse_kl-1", "chi_squared-0.5", "reverse_kl-0.1", "reverse_kl-0"]
    gaps = {row[0]: row[4] for row in rows}
    assert gaps == {
        "reverse_kl-1": "0",
        "chi_squared-0.5": "5e-09",
        "reverse_kl-0.1": "2e-06",
        "reverse_kl-0": "0.0003",
    }
    assert all(row[8] == str(GAME_ITERATIONS) for row in rows)


def test_game_final_gap_values_parse(game_report: Path) -> None:
    dom = parse_report(game_report.read_text(encoding="utf-8"))
    rows = dom.tables[f"sweep-0-{GAME_SWEEP}-duality-gaps"][1:]
    for row in rows:
        assert math.isclose(float(row[4]), GAME_TRIALS[row[0]][2], rel_tol=1e-2, abs_tol=1e-15)


# Rendering in real engines.


def test_html_renders_in_chromium(report_files: dict[str, Path], tmp_path: Path) -> None:
    dom = chromium_dom(report_files["html"], tmp_path / "chromium-profile")
    assert_images_loaded(dom, 5)
    assert sorted(dom.trial_rows) == sorted(TRIALS)


def test_game_report_renders_in_chromium(game_report: Path, tmp_path: Path) -> None:
    dom = chromium_dom(game_report, tmp_path / "chromium-profile")
    assert_images_loaded(dom, 3)
    assert sorted(dom.trial_rows) == sorted(GAME_TRIALS)


def test_pdf_pages_are_not_blank(report_files: dict[str, Path], tmp_path: Path) -> None:
    pdftoppm = require_binary("pdftoppm")
    pdf = report_files["pdf"]
    assert pdf.read_bytes().startswith(b"%PDF-")

    subprocess.run([pdftoppm, "-png", "-r", "40", str(pdf), str(tmp_path / "page")], check=True, timeout=60)
    pages = sorted(tmp_path.glob("page*.png"))
    assert pages, "pdftoppm wrote no page images"
    for page in pages:
        image = Image.open(page).convert("L")
        dark_pixels = sum(image.histogram()[:200])
        assert dark_pixels > 100, f"{page.name} is blank"


def test_pdf_table_fits_page(report_files: dict[str, Path]) -> None:
    pdftotext = require_binary("pdftotext")
    # pdftotext drops text outside the page box, so a clipped table loses its last columns.
    result = subprocess.run(
        [pdftotext, str(report_files["pdf"]), "-"], capture_output=True, text=True, check=True, timeout=60
    )
    text = result.stdout
    assert "KL to base" in text
    assert "2,600" in text
    for key in TRIALS:
        assert key in text, key
