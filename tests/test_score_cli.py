"""Tests of ``rspo-bench score`` on published AlpacaEval and MT-Bench files and hand-made Arena-Hard files."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from rspo_bench.cli import app
from rspo_bench.data import read_json
from rspo_bench.evals.score_cli import EXIT_INVALID_INPUT, score_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import alpaca_eval
    import alpaca_eval.constants
from huggingface_hub import constants as hub_constants

runner = CliRunner()
LEADERBOARD = (
    Path(alpaca_eval.__file__).parent
    / "leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
)
MODELS = ("alpaca-7b", "OpenHermes-2.5-Mistral-7B", "FuseChat-Llama-3.1-8B-Instruct")
MT_BENCH_JUDGMENTS = "mt_bench/third_party/lmsys_h2o_branch/model_judgment/gpt-4_single.jsonl"


def annotation_file(data_dir: Path, model: str) -> Path:
    return data_dir / f"alpaca_eval/models/{model}/weighted_alpaca_eval_gpt4_turbo/annotations.json.gz"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Private rspo-bench cache. The user's Hugging Face caches are hidden to force a df_gamed.csv rebuild."""
    empty_hub = tmp_path_factory.mktemp("empty_hf_hub")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_constants, "HF_HUB_CACHE", str(empty_hub))
        patch.setattr(alpaca_eval.constants, "DEFAULT_CACHE_DIR", None)
        yield tmp_path_factory.mktemp("rspo_bench_cache")


def invoke(*arguments: object) -> object:
    return runner.invoke(score_app, [str(argument) for argument in arguments])


def test_score_group_registered() -> None:
    command = typer.main.get_command(app)
    score = command.commands["score"]  # type: ignore[attr-defined]

    assert sorted(score.commands) == ["alpaca-eval2", "arena-hard", "mt-bench"]


# AlpacaEval 2.0


@pytest.mark.parametrize("model", MODELS)
def test_alpaca_eval2_json_matches_leaderboard(model: str, data_dir: Path, cache_dir: Path) -> None:
    published = pd.read_csv(LEADERBOARD, index_col=0).loc[model]

    path = annotation_file(data_dir, model)

    result = invoke("alpaca-eval2", path, "--data-dir", data_dir, "--cache-dir", cache_dir, "--json")

    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["generator"] == model
    assert metrics["annotator"] == "weighted_alpaca_eval_gpt4_turbo"
    assert metrics["baseline"] == "gpt4_1106_preview"
    assert metrics["win_rate"] == pytest.approx(published["win_rate"], abs=1e-9)
    assert metrics["standard_error"] == pytest.approx(published["standard_error"], abs=1e-9)
    assert metrics["n_wins"] == published["n_wins"]
    assert metrics["n_wins_base"] == published["n_wins_base"]
    assert metrics["n_draws"] == published["n_draws"]
    assert int(metrics["avg_length"]) == published["avg_length"]
    assert metrics["lc_win_rate"] == pytest.approx(published["length_controlled_winrate"], abs=0.1)
    assert metrics["lc_gamed_source"] == "reconstructed"


def test_alpaca_eval2_table(data_dir: Path, cache_dir: Path) -> None:
    path = annotation_file(data_dir, "alpaca-7b")

    result = invoke("alpaca-eval2", path, "--data-dir", data_dir, "--cache-dir", cache_dir)

    assert result.exit_code == 0, result.output
    assert "LC win rate (%)" in result.stdout
    assert "2.59 ± 0.49" in result.stdout
    assert "reconstructed" in result.stdout


def test_alpaca_eval2_help_states_lc_error() -> None:
    result = runner.invoke(score_app, ["alpaca-eval2", "--help"], terminal_width=200)

    assert result.exit_code == 0
    for value in ("+0.059", "+0.045", "+0.022"):
        assert value in result.stdout


def test_alpaca_eval2_removed_row_named(data_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    records = read_json(annotation_file(data_dir, "OpenHermes-2.5-Mistral-7B"))
    del records[5]
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(records), encoding="utf-8")

    result = invoke("alpaca-eval2", path, "--data-dir", data_dir, "--cache-dir", cache_dir)

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "missing canonical indices: 5" in result.stderr
    assert "annotations.json" in result.stderr


def test_alpaca_eval2_mixed_annotators_named(data_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    records = read_json(annotation_file(data_dir, "alpaca-7b"))
    for record in records[100:110]:
        record["annotator"] = "alpaca_eval_gpt4"
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(records), encoding="utf-8")

    result = invoke("alpaca-eval2", path, "--data-dir", data_dir, "--cache-dir", cache_dir)

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "'weighted_alpaca_eval_gpt4_turbo' (795 rows, first row 0)" in result.stderr
    assert "'alpaca_eval_gpt4' (10 rows, first row 100)" in result.stderr


