"""Tests of the sweep report: MLflow collection, figures, HTML in Chromium and the PDF."""

from __future__ import annotations

import dataclasses
import io
import re
import shutil
import subprocess
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param
from PIL import Image

from rspo_bench.reporting.collect import SweepData, SweepNotFoundError, collect_sweep
from rspo_bench.reporting.figures import iteration_curves, length_win_rate_scatter, pareto_front
from rspo_bench.reporting.html import PROXY_WARNING, redact_uri, render_html, sweep_warnings, write_report

SWEEP = "demo-sweep"
OTHER_SWEEP = "other-sweep"
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
}


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


def _log_store(root: Path) -> str:
    tracking_uri = f"sqlite:///{root}/mlruns.db"
    client = mlflow.MlflowClient(tracking_uri)

    experiment_id = client.create_experiment(SWEEP, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(
        experiment_id, start_time=START_MS, run_name=SWEEP, tags={"rspo.role": "sweep", "rspo.sweep": SWEEP}
    )
    parent_id = parent.info.run_id
    for key, (variant, coef, status, final, iterations, with_eval) in TRIALS.items():
        run = client.create_run(
            experiment_id, start_time=START_MS, run_name=key, tags=_trial_tags(key, variant, coef, parent_id)
        )
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
    return tracking_uri


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _log_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def sweep(tracking_uri: str) -> SweepData:
    return collect_sweep(tracking_uri, SWEEP)


@pytest.fixture(scope="module")
def report_files(sweep: SweepData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    output_dir = tmp_path_factory.mktemp("report")
    generated_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    return write_report([sweep], output_dir, formats=("html", "pdf"), generated_at=generated_at)


class _ReportDom(HTMLParser):
    """Collect the attributes of every <img> and every trial row of a report."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.trial_rows: list[str] = []
        self.body: dict[str, str | None] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
        elif tag == "tr" and "data-trial" in attributes:
            self.trial_rows.append(attributes["data-trial"] or "")
        elif tag == "body":
            self.body = attributes


def _parse(html: str) -> _ReportDom:
    dom = _ReportDom()
    dom.feed(html)
    return dom


def _require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install chromium poppler-utils)")
    return path


# Collection from MLflow.


def test_collect_returns_every_trial(sweep: SweepData) -> None:
    assert sweep.name == SWEEP
    assert sweep.parent_run_id
    assert sorted(trial.key for trial in sweep.trials) == sorted(TRIALS)
    assert sweep.trials[0].key == "base"
    assert sweep.trials[0].is_base


def test_collect_reads_tags_status_params(sweep: SweepData) -> None:
    trials = {trial.key: trial for trial in sweep.trials}
    for key, (variant, coef, status, _, _, _) in TRIALS.items():
        trial = trials[key]
        assert trial.variant == variant
        assert trial.coef == float(coef)
        assert trial.status == status
        assert trial.params["loss.regularizers.0.name"] == variant
        assert trial.judge == JUDGE
        assert trial.judge_is_proxy


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
    first = length_win_rate_scatter(sweep.trials)
    second = length_win_rate_scatter(sweep.trials)
    assert first.startswith(b"\x89PNG\r\n\x1a\n")
    assert first == second
    assert iteration_curves(sweep.trials) == iteration_curves(sweep.trials)


def test_curves_add_eval_panels_when_logged(sweep: SweepData) -> None:
    eval_metric = "eval_iter/alpaca_eval2/win_rate"
    without_eval = [trial for trial in sweep.trials if eval_metric not in trial.histories]
    tall = Image.open(io.BytesIO(iteration_curves(sweep.trials)))
    short = Image.open(io.BytesIO(iteration_curves(without_eval)))
    assert tall.height > short.height


def test_figures_accept_trials_without_metrics(sweep: SweepData) -> None:
    failed = [trial for trial in sweep.trials if trial.status == "FAILED"]
    assert length_win_rate_scatter(failed).startswith(b"\x89PNG")
    assert iteration_curves([]).startswith(b"\x89PNG")


# Warnings and HTML content.


def test_warnings_flag_lc_gap_and_failure(sweep: SweepData) -> None:
    warnings = sweep_warnings(sweep)
    assert any("forward_kl-0.1" in warning and "LC win rate" in warning for warning in warnings)
    assert any("chi2-1.0 failed" in warning for warning in warnings)
    assert not any("reverse_kl-0.5" in warning for warning in warnings)
    assert not any("different judges" in warning for warning in warnings)


def test_warnings_flag_mixed_judges(sweep: SweepData) -> None:
    other = sweep.trials[1]
    tags = {**other.tags, "rspo.judge": "alpaca_eval_gpt4_turbo_fn", "rspo.judge_is_proxy": "false"}
    mixed = dataclasses.replace(sweep, trials=[sweep.trials[0], dataclasses.replace(other, tags=tags)])
    warnings = sweep_warnings(mixed)
    judge_warnings = [warning for warning in warnings if "different judges" in warning]
    assert len(judge_warnings) == 1
    assert "alpaca_eval_gpt4_turbo_fn" in judge_warnings[0]


def test_warnings_flag_unfinished_trial(sweep: SweepData) -> None:
    running = dataclasses.replace(sweep.trials[1], status="RUNNING")
    warnings = sweep_warnings(dataclasses.replace(sweep, trials=[running]))
    assert any(f"{running.key} did not finish (status RUNNING)" in warning for warning in warnings)


def test_html_lists_every_trial(report_files: dict[str, Path]) -> None:
    dom = _parse(report_files["html"].read_text(encoding="utf-8"))
    assert sorted(dom.trial_rows) == sorted(TRIALS)


def test_html_images_have_alt_and_id(report_files: dict[str, Path]) -> None:
    dom = _parse(report_files["html"].read_text(encoding="utf-8"))
    assert len(dom.images) == 2
    ids = [image.get("id") for image in dom.images]
    assert all(ids)
    assert len(set(ids)) == len(ids)
    assert all(image.get("alt") for image in dom.images)
    assert all((image.get("src") or "").startswith("data:image/png;base64,") for image in dom.images)


def test_html_is_self_contained(report_files: dict[str, Path]) -> None:
    html = report_files["html"].read_text(encoding="utf-8")
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html)
    assert all(reference.startswith("data:") for reference in references)
    assert "http://" not in html
    assert "https://" not in html
    assert "<link" not in html
    assert "@import" not in html


def test_html_shows_provenance_and_proxy_warning(report_files: dict[str, Path], tracking_uri: str) -> None:
    html = report_files["html"].read_text(encoding="utf-8")
    assert PROXY_WARNING in html
    assert JUDGE in html
    assert "AlpacaEval 805 instructions; baseline gpt4_1106_preview" in html
    assert "rspo-bench 0.1.0 (git abc1234)" in html
    assert tracking_uri in html
    assert SWEEP in html
    assert "2025-01-02 03:04:05" in html


def test_html_escapes_tag_values(report_files: dict[str, Path]) -> None:
    html = report_files["html"].read_text(encoding="utf-8")
    assert "Offline &lt;b&gt;proxy&lt;/b&gt; judge &amp; reward model" in html
    assert "<b>proxy</b>" not in html


def test_html_omits_proxy_warning_for_real_judge(sweep: SweepData) -> None:
    trials = [
        dataclasses.replace(trial, tags={**trial.tags, "rspo.judge_is_proxy": "false"})
        for trial in sweep.trials
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


# Rendering in real engines.


def test_html_renders_in_chromium(report_files: dict[str, Path], tmp_path: Path) -> None:
    chromium = _require_binary("chromium")
    command = [
        chromium,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=5000",
        "--dump-dom",
        report_files["html"].as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]

    dom = _parse(result.stdout)
    assert dom.body.get("data-images-checked") == "2", result.stderr[-2000:]
    for image in dom.images:
        assert image.get("data-loaded") == "true", image.get("id")
        assert int(image.get("data-natural-width") or 0) > 0, image.get("id")
    assert sorted(dom.trial_rows) == sorted(TRIALS)


def test_pdf_pages_are_not_blank(report_files: dict[str, Path], tmp_path: Path) -> None:
    pdftoppm = _require_binary("pdftoppm")
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
    pdftotext = _require_binary("pdftotext")
    # pdftotext drops text outside the page box, so a clipped table loses its last columns.
    result = subprocess.run(
        [pdftotext, str(report_files["pdf"]), "-"], capture_output=True, text=True, check=True, timeout=60
    )
    text = result.stdout
    assert "KL to base" in text
    assert "2,600" in text
    for key in TRIALS:
        assert key in text, key


def test_html_report_two_sweeps(sweep: SweepData, tracking_uri: str) -> None:
    other = collect_sweep(tracking_uri, OTHER_SWEEP)
    dom = _parse(render_html([sweep, other]))
    assert sorted(dom.trial_rows) == sorted([*TRIALS, "reverse_kl-9"])
    assert len(dom.images) == 4
    assert len({image.get("id") for image in dom.images}) == 4
