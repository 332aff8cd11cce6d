"""Tests of Arena-Hard-Auto scoring on hand-made judgment files with known solutions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rspo_bench.data import read_jsonl
from rspo_bench.evals.arena_hard import (
    DECISIVE_WEIGHT,
    ELO_INIT,
    STYLE_FEATURES,
    V01,
    V20,
    ArenaHardInputError,
    fit_bradley_terry,
    judgment_battles,
    predicted_win_rate,
    read_answers,
    read_judgments,
    score_arena_hard,
    style_difference_features,
)

BASELINE_V01 = "gpt-4-0314"
BASELINE_V20 = "o3-mini-2025-01-31"
ROUNDS = 20


def v01_row(
    question_id: str, model: str, game_1: str | None, game_2: str | None, judge: str = "gpt-4-1106-preview"
) -> dict:
    """A 2024-schema judgment: game 1 shows the baseline as A, game 2 the model as A."""
    games = [{"user_prompt": "prompt", "judgment": "text", "score": verdict} for verdict in (game_1, game_2)]
    return {"question_id": question_id, "model": model, "judge": judge, "games": games}


def v20_row(
    uid: str,
    model: str,
    game_1: str | None,
    game_2: str | None,
    *,
    baseline: str = BASELINE_V20,
    category: str = "hard_prompt",
    judge: str = "gpt-4.1",
) -> dict:
    games = [{"score": verdict, "judgment": "text", "prompt": "prompt"} for verdict in (game_1, game_2)]
    return {
        "uid": uid,
        "category": category,
        "judge": judge,
        "model": model,
        "baseline": baseline,
        "games": games,
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def model_entry(result: dict, model: str) -> dict:
    return next(entry for entry in result["models"] if entry["model"] == model)


def read_rows(folder: Path, rows: list[dict]) -> list:
    return read_judgments(write_jsonl(folder / "judgments.jsonl", rows))


# Battles


def test_decisive_verdict_counts_three_times(tmp_path: Path) -> None:
    judgments = read_rows(tmp_path, [v01_row("q1", "m", "B>>A", "A>B")])

    battles = judgment_battles(judgments, version=V01)

    assert battles.frame["outcome"].tolist() == [1.0] * DECISIVE_WEIGHT + [1.0]
    assert DECISIVE_WEIGHT == 3


def test_position_swap_between_games(tmp_path: Path) -> None:
    # "B>A" is a model win in game 1 (model is B) and a baseline win in game 2 (model is A).
    judgments = read_rows(tmp_path, [v01_row("q1", "m", "B>A", "B>A"), v01_row("q2", "m", "A>B", "A>B")])

    outcomes = judgment_battles(judgments, version=V01).frame["outcome"].tolist()

    assert outcomes == [1.0, 0.0, 0.0, 1.0]


def test_ties_give_half_a_win(tmp_path: Path) -> None:
    judgments = read_rows(tmp_path, [v01_row("q1", "m", "A=B", "A=B")])

    assert judgment_battles(judgments, version=V01).frame["outcome"].tolist() == [0.5, 0.5]


def test_v20_reads_mirrored_verdicts(tmp_path: Path) -> None:
    judgments = read_rows(tmp_path, [v20_row("u1", "m", "A<<B", "A<B"), v20_row("u2", "m", "B=A", "B<A")])

    outcomes = judgment_battles(judgments, version=V20).frame["outcome"].tolist()

    assert outcomes == [1.0] * DECISIVE_WEIGHT + [0.0, 0.5, 1.0]


def test_unparsed_game_dropping_by_version(tmp_path: Path) -> None:
    judgments = read_rows(tmp_path, 
        [
            v01_row("q1", "m", None, "A>B"),
            v01_row("q2", "m", "B>A", "A>>>B"),
            v01_row("q3", "m", "B>A", "A>B"),
        ]
    )

    v01 = judgment_battles(judgments, version=V01)
    v20 = judgment_battles(judgments, version=V20)

    assert v01.frame["outcome"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert v01.unparsed_games["m"] == 2
    assert v01.dropped_judgments["m"] == 0
    assert v20.frame["outcome"].tolist() == [1.0, 1.0]
    assert v20.unparsed_games["m"] == 2
    assert v20.dropped_judgments["m"] == 2


# Bradley-Terry


def test_bradley_terry_three_of_four_closed_form() -> None:
    battles = pd.DataFrame(
        {"model_a": ["m"] * 4, "model_b": [BASELINE_V01] * 4, "outcome": [1.0, 1.0, 1.0, 0.0]}
    )

    ratings = fit_bradley_terry(battles, baseline=BASELINE_V01)

    assert ratings[BASELINE_V01] == ELO_INIT
    assert ratings["m"] - ratings[BASELINE_V01] == pytest.approx(400 * math.log10(3), abs=1e-4)
    assert predicted_win_rate(ratings["m"], ratings[BASELINE_V01]) == pytest.approx(0.75, abs=1e-7)


def test_bradley_terry_ties_count_half() -> None:
    # One win and one tie: 1.5 of 2 battles won, so the win probability is 3/4.
    battles = pd.DataFrame({"model_a": ["m", "m"], "model_b": [BASELINE_V01] * 2, "outcome": [1.0, 0.5]})

    ratings = fit_bradley_terry(battles, baseline=BASELINE_V01)

    assert ratings["m"] - ELO_INIT == pytest.approx(400 * math.log10(3), abs=1e-4)


def test_bradley_terry_orientation_does_not_matter() -> None:
    battles = pd.DataFrame(
        {
            "model_a": [BASELINE_V01, BASELINE_V01, "m", "m"],
            "model_b": ["m", "m", BASELINE_V01, BASELINE_V01],
            "outcome": [0.0, 0.0, 1.0, 0.0],
        }
    )

    ratings = fit_bradley_terry(battles, baseline=BASELINE_V01)

    assert ratings["m"] - ELO_INIT == pytest.approx(400 * math.log10(3), abs=1e-4)


def test_bradley_terry_three_models_closed_form() -> None:
    # Against the baseline, m1 wins 3 of 4 and m2 wins 1 of 4, and there are no m1-m2 battles,
    # so each rating follows from its own win rate: +400 log10(3) and -400 log10(3).
    rows = [("m1", 1.0)] * 3 + [("m1", 0.0)] + [("m2", 1.0)] + [("m2", 0.0)] * 3
    battles = pd.DataFrame(
        {
            "model_a": [model for model, _ in rows],
            "model_b": [BASELINE_V01] * len(rows),
            "outcome": [outcome for _, outcome in rows],
        }
    )

    ratings = fit_bradley_terry(battles, baseline=BASELINE_V01)

    assert ratings["m1"] - ELO_INIT == pytest.approx(400 * math.log10(3), abs=1e-3)
    assert ratings["m2"] - ELO_INIT == pytest.approx(-400 * math.log10(3), abs=1e-3)


def test_bradley_terry_undefeated_model_infinite() -> None:
    battles = pd.DataFrame(
        {"model_a": ["m", "m", "n", "n"], "model_b": [BASELINE_V01] * 4, "outcome": [1.0, 1.0, 1.0, 0.0]}
    )

    ratings = fit_bradley_terry(battles, baseline=BASELINE_V01)

    assert ratings["m"] == math.inf
    assert ratings["n"] - ELO_INIT == pytest.approx(0.0, abs=1e-4)
    assert predicted_win_rate(ratings["m"], ELO_INIT) == 1.0


# v0.1 scores


def test_v01_score_closed_form(tmp_path: Path) -> None:
    # Game 1: baseline wins (1 battle). Game 2: model wins decisively (3 battles). 3 of 4 battles won.
    path = write_jsonl(tmp_path / "m.jsonl", [v01_row("q1", "m", "A>B", "A>>B")])

    result = score_arena_hard(path, rounds=ROUNDS)
    entry = result["models"][0]

    assert result["version"] == V01
    assert result["schema"] == "2024"
    assert result["baseline"] == BASELINE_V01
    assert result["judge"] == "gpt-4-1106-preview"
    assert entry["score"] == pytest.approx(75.0, abs=1e-5)
    assert entry["elo"] - ELO_INIT == pytest.approx(400 * math.log10(3), abs=1e-4)
    assert entry["n_battles"] == 4
    assert entry["n_judgments"] == 1


def many_v01_rows(model: str, count: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    verdicts = ["A>>B", "A>B", "A=B", "B>A", "B>>A"]
    rows = []
    for index in range(count):
        game_1, game_2 = rng.choice(verdicts, size=2, p=[0.1, 0.2, 0.2, 0.3, 0.2])
        # Mirror game 2 so that this model tends to win from both positions.
        mirrored = {"A>>B": "B>>A", "A>B": "B>A", "A=B": "A=B", "B>A": "A>B", "B>>A": "A>>B"}[game_2]
        rows.append(v01_row(f"q{index}", model, str(game_1), mirrored))
    return rows


def test_v01_bootstrap_ci_contains_score_and_is_seeded(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", many_v01_rows("m", 60, seed=1))

    first = score_arena_hard(path, rounds=ROUNDS, seed=7)["models"][0]
    again = score_arena_hard(path, rounds=ROUNDS, seed=7)["models"][0]
    other = score_arena_hard(path, rounds=ROUNDS, seed=8)["models"][0]

    assert first["ci_low"] < first["score"] < first["ci_high"]
    assert (again["ci_low"], again["ci_high"]) == (first["ci_low"], first["ci_high"])
    assert (other["ci_low"], other["ci_high"]) != (first["ci_low"], first["ci_high"])
    assert other["score"] == first["score"]


def test_v01_score_equals_mean_outcome(tmp_path: Path) -> None:
    # With every battle against the one baseline, the Bradley-Terry win rate is the mean outcome.
    path = write_jsonl(tmp_path / "m.jsonl", many_v01_rows("m", 60, seed=2))
    battles = judgment_battles(read_judgments(path), version=V01)

    entry = score_arena_hard(path, rounds=ROUNDS)["models"][0]

    assert entry["score"] == pytest.approx(100 * battles.frame["outcome"].mean(), abs=1e-4)


def test_folder_of_judgment_files(tmp_path: Path) -> None:
    folder = tmp_path / "judgments"
    folder.mkdir()
    write_jsonl(folder / "m.jsonl", [v01_row("q1", "m", "A>B", "A>>B")])
    write_jsonl(folder / "n.jsonl", [v01_row("q1", "n", "B>A", "B>A")])
    (folder / "notes.txt").write_text("not a judgment file", encoding="utf-8")

    result = score_arena_hard(folder, rounds=ROUNDS)

    assert [entry["model"] for entry in result["models"]] == ["m", "n"]
    assert model_entry(result, "m")["score"] == pytest.approx(75.0, abs=1e-5)
    assert model_entry(result, "n")["score"] == pytest.approx(50.0, abs=1e-5)


def test_average_tokens_from_answers(tmp_path: Path) -> None:
    rows = [v01_row("q1", "m", "A>B", "B>A"), v01_row("q2", "m", "B>A", "B>A")]
    judgments = write_jsonl(tmp_path / "m.jsonl", rows)
    answers = [
        {"question_id": question_id, "model_id": "m", "choices": [{"turns": [{"token_len": length}]}]}
        for question_id, length in (("q1", 100), ("q2", 300))
    ]
    answer_file = write_jsonl(tmp_path / "answers.jsonl", answers)

    entry = score_arena_hard(judgments, rounds=ROUNDS, answer_paths=[answer_file])["models"][0]

    assert entry["avg_tokens"] == 200.0


def test_real_baseline_answer_lengths(data_dir: Path) -> None:
    answers = read_answers([data_dir / "arena_hard/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl.gz"])
    records = read_jsonl(data_dir / "arena_hard/arena-hard-v0.1/model_answer/gpt-4-0314.jsonl.gz")
    lengths = [sum(turn["token_len"] for turn in record["choices"][0]["turns"]) for record in records]
    expected = np.mean(lengths)

    assert len(answers[BASELINE_V01]) == 500
    assert np.mean([info.token_len for info in answers[BASELINE_V01].values()]) == pytest.approx(expected)


# v2.0 scores


def test_v20_schema_scored_by_bootstrap_mean(tmp_path: Path) -> None:
    rows = [
        v20_row("u1", "m", "B>A", "A>B"),
        v20_row("u2", "m", "A>B", "B>A"),
        v20_row("u3", "m", "B>>A", "A=B"),
        v20_row("u4", "m", "A=B", "B<A"),
    ]
    path = write_jsonl(tmp_path / "m.jsonl", rows)
    # Outcomes: 1, 1 | 0, 0 | 1, 1, 1, 0.5 | 0.5, 1 -> 7 of 10.

    result = score_arena_hard(path, rounds=200, seed=3)
    entry = result["models"][0]

    assert result["version"] == V20
    assert result["schema"] == "2025"
    assert result["baseline"] == BASELINE_V20
    assert entry["win_rate"] == pytest.approx(70.0)
    assert entry["score"] == pytest.approx(70.0, abs=3.0)
    assert entry["ci_low"] <= entry["score"] <= entry["ci_high"]
    assert score_arena_hard(path, rounds=200, seed=3)["models"][0] == entry


def test_v20_baseline_from_judgments(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [v20_row("u1", "m", "B>A", "A>B", baseline="gemini-2.0-flash-001", category="creative_writing")],
    )

    assert score_arena_hard(path, rounds=ROUNDS)["baseline"] == "gemini-2.0-flash-001"


def test_v20_category_filter(tmp_path: Path) -> None:
    rows = [
        v20_row("u1", "m", "B>A", "A>B"),
        v20_row("u2", "m", "A>B", "B>A", baseline="gemini-2.0-flash-001", category="creative_writing"),
    ]
    path = write_jsonl(tmp_path / "m.jsonl", rows)

    result = score_arena_hard(path, rounds=ROUNDS, category="hard_prompt")

    assert result["models"][0]["win_rate"] == 100.0
    with pytest.raises(ArenaHardInputError, match="no judgments of category 'math'"):
        score_arena_hard(path, rounds=ROUNDS, category="math")


def test_v01_schema_scored_as_v20(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [v01_row("q1", "m", "A>B", "A>>B")])

    result = score_arena_hard(path, rounds=ROUNDS, version=V20)

    assert result["version"] == V20
    assert result["baseline"] == BASELINE_V01
    assert result["models"][0]["win_rate"] == pytest.approx(75.0)


# Style control


def style_answers(model: str, uids: list[str], lengths: list[int], markdown: int = 0) -> list[dict]:
    return [
        {
            "uid": uid,
            "ans_id": f"{model}-{uid}",
            "model": model,
            "messages": [],
            "metadata": {
                "token_len": length,
                "header_count": {"h1": 0, "h2": markdown},
                "list_count": {"ordered": markdown, "unordered": 0},
                "bold_count": {"**": markdown, "__": 0},
            },
        }
        for uid, length in zip(uids, lengths)
    ]


def test_style_features_by_hand() -> None:
    model = np.array([[300.0, 2.0, 0.0, 1.0], [100.0, 0.0, 0.0, 1.0], [200.0, 1.0, 0.0, 1.0]])
    baseline = np.array([[100.0, 0.0, 0.0, 1.0], [100.0, 0.0, 0.0, 1.0], [200.0, 1.0, 0.0, 1.0]])
    length = np.array([0.5, 0.0, 0.0])
    density_model, density_baseline = 2 / 301, 0.0
    header = np.array([(density_model - density_baseline) / (density_model + density_baseline + 1), 0.0, 0.0])
    bold_model, bold_baseline = 1 / 301, 1 / 101
    bold = np.array([(bold_model - bold_baseline) / (bold_model + bold_baseline + 1), 0.0, 0.0])

    features = style_difference_features(model, baseline)

    assert features[:, 0] == pytest.approx((length - length.mean()) / length.std(ddof=1))
    assert features[:, 1] == pytest.approx((header - header.mean()) / header.std(ddof=1))
    # The list column is constant (all zero), so it is left at 0.
    assert features[:, 2] == pytest.approx([0.0, 0.0, 0.0])
    assert features[:, 3] == pytest.approx((bold - bold.mean()) / bold.std(ddof=1))


def test_style_control_without_style_differences_keeps_win_rate(tmp_path: Path) -> None:
    uids = [f"u{index}" for index in range(8)]
    verdicts = [("B>A", "A>B"), ("B>A", "A>B"), ("B>A", "A>B"), ("A>B", "B>A")] * 2
    rows = [v20_row(uid, "m", *pair) for uid, pair in zip(uids, verdicts)]
    judgments = write_jsonl(tmp_path / "m.jsonl", rows)
    answer_rows = style_answers("m", uids, [100] * 8) + style_answers(BASELINE_V20, uids, [100] * 8)
    answers = write_jsonl(tmp_path / "answers.jsonl", answer_rows)

    result = score_arena_hard(judgments, rounds=ROUNDS, style_control=True, answer_paths=[answers])
    entry = result["models"][0]

    # Every style feature is constant, so only the model indicator remains: sigmoid(beta) = 6/8.
    assert entry["win_rate"] == pytest.approx(75.0, abs=1e-4)
    assert entry["ci_low"] <= entry["score"] <= entry["ci_high"]


def test_style_control_discounts_length(tmp_path: Path) -> None:
    # Both models win with probability sigmoid(6 (t_m - t_b) / (t_m + t_b)) for token lengths t,
    # so length alone decides. "verbose" writes longer answers, and style control should
    # bring the two models together.
    rng = np.random.default_rng(0)
    uids = [f"u{index}" for index in range(100)]
    baseline_lengths = rng.integers(200, 300, size=len(uids))
    answers, rows = style_answers(BASELINE_V20, uids, baseline_lengths.tolist()), []
    for model, low, high in (("verbose", 250, 500), ("concise", 50, 250)):
        lengths = rng.integers(low, high, size=len(uids))
        answers += style_answers(model, uids, lengths.tolist())
        win_probability = 1 / (1 + np.exp(-6 * (lengths - baseline_lengths) / (lengths + baseline_lengths)))
        for uid, probability in zip(uids, win_probability):
            game_1, game_2 = ("B>A", "A>B") if rng.random() < probability else ("A>B", "B>A")
            rows.append(v20_row(uid, model, game_1, game_2))
    judgments = write_jsonl(tmp_path / "judgments.jsonl", rows)
    answer_file = write_jsonl(tmp_path / "answers.jsonl", answers)

    plain = score_arena_hard(judgments, rounds=ROUNDS, answer_paths=[answer_file])
    controlled = score_arena_hard(judgments, rounds=ROUNDS, style_control=True, answer_paths=[answer_file])

    plain_gap = model_entry(plain, "verbose")["win_rate"] - model_entry(plain, "concise")["win_rate"]
    controlled_verbose = model_entry(controlled, "verbose")["win_rate"]
    controlled_gap = controlled_verbose - model_entry(controlled, "concise")["win_rate"]
    assert plain_gap > 40.0
    assert abs(controlled_gap) < plain_gap / 2
    assert controlled["style_coefficients"]["token_len"] > 1.0
    assert set(controlled["style_coefficients"]) == set(STYLE_FEATURES)
    for entry in controlled["models"]:
        assert entry["ci_low"] <= entry["score"] <= entry["ci_high"]


def test_style_control_reads_baseline_from_data_folder(tmp_path: Path, data_dir: Path) -> None:
    baseline_file = data_dir / "arena_hard/arena-hard-v2.0/model_answer/o3-mini-2025-01-31.jsonl.gz"
    baseline_answers = read_jsonl(baseline_file)
    uids = [record["uid"] for record in baseline_answers[:12]]
    lengths = [record["metadata"]["token_len"] for record in baseline_answers[:12]]
    rows = [v20_row(uid, "m", "B>A" if index % 3 else "A>B", "A>B") for index, uid in enumerate(uids)]
    judgments = write_jsonl(tmp_path / "m.jsonl", rows)
    answer_rows = style_answers("m", uids, [length * 2 for length in lengths], markdown=1)
    answers = write_jsonl(tmp_path / "answers.jsonl", answer_rows)

    result = score_arena_hard(
        judgments, rounds=ROUNDS, style_control=True, answer_paths=[answers], data_dir=data_dir
    )

    assert result["style_control"] is True
    assert 0.0 < result["models"][0]["score"] < 100.0


def test_style_control_names_missing_metadata(tmp_path: Path) -> None:
    rows = [v20_row("u1", "m", "B>A", "A>B"), v20_row("u2", "m", "A>B", "A>B")]
    judgments = write_jsonl(tmp_path / "m.jsonl", rows)
    answer_rows = style_answers("m", ["u1"], [10]) + style_answers(BASELINE_V20, ["u1", "u2"], [10, 20])
    answers = write_jsonl(tmp_path / "answers.jsonl", answer_rows)

    with pytest.raises(ArenaHardInputError, match="model m, question u2"):
        score_arena_hard(
            judgments, rounds=ROUNDS, style_control=True, answer_paths=[answers], data_dir=tmp_path
        )


def test_style_control_rejected_for_v01(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [v01_row("q1", "m", "A>B", "A>>B")])

    with pytest.raises(ArenaHardInputError, match="v2.0 scoring only"):
        score_arena_hard(path, rounds=ROUNDS, style_control=True)


# Invalid input


def test_duplicate_question_model_named(tmp_path: Path) -> None:
    rows = [v01_row(question_id, "m", "A>B", "B>A") for question_id in ("q1", "q2", "q1")]
    path = write_jsonl(tmp_path / "m.jsonl", rows)

    with pytest.raises(ArenaHardInputError, match="duplicate") as raised:
        score_arena_hard(path, rounds=ROUNDS)
    assert "m.jsonl record 3 repeats m.jsonl record 1 (question q1, model m)" in str(raised.value)


def test_mixed_judges_named(tmp_path: Path) -> None:
    rows = [v01_row("q1", "m", "A>B", "B>A"), v01_row("q2", "m", "A>B", "B>A", judge="gpt-4o")]
    path = write_jsonl(tmp_path / "m.jsonl", rows)

    with pytest.raises(ArenaHardInputError, match="mix judges") as raised:
        score_arena_hard(path, rounds=ROUNDS)
    assert "'gpt-4-1106-preview' on 1 rows (first: m.jsonl record 1)" in str(raised.value)
    assert "'gpt-4o' on 1 rows (first: m.jsonl record 2)" in str(raised.value)


def test_mixed_baselines_named(tmp_path: Path) -> None:
    rows = [
        v20_row("u1", "m", "A>B", "B>A"),
        v20_row("u2", "m", "A>B", "B>A", baseline="gemini-2.0-flash-001"),
    ]
    path = write_jsonl(tmp_path / "m.jsonl", rows)

    with pytest.raises(ArenaHardInputError, match="mix baselines") as raised:
        score_arena_hard(path, rounds=ROUNDS)
    assert "'gemini-2.0-flash-001' on 1 rows (first: m.jsonl record 2)" in str(raised.value)


def test_requested_baseline_conflicts_with_judgments(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [v20_row("u1", "m", "A>B", "B>A")])

    with pytest.raises(ArenaHardInputError, match="name the baseline 'o3-mini-2025-01-31' but 'gpt-4-0314'"):
        score_arena_hard(path, rounds=ROUNDS, baseline="gpt-4-0314")


def test_missing_questions_named(tmp_path: Path) -> None:
    question_rows = [{"question_id": f"q{index}", "turns": []} for index in range(4)]
    questions = write_jsonl(tmp_path / "question.jsonl", question_rows)
    rows = [v01_row(question_id, "m", "A>B", "B>A") for question_id in ("q0", "q2", "q9")]
    path = write_jsonl(tmp_path / "m.jsonl", rows)

    with pytest.raises(ArenaHardInputError) as raised:
        score_arena_hard(path, rounds=ROUNDS, questions_path=questions)
    message = str(raised.value)
    assert "model m lacks 2 of 4 questions: q1; q3" in message
    assert "m.jsonl record 3 (question q9, model m)" in message


def test_real_question_file_coverage(tmp_path: Path, data_dir: Path) -> None:
    question_file = data_dir / "arena_hard/arena-hard-v0.1/question.jsonl"
    ids = [record["question_id"] for record in read_jsonl(question_file)]
    path = write_jsonl(tmp_path / "m.jsonl", [v01_row(question_id, "m", "A>B", "B>A") for question_id in ids])

    result = score_arena_hard(path, rounds=2, questions_path=question_file)

    assert result["models"][0]["n_judgments"] == 500
    write_jsonl(path, [v01_row(question_id, "m", "A>B", "B>A") for question_id in ids[1:]])
    with pytest.raises(ArenaHardInputError, match=f"model m lacks 1 of 500 questions: {ids[0]}"):
        score_arena_hard(path, rounds=2, questions_path=question_file)


def test_mixed_schemas_rejected(tmp_path: Path) -> None:
    rows = [v01_row("q1", "m", "A>B", "B>A"), v20_row("u1", "m", "A>B", "B>A")]
    path = write_jsonl(tmp_path / "m.jsonl", rows)

    with pytest.raises(ArenaHardInputError, match="mix the 2024 schema"):
        score_arena_hard(path, rounds=ROUNDS)


def test_invalid_rows_named(tmp_path: Path) -> None:
    one_game = v01_row("q2", "m", "A>B", "B>A")
    one_game["games"] = one_game["games"][:1]
    rows = [
        {"id": "q1", "model": "m", "judge": "j", "games": []},
        one_game,
        {**v01_row("q3", "m", "A>B", "B>A"), "judge": None},
    ]
    path = write_jsonl(tmp_path / "m.jsonl", rows)

    with pytest.raises(ArenaHardInputError) as raised:
        score_arena_hard(path, rounds=ROUNDS)
    message = str(raised.value)
    assert "record 1: neither 'question_id' (2024 schema) nor 'uid' (2025 schema)" in message
    assert "record 2: games must be a list of 2 games" in message
    assert "record 3: judge must be a non-empty string" in message


def test_baseline_judged_against_itself_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [v01_row("q1", BASELINE_V01, "A=B", "A=B")])

    with pytest.raises(ArenaHardInputError, match="against itself: m.jsonl record 1"):
        score_arena_hard(path, rounds=ROUNDS)


def test_no_valid_verdict_rejected(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", [v01_row("q1", "m", None, None)])

    with pytest.raises(ArenaHardInputError, match="no game has a valid verdict"):
        score_arena_hard(path, rounds=ROUNDS)