def test_alpaca_eval2_mixed_baselines_named(data_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    records = read_json(annotation_file(data_dir, "alpaca-7b"))
    records[3]["generator_1"] = "gpt4"
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(records), encoding="utf-8")

    result = invoke("alpaca-eval2", path, "--data-dir", data_dir, "--cache-dir", cache_dir)

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "baseline (generator_1)" in result.stderr
    assert "'gpt4' (1 rows, first row 3)" in result.stderr


def test_alpaca_eval2_not_a_list(tmp_path: Path) -> None:
    path = tmp_path / "annotations.json"
    path.write_text('{"preference": 1}', encoding="utf-8")

    result = invoke("alpaca-eval2", path)

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "expected a JSON list of annotation objects" in result.stderr


# Arena-Hard


def arena_row(question_id: str, model: str, game_1: str, game_2: str) -> dict:
    games = [{"user_prompt": "p", "judgment": "j", "score": verdict} for verdict in (game_1, game_2)]
    return {"question_id": question_id, "model": model, "judge": "gpt-4-1106-preview", "games": games}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_arena_hard_json(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [arena_row("q1", "m", "A>B", "A>>B")])

    result = invoke("arena-hard", path, "--baseline", "gpt-4-0314", "--bootstrap", 20, "--seed", 1, "--json")

    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["version"] == "v0.1"
    assert scores["rounds"] == 20
    assert scores["models"][0]["model"] == "m"
    assert scores["models"][0]["score"] == pytest.approx(75.0, abs=1e-5)


def test_arena_hard_table(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [arena_row("q1", "m", "A>B", "A>>B")])

    result = invoke("arena-hard", path, "--bootstrap", 5)

    assert result.exit_code == 0, result.output
    assert "75.0" in result.stdout
    assert "1191" in result.stdout


def test_arena_hard_duplicate_named(tmp_path: Path) -> None:
    rows = [arena_row("q1", "m", "A>B", "B>A"), arena_row("q1", "m", "A>B", "B>A")]
    path = write_jsonl(tmp_path / "m.jsonl", rows)

    result = invoke("arena-hard", path, "--bootstrap", 5)

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "m.jsonl record 2 repeats m.jsonl record 1 (question q1, model m)" in result.stderr


def test_arena_hard_verdict_brackets_printed(tmp_path: Path) -> None:
    row = {"question_id": "q1", "model": "m", "judge": "j", "games": "[[A>B]]"}
    path = write_jsonl(tmp_path / "m.jsonl", [row])

    result = invoke("arena-hard", path)

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "games must be a list of 2 games" in result.stderr


def test_arena_hard_unknown_version(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [arena_row("q1", "m", "A>B", "B>A")])

    result = invoke("arena-hard", path, "--version", "v3")

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "unknown version 'v3'" in result.stderr


# MT-Bench


def test_mt_bench_json(data_dir: Path) -> None:
    result = invoke("mt-bench", data_dir / MT_BENCH_JUDGMENTS, "--json")

    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["judge"] == "gpt-4"
    assert len(scores["models"]) == 2
    frame = pd.read_json(data_dir / MT_BENCH_JUDGMENTS, lines=True)
    expected = frame[frame["score"] != -1].groupby("model")["score"].mean()
    for entry in scores["models"]:
        assert entry["overall"] == pytest.approx(expected[entry["model"]], abs=1e-12)


def test_mt_bench_table(data_dir: Path) -> None:
    result = runner.invoke(score_app, ["mt-bench", str(data_dir / MT_BENCH_JUDGMENTS)], terminal_width=200)

    assert result.exit_code == 0, result.output
    assert "llama-2-chat-7b" in result.stdout
    assert "overall" in result.stdout


def test_mt_bench_mixed_judges_exit_code(tmp_path: Path) -> None:
    rows = [
        {"question_id": 81, "model": "m", "judge": ["gpt-4", "single-v1"], "score": 8, "turn": 1},
        {"question_id": 82, "model": "m", "judge": ["claude", "single-v1"], "score": 6, "turn": 1},
    ]
    path = write_jsonl(tmp_path / "judgments.jsonl", rows)

    result = invoke("mt-bench", path)

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "'claude' on 1 rows (first: judgments.jsonl record 2)" in result.stderr


def test_missing_file_exit_code(tmp_path: Path) -> None:
    result = invoke("mt-bench", tmp_path / "absent.jsonl")

    assert result.exit_code == EXIT_INVALID_INPUT
    assert "absent.jsonl" in result.output
