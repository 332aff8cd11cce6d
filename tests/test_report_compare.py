"""Tests of reports that compare sweeps: `rspo-bench report SWEEP_A SWEEP_B` and the comparison table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param
from typer.testing import CliRunner

from rspo_bench.cli import app
from rspo_bench.reporting.collect import SweepData, TrialData
from rspo_bench.reporting.compare import compare_sweeps
from tests.test_report import PAPER_PARAMS, assert_images_loaded, chromium_dom, new_store, parse_report

SWEEP_A = "repro-a"
SWEEP_B = "repro-b"
START_MS = 1_700_000_000_000

# Trial key -> (variant, coef, MLflow status, rspo.state, (LC win rate %, win rate %, length chars) or None).
TRIALS_A = {
    "base": ("base", 0.0, "FINISHED", "complete", (17.0, 15.0, 1600.0)),
    "sppo-0": ("sppo", 0.0, "FINISHED", "complete", (29.0, 30.0, 2000.0)),
    "headline-0.1": ("headline", 0.1, "FINISHED", "complete", (35.0, 38.0, 2300.0)),
    "reverse_kl-0.5": ("reverse_kl", 0.5, "FINISHED", "complete", (34.0, 36.0, 2250.0)),
    "reverse_kl-1": ("reverse_kl", 1.0, "FINISHED", "complete", (33.0, 37.0, 2500.0)),
}
TRIALS_B = {
    "base": ("base", 0.0, "FINISHED", "complete", (17.0, 15.0, 1600.0)),
    "sppo-0": ("sppo", 0.0, "FINISHED", "complete", (27.5, 31.0, 1950.0)),
    "headline-0.1": ("headline", 0.1, "FINISHED", "complete", (36.25, 37.5, 2310.0)),
    "reverse_kl-0.5": ("reverse_kl", 0.5, "KILLED", "pruned", None),
    "reverse_kl-2": ("reverse_kl", 2.0, "FINISHED", "complete", (31.0, 36.0, 2700.0)),
}
# Sweep B runs in the tiny world, not world.kind hf on Mistral-7B-Instruct-v0.2, so it gets no paper table.
PARAMS_B = {"world.kind": "tiny", "selfplay.iterations": "1"}


def _log_sweep(client: mlflow.MlflowClient, sweep: str, trials: dict, params: dict[str, str]) -> None:
    experiment_id = client.create_experiment(sweep)
    parent_tags = {"rspo.role": "sweep", "rspo.sweep": sweep}
    parent = client.create_run(experiment_id, start_time=START_MS, tags=parent_tags)
    client.log_batch(parent.info.run_id, params=[Param(key, value) for key, value in params.items()])
    for key, (variant, coef, status, state, final) in trials.items():
        tags = {
            "mlflow.parentRunId": parent.info.run_id,
            "rspo.role": "trial",
            "rspo.sweep": sweep,
            "rspo.trial": key,
            "rspo.variant": variant,
            "rspo.coef": f"{coef:g}",
            "rspo.judge": "offline-proxy-judge-v1",
            "rspo.judge_is_proxy": "true",
            "rspo.world": params["world.kind"],
            "rspo.state": state,
        }
        run = client.create_run(experiment_id, start_time=START_MS, run_name=key, tags=tags)
        metrics = [] if variant == "base" else [Metric("selfplay/kl_to_base", 0.1 / (1 + coef), START_MS, 1)]
        if final is not None:
            lc_win_rate, win_rate, length = final
            values = {
                "lc_win_rate": lc_win_rate,
                "win_rate": win_rate,
                "avg_length": length,
                "n_instructions": 805,
            }
            metrics += [Metric(f"alpaca_eval2/{name}", value, START_MS, 1) for name, value in values.items()]
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id, status=status)
    client.set_terminated(parent.info.run_id, status="FINISHED")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compare") / "runs"
    client = mlflow.MlflowClient(new_store(root, tmp_path_factory))
    paper_params = {**PAPER_PARAMS, "selfplay.iterations": "1"}
    _log_sweep(client, SWEEP_A, TRIALS_A, paper_params)
    _log_sweep(client, SWEEP_B, TRIALS_B, PARAMS_B)
    return root


@pytest.fixture(scope="module")
def report_html(workdir: Path) -> Path:
    output_dir = workdir.parent / "report"
    result = CliRunner().invoke(
        app, ["report", SWEEP_A, SWEEP_B, "--workdir", str(workdir), "--output-dir", str(output_dir)]
    )
    assert result.exit_code == 0, result.output
    return output_dir / "report.html"


def _comparison_rows(html: Path) -> dict[str, list[str]]:
    return parse_report(html.read_text(encoding="utf-8")).body_rows("comparison-table")


def test_cli_report_writes_both_sweeps(report_html: Path) -> None:
    dom = parse_report(report_html.read_text(encoding="utf-8"))
    sweeps = [section.get("data-sweep") for section in dom.sections if section.get("data-sweep")]
    assert sweeps == [SWEEP_A, SWEEP_B]
    assert dom.sections[0].get("id") == "comparison"
    assert sorted(dom.body_rows(f"sweep-0-{SWEEP_A}-leaderboard")) == sorted(TRIALS_A)
    assert sorted(dom.body_rows(f"sweep-1-{SWEEP_B}-leaderboard")) == sorted(TRIALS_B)


def test_comparison_lists_union_of_keys(report_html: Path) -> None:
    rows = _comparison_rows(report_html)
    assert list(rows) == ["base", "headline-0.1", "reverse_kl-0.5", "reverse_kl-1", "reverse_kl-2", "sppo-0"]
    assert "4 of 6 trial keys ran in every sweep" in report_html.read_text(encoding="utf-8")


def test_comparison_values_and_differences(report_html: Path) -> None:
    rows = _comparison_rows(report_html)
    # Trial, then LC / WR / length of A, of B, and B minus A.
    assert rows["sppo-0"][1:] == ["29.0", "30.0", "2,000", "27.5", "31.0", "1,950", "-1.5", "+1.0", "-50"]
    headline = ["35.0", "38.0", "2,300", "36.2", "37.5", "2,310", "+1.2", "-0.5", "+10"]
    assert rows["headline-0.1"][1:] == headline
    assert rows["base"][7:] == ["0.0", "0.0", "0"]


def test_comparison_marks_missing_and_pruned(report_html: Path) -> None:
    rows = _comparison_rows(report_html)
    assert rows["reverse_kl-0.5"][4:] == ["pruned", "pruned", "pruned", "\u2014", "\u2014", "\u2014"]
    assert rows["reverse_kl-1"][4:7] == ["not run", "not run", "not run"]
    assert rows["reverse_kl-2"][1:4] == ["not run", "not run", "not run"]
    assert rows["reverse_kl-2"][4:7] == ["31.0", "36.0", "2,700"]


def test_comparison_colors_better_and_worse(report_html: Path) -> None:
    html = report_html.read_text(encoding="utf-8")
    row = html[html.index('data-compare-key="sppo-0"') :]
    row = row[: row.index("</tr>")]
    assert '<td class="num diff worse">-1.5</td>' in row
    assert '<td class="num diff better">+1.0</td>' in row
    # Length has no preferred direction.
    assert '<td class="num diff ">-50</td>' in row


def test_paper_table_only_in_paper_sweep(report_html: Path) -> None:
    dom = parse_report(report_html.read_text(encoding="utf-8"))
    assert f"sweep-0-{SWEEP_A}-paper" in dom.tables
    assert f"sweep-1-{SWEEP_B}-paper" not in dom.tables
    rows = dom.body_rows(f"sweep-0-{SWEEP_A}-paper")
    headline = rows["0.1 \u00d7 (IS-forward KL + 5 \u00d7 reverse KL), the paper's headline"]
    # Setting, paper LC / WR / length, trial (numbers from), ours, this sweep minus paper.
    assert headline[1:4] == ["35.44", "38.30", "2,286"]
    assert headline[4] == "headline-0.1 (final (after 1 iteration))"
    assert headline[5:8] == ["35.00", "38.00", "2,300"]
    assert headline[8:11] == ["-0.44", "-0.30", "+14"]
    assert rows["SPPO, official checkpoint"][1:4] == ["28.53", "31.02", "\u2014"]
    assert rows["SPPO, re-run in the RSPO paper"][1:4] == ["29.16", "\u2014", "\u2014"]
    assert rows["reverse KL, \u03bb = 0.5"][1:4] == ["\u2014", "36.82", "2,290"]
    assert rows["IS-forward KL, \u03bb = 0.1"][1:4] == ["\u2014", "30.77", "2,067"]
    assert rows["IS-forward KL, \u03bb = 0.1"][4] == "not in this sweep"


def test_report_warns_about_worlds(report_html: Path) -> None:
    dom_text = report_html.read_text(encoding="utf-8")
    assert "The sweeps run in different worlds (hf, tiny)" in dom_text


def test_compare_report_in_chromium(report_html: Path, tmp_path: Path) -> None:
    dom = chromium_dom(report_html, tmp_path / "chromium-profile")
    # Each sweep: scatter, the coefficient figure of reverse_kl, per-iteration curves.
    assert_images_loaded(dom, 6)
    assert sorted(dom.trial_rows) == sorted([*TRIALS_A, *TRIALS_B])
    assert len({image.get("id") for image in dom.images}) == 6


def _game_trial(key: str, gap: float | None) -> TrialData:
    final = {} if gap is None else {"game/final_duality_gap": gap}
    return TrialData(
        key=key, run_id=key, variant="reverse_kl", coef=0.1, status="FINISHED", final_metrics=final
    )


def test_compare_game_sweeps_uses_duality_gap() -> None:
    game = {"world.kind": "game"}
    first = SweepData("game-a", "p1", "sqlite://", [_game_trial("reverse_kl-0.1", 2e-6)], parent_params=game)
    second = SweepData("game-b", "p2", "sqlite://", [_game_trial("reverse_kl-0.1", 5e-7)], parent_params=game)
    view = compare_sweeps([first, second])
    assert view.metric_headers[0] == "Final gap"
    row = view.rows[0]
    assert row.values[0][0].text == "2e-06"
    assert row.values[1][0].text == "5e-07"
    # A smaller gap is better.
    assert row.differences[0][0].text == "-1.5e-06"
    assert row.differences[0][0].tone == "better"


def test_compare_needs_two_sweeps() -> None:
    sweep = SweepData("only", "p", "sqlite://", [])
    with pytest.raises(ValueError, match="at least two sweeps, got 1"):
        compare_sweeps([sweep])
    with pytest.raises(ValueError, match="got 0"):
        compare_sweeps([])
    assert dataclasses.replace(sweep, name="copy").name == "copy"
