"""Tests of MT-Bench scoring on real GPT-4 single-answer judgments and hand-made files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from rspo_bench.evals.mt_bench import JudgmentFileError, read_single_judgments, score_mt_bench

REAL_JUDGMENTS = "mt_bench/third_party/lmsys_h2o_branch/model_judgment/gpt-4_single.jsonl"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def judgment(question_id: int, model: str, turn: int, score: float, judge: str = "gpt-4") -> dict:
    prompt = "single-v1" if turn == 1 else "single-v1-multi-turn"
    return {
        "question_id": question_id,
        "model": model,
        "judge": [judge, prompt],
        "score": score,
        "turn": turn,
    }


def test_real_file_matches_pandas_groupby(data_dir: Path) -> None:
    path = data_dir / REAL_JUDGMENTS
    frame = pd.read_json(path, lines=True)
    scored = frame[frame["score"] != -1]
    expected_turn = scored.groupby(["model", "turn"])["score"].mean()
    expected_overall = scored.groupby("model")["score"].mean()
    expected_unparsed = (frame["score"] == -1).groupby(frame["model"]).sum()

    result = score_mt_bench(path)

    assert result["judge"] == "gpt-4"
    assert {entry["model"] for entry in result["models"]} == {"llama-2-chat-7b", "llama-2-chat-7b-0.1-0.1"}
    for entry in result["models"]:
        model = entry["model"]
        assert entry["turn_1"] == pytest.approx(expected_turn[(model, 1)], abs=1e-12)
        assert entry["turn_2"] == pytest.approx(expected_turn[(model, 2)], abs=1e-12)
        assert entry["overall"] == pytest.approx(expected_overall[model], abs=1e-12)
        assert entry["n_unparsed"] == expected_unparsed[model]
        assert entry["n_turn_1"] == 80
        assert entry["n_turn_2"] == 80


def test_real_file_sorted_by_overall(data_dir: Path) -> None:
    overall = [entry["overall"] for entry in score_mt_bench(data_dir / REAL_JUDGMENTS)["models"]]

    assert overall == sorted(overall, reverse=True)


def test_unparsed_rows_dropped_and_counted(tmp_path: Path) -> None:
    rows = [
        judgment(81, "m", 1, 8),
        judgment(82, "m", 1, 6),
        judgment(83, "m", 1, -1),
        judgment(81, "m", 2, 4),
        judgment(82, "m", 2, -1),
        judgment(81, "n", 1, 10),
        judgment(81, "n", 2, 9.5),
    ]
    result = score_mt_bench(write_jsonl(tmp_path / "judgments.jsonl", rows))
    entries = {entry["model"]: entry for entry in result["models"]}

    assert entries["m"]["turn_1"] == pytest.approx(7.0)
    assert entries["m"]["turn_2"] == pytest.approx(4.0)
    # Pooled over the 3 remaining rows, not the mean of the two turn scores (5.5).
    assert entries["m"]["overall"] == pytest.approx(18 / 3)
    assert entries["m"]["n_unparsed"] == 2
    assert entries["m"]["n_turn_1"] == 2
    assert entries["m"]["n_turn_2"] == 1
    assert entries["n"]["overall"] == pytest.approx(9.75)
    assert entries["n"]["n_unparsed"] == 0


def test_turn_without_scores_is_nan(tmp_path: Path) -> None:
    rows = [judgment(81, "m", 1, 7), judgment(81, "m", 2, -1)]
    entry = score_mt_bench(write_jsonl(tmp_path / "judgments.jsonl", rows))["models"][0]

    assert entry["turn_1"] == 7.0
    assert pd.isna(entry["turn_2"])
    assert entry["overall"] == 7.0


def test_duplicate_row_named(tmp_path: Path) -> None:
    rows = [judgment(81, "m", 1, 8), judgment(82, "m", 1, 6), judgment(81, "m", 1, 5)]
    path = write_jsonl(tmp_path / "judgments.jsonl", rows)

    with pytest.raises(JudgmentFileError, match="duplicate") as raised:
        score_mt_bench(path)
    message = str(raised.value)
    assert "judgments.jsonl record 3 repeats judgments.jsonl record 1" in message
    assert "question 81, model m, turn 1" in message


def test_string_and_integer_ids_are_duplicates(tmp_path: Path) -> None:
    rows = [judgment(81, "m", 1, 8), {**judgment(81, "m", 1, 6), "question_id": "81"}]

    with pytest.raises(JudgmentFileError, match="record 2 repeats"):
        read_single_judgments(write_jsonl(tmp_path / "judgments.jsonl", rows))


def test_mixed_judges_named(tmp_path: Path) -> None:
    rows = [judgment(81, "m", 1, 8), judgment(82, "m", 1, 6, judge="gpt-4-turbo"), judgment(83, "m", 1, 6)]
    path = write_jsonl(tmp_path / "judgments.jsonl", rows)

    with pytest.raises(JudgmentFileError, match="more than one judge model") as raised:
        score_mt_bench(path)
    message = str(raised.value)
    assert "'gpt-4' on 2 rows (first: judgments.jsonl record 1)" in message
    assert "'gpt-4-turbo' on 1 rows (first: judgments.jsonl record 2)" in message


def test_invalid_fields_named(tmp_path: Path) -> None:
    rows = [
        judgment(81, "m", 3, 8),
        {**judgment(82, "m", 1, 6), "judge": "gpt-4"},
        {**judgment(83, "m", 1, 6), "score": "7"},
        {key: value for key, value in judgment(84, "m", 1, 6).items() if key != "model"},
    ]
    path = write_jsonl(tmp_path / "judgments.jsonl", rows)

    with pytest.raises(JudgmentFileError) as raised:
        score_mt_bench(path)
    message = str(raised.value)
    assert "record 1: turn must be 1 or 2, got 3" in message
    assert "record 2: judge must be [judge_model, prompt_name]" in message
    assert "record 3: score must be a number" in message
    assert "record 4: missing field 'model'" in message


def test_empty_file_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")

    with pytest.raises(JudgmentFileError, match="no judgments found"):
        score_mt_bench(path)
