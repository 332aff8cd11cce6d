"""Tests of the AlpacaEval, Arena-Hard and MT-Bench judges and the LLM preference oracle.

Prompts are rendered from the real files of the data folder. Judge replies come from the
fake chat completions server of test_judge_client.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rspo_bench.data import data_file, load_alpaca_eval_baseline, read_json, read_jsonl
from rspo_bench.evals.judge_prompts import (
    AlpacaEvalJudge,
    ArenaHardJudge,
    MTBenchJudge,
    answers_by_question,
    chatml_to_messages,
    fill_template,
    game_outcome,
    load_arena_hard_baseline,
    load_arena_hard_questions,
    load_mt_bench_questions,
    mt_bench_answer_turns,
    parse_rating,
)
from rspo_bench.evals.judges import ChatJudgeClient
from rspo_bench.preference.llm_judge import LLMJudgeOracle
from tests.test_judge_client import FakeJudgeServer

JUDGE_MODEL = "judge-model"
THIRD_PARTY = "mt_bench/third_party/lmsys_h2o_branch"
OUTPUT_PATTERN = re.compile(r'"output": """(.*?)"""', re.DOTALL)


@pytest.fixture(scope="module")
def alpaca_judge(data_dir: Path) -> AlpacaEvalJudge:
    return AlpacaEvalJudge.from_data(data_dir)


@pytest.fixture(scope="module")
def arena_judge(data_dir: Path) -> ArenaHardJudge:
    return ArenaHardJudge.from_data(data_dir)


@pytest.fixture(scope="module")
def mt_judge(data_dir: Path) -> MTBenchJudge:
    return MTBenchJudge.from_data(data_dir)


@pytest.fixture
def server():
    fake = FakeJudgeServer().start()
    yield fake
    fake.stop()


@pytest.fixture
def client(server: FakeJudgeServer, tmp_path: Path):
    judge_client = ChatJudgeClient(
        server.url, JUDGE_MODEL, api_key_env="RSPO_TEST_UNSET_KEY", cache_path=tmp_path / "judgments.sqlite"
    )
    yield judge_client
    judge_client.close()


def shown_outputs(payload: dict[str, Any]) -> list[str]:
    """Return output_1 and output_2 as the AlpacaEval prompt shows them."""
    return OUTPUT_PATTERN.findall(payload["messages"][-1]["content"])


# Template helpers


def test_fill_template_single_pass():
    template = '{ "a": """{x}""" } {y}'

    assert fill_template(template, {"x": "{y}", "y": "2", "unused": "3"}) == '{ "a": """{y}""" } 2'
    with pytest.raises(ValueError, match=r"\['y'\]"):
        fill_template(template, {"x": "1"})


def test_chatml_to_messages_roles():
    prompt = (
        "<|im_start|>system\nBe brief.\n<|im_end|>\n"
        "<|im_start|>system name=example_user\nHi\n<|im_end|>\n"
        "<|im_start|>user\nQ?\n<|im_end|>"
    )

    assert chatml_to_messages(prompt) == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Hi", "name": "example_user"},
        {"role": "user", "content": "Q?"},
    ]
    with pytest.raises(ValueError, match="ChatML"):
        chatml_to_messages("user: hello")


# AlpacaEval 2


def test_alpaca_eval_config_settings(alpaca_judge: AlpacaEvalJudge):
    request = alpaca_judge.request("Say hi.", "hi", "hello")
    payload = request.payload(JUDGE_MODEL)

    assert alpaca_judge.reference_judge_model == "gpt-4-1106-preview"
    assert alpaca_judge.numerator_token == "m"
    assert alpaca_judge.denominator_tokens == ("m", "M")
    assert alpaca_judge.is_binarize is False
    assert payload["max_tokens"] == 1
    assert payload["temperature"] == 1.0
    assert payload["logprobs"] is True
    assert payload["top_logprobs"] == 5
    assert [message["role"] for message in payload["messages"]] == ["system", "user"]
    assert payload["messages"][1]["content"].endswith("## Best Model Identifier")
    assert shown_outputs(payload) == ["hi", "hello"]


def test_alpaca_eval_prompt_matches_alpaca_eval(alpaca_judge: AlpacaEvalJudge, data_dir: Path):
    pytest.importorskip("alpaca_eval")
    import pandas as pd
    from alpaca_eval.utils import make_prompts, prompt_to_chatml

    baseline = load_alpaca_eval_baseline(data_dir)[:3]
    model = read_json(data_file("alpaca_eval/models/alpaca-7b/model_outputs.json.gz", data_dir))[:3]
    frame = pd.DataFrame(
        {
            "instruction": [row["instruction"] for row in baseline],
            "output_1": [row["output"] for row in baseline],
            "output_2": [row["output"] for row in model],
        }
    )
    upstream_prompts, _ = make_prompts(frame, alpaca_judge.prompt_template)

    for row, upstream in zip(frame.itertuples(), upstream_prompts):
        messages = alpaca_judge.messages(row.instruction, row.output_1, row.output_2)
        assert messages == prompt_to_chatml(upstream)


@pytest.mark.parametrize(
    ("top_logprobs", "expected"),
    [
        ({"m": math.log(0.6), "M": math.log(0.2), "The": math.log(0.1)}, 2 - 0.6 / 0.8),
        ({"M": math.log(0.9), "m": math.log(0.1)}, 1.9),
        ({"M": -0.01, "The": -5.0}, 2.0),
        ({"m": -0.01, "Both": -6.0}, 1.0),
    ],
)
def test_alpaca_eval_preference_from_logprobs(alpaca_judge: AlpacaEvalJudge, top_logprobs, expected):
    assert alpaca_judge.preference(top_logprobs) == pytest.approx(expected)


def test_alpaca_eval_preference_without_labels(alpaca_judge: AlpacaEvalJudge):
    assert math.isnan(alpaca_judge.preference({"The": -0.1, "Based": -2.0}))


def test_alpaca_eval_binarized_preference(alpaca_judge: AlpacaEvalJudge):
    from dataclasses import replace

    binarized = replace(alpaca_judge, is_binarize=True)

    assert binarized.preference({"m": -0.5, "M": -1.0}) == 1.0
    assert binarized.preference({"m": -1.0, "M": -0.5}) == 2.0


def test_alpaca_eval_order_matches_published_annotations(alpaca_judge: AlpacaEvalJudge, data_dir: Path):
    """Recompute each published preference from its raw completion and the order-switch rule."""
    relative = "alpaca_eval/models/alpaca-7b/weighted_alpaca_eval_gpt4_turbo/annotations.json.gz"
    path = data_file(relative, data_dir)
    checked = 0
    switched = 0
    for annotation in read_json(path):
        completion = annotation.get("raw_completion")
        if not isinstance(completion, dict):
            continue
        alternatives: dict[str, float] = {}
        for item in completion["logprobs"]["content"][0]["top_logprobs"]:
            alternatives.setdefault(item["token"], item["logprob"])
        preference = alpaca_judge.preference(alternatives)
        if alpaca_judge.is_switched(annotation["instruction"]):
            preference = 3 - preference
            switched += 1
        published = float(annotation["preference"])
        assert preference == pytest.approx(published, abs=1e-6), annotation["instruction"]
        checked += 1

    assert checked >= 800
    assert 300 < switched < 500


def test_alpaca_eval_annotate_undoes_switch(alpaca_judge: AlpacaEvalJudge, client, server, data_dir: Path):
    """A judge that always gives P(m) = 0.7 yields 1.3 in the shown order, so 1.7 after a switch."""
    server.responder = lambda payload, authorization: {
        "content": "m",
        "top_logprobs": [("m", math.log(0.7)), ("M", math.log(0.3)), ("The", -9.0)],
    }
    instructions = [row["instruction"] for row in load_alpaca_eval_baseline(data_dir)[:12]]
    kept = next(text for text in instructions if not alpaca_judge.is_switched(text))
    swapped = next(text for text in instructions if alpaca_judge.is_switched(text))
    outputs = {"output_1": "baseline answer", "output_2": "model answer", "generator_2": "m1"}
    records = [
        {"instruction": kept, **outputs},
        {"instruction": swapped, **outputs},
        {"instruction": kept, "output_1": "same", "output_2": "same"},
    ]

    annotations = alpaca_judge.annotate(client, records)

    assert annotations[0]["preference"] == pytest.approx(1.3)
    assert annotations[1]["preference"] == pytest.approx(1.7)
    assert annotations[2]["preference"] == 1.5
    assert [annotation["is_switched_outputs"] for annotation in annotations[:2]] == [False, True]
    assert annotations[0]["generator_2"] == "m1"
    assert annotations[0]["annotator"] == "weighted_alpaca_eval_gpt4_turbo"
    assert annotations[0]["judge_model"] == JUDGE_MODEL
    assert annotations[2]["raw_completion"] is None
    assert len(server.log) == 2
    shown = {kept in entry["user"]: shown_outputs(entry["payload"]) for entry in server.log}
    assert shown[True] == ["baseline answer", "model answer"]
    assert shown[False] == ["model answer", "baseline answer"]


# Arena-Hard


def test_arena_hard_games_swap_positions(arena_judge: ArenaHardJudge, data_dir: Path):
    question = load_arena_hard_questions(data_dir)[0]
    baseline = load_arena_hard_baseline(data_dir)[question["question_id"]]
    text = question["turns"][0]["content"]

    game_1, game_2 = arena_judge.game_messages(text, baseline, "MODEL ANSWER")

    assert arena_judge.reference_judge_model == "gpt-4-1106-preview"
    assert arena_judge.baseline_model == "gpt-4-0314"
    assert arena_judge.temperature == 0.0
    assert arena_judge.max_tokens == 4096
    assert game_1[0] == {"role": "system", "content": arena_judge.system_prompt}
    assert arena_judge.system_prompt.startswith("Please act as an impartial judge")
    start_a, start_b = "<|The Start of Assistant A's Answer|>", "<|The Start of Assistant B's Answer|>"
    end_b = "<|The End of Assistant B's Answer|>"
    assert game_1[1]["content"].startswith(f"<|User Prompt|>\n{text}\n\n{start_a}\n{baseline}\n")
    assert game_1[1]["content"].endswith(f"{start_b}\nMODEL ANSWER\n{end_b}")
    assert f"{start_a}\nMODEL ANSWER\n" in game_2[1]["content"]
    assert game_2[1]["content"].endswith(f"{start_b}\n{baseline}\n{end_b}")


@pytest.mark.parametrize(
    ("judgment", "expected"),
    [
        ("My final verdict is tie: [[A=B]]", ("A=B", False)),
        ("Assistant B is significantly better: [[B>>A]]", ("B>>A", False)),
        ("[[A>B]] ... so again [[A>B]]", ("A>B", False)),
        ("First [[A>B]], on reflection [[B>A]]", (None, False)),
        ("Both answers are fine.", (None, True)),
        ("Verdict: [A>B]", (None, True)),
    ],
)
def test_arena_hard_verdict_parsing(arena_judge: ArenaHardJudge, judgment: str, expected):
    assert arena_judge.parse_verdict(judgment) == expected


@pytest.mark.parametrize(
    ("score", "game", "expected"),
    [
        ("A>>B", 0, ("baseline", 3)),
        ("A>B", 0, ("baseline", 1)),
        ("B>A", 0, ("model", 1)),
        ("B>>A", 0, ("model", 3)),
        ("A>>B", 1, ("model", 3)),
        ("A>B", 1, ("model", 1)),
        ("B>>A", 1, ("baseline", 3)),
        ("A=B", 1, ("tie", 1)),
        (None, 0, None),
        ("A>B>A", 1, None),
    ],
)
def test_arena_hard_game_outcome(score, game: int, expected):
    assert game_outcome(score, game) == expected


def test_arena_hard_judge_records(arena_judge: ArenaHardJudge, client, server, data_dir: Path):
    server.responder = lambda payload, authorization: {"content": "B is better. My final verdict: [[B>A]]"}
    questions = load_arena_hard_questions(data_dir)[:3]
    baseline = load_arena_hard_baseline(data_dir)
    answers = {question["question_id"]: f"answer to {question['question_id']}" for question in questions[:2]}

    records = arena_judge.judge(client, questions, answers, "my-model", baseline)

    assert len(records) == 2
    assert len(server.log) == 4
    record = records[0]
    assert set(record) == {"question_id", "model", "judge", "games"}
    assert record["question_id"] == questions[0]["question_id"]
    assert record["model"] == "my-model"
    assert record["judge"] == JUDGE_MODEL
    assert [set(game) for game in record["games"]] == [{"user_prompt", "judgment", "score"}] * 2
    assert [game["score"] for game in record["games"]] == ["B>A", "B>A"]
    assert [game_outcome(game["score"], index) for index, game in enumerate(record["games"])] == [
        ("model", 1),
        ("baseline", 1),
    ]
    model_answer = answers[record["question_id"]]
    assert record["games"][0]["user_prompt"].endswith(f"{model_answer}\n<|The End of Assistant B's Answer|>")


def test_arena_hard_asks_again_without_verdict(data_dir: Path, client, server):
    judge = ArenaHardJudge.from_data(data_dir, continuation_prompt="Finish with a verdict label.")

    def responder(payload: dict[str, Any], authorization: str) -> dict[str, Any]:
        asked_again = payload["messages"][-1]["content"] == "Finish with a verdict label."
        return {"content": "[[A=B]]" if asked_again else "Both answers are long."}

    server.responder = responder
    question = load_arena_hard_questions(data_dir)[0]
    baseline = load_arena_hard_baseline(data_dir)

    records = judge.judge(client, [question], {question["question_id"]: "short"}, "my-model", baseline)

    assert len(server.log) == 4
    assert [game["score"] for game in records[0]["games"]] == ["A=B", "A=B"]
    assert records[0]["games"][0]["judgment"] == "Both answers are long.\n[[A=B]]"
    roles = [message["role"] for message in server.log[-1]["payload"]["messages"]]
    assert roles == ["system", "user", "assistant", "user"]


# MT-Bench


@pytest.mark.parametrize(
    ("category", "turn", "expected"),
    [
        ("writing", 1, "single-v1"),
        ("humanities", 2, "single-v1-multi-turn"),
        ("math", 1, "single-math-v1"),
        ("reasoning", 2, "single-math-v1-multi-turn"),
        ("coding", 1, "single-math-v1"),
        ("stem", 1, "single-v1"),
    ],
)
def test_mt_bench_prompt_choice(mt_judge: MTBenchJudge, category: str, turn: int, expected: str):
    assert mt_judge.prompt_for(category, turn).name == expected


def test_mt_bench_prompts_reproduce_published_judgments(mt_judge: MTBenchJudge, data_dir: Path):
    """Rendered prompts equal the user_prompt of 320 real GPT-4 judgments, and parsed ratings their score."""
    questions = {question["question_id"]: question for question in load_mt_bench_questions(data_dir)}
    judgments = read_jsonl(data_file(f"{THIRD_PARTY}/model_judgment/gpt-4_single.jsonl", data_dir))
    answers = {
        model: mt_bench_answer_turns(
            read_jsonl(data_file(f"{THIRD_PARTY}/model_answer/{model}.jsonl", data_dir))
        )
        for model in {row["model"] for row in judgments}
    }

    for row in judgments:
        where = (row["question_id"], row["model"], row["turn"])
        prompt, user_prompt = mt_judge.user_prompt(
            questions[row["question_id"]], answers[row["model"]][row["question_id"]], row["turn"]
        )
        assert prompt.name == row["judge"][1], where
        assert user_prompt == row["user_prompt"], where
        assert parse_rating(row["judgment"]) == row["score"], where

    assert len(judgments) == 320


@pytest.mark.parametrize(
    ("judgment", "expected"),
    [
        ("Rating: [[7]]", 7),
        ("Rating: [[8.5]]", 8.5),
        ("[[3]] but later [[9]]", 3),
        ("Rating: [6]", 6),
        ("I rate it a 6 out of 10.", -1),
        ("", -1),
    ],
)
def test_mt_bench_rating_parsing(judgment: str, expected):
    assert parse_rating(judgment) == expected
    assert type(parse_rating(judgment)) is type(expected)


def test_mt_bench_judge_records(mt_judge: MTBenchJudge, client, server, data_dir: Path):
    def responder(payload: dict[str, Any], authorization: str) -> dict[str, Any]:
        # Only the turn-2 prompt shows the conversation as "### Assistant A:\n<turn 1 answer>".
        unrated = "### Assistant A:\nno rating please" in payload["messages"][-1]["content"]
        return {"content": "A fine answer." if unrated else "A fine answer. Rating: [[7]]"}

    server.responder = responder
    questions = load_mt_bench_questions(data_dir)
    writing_question = next(question for question in questions if question["category"] == "writing")
    math_question = next(question for question in questions if question["category"] == "math")
    writing, math_id = writing_question["question_id"], math_question["question_id"]
    answers = {writing: ["first turn", "second turn"], math_id: ["no rating please", "second"]}

    records = mt_judge.judge(client, [writing_question, math_question], answers, "my-model")

    assert len(records) == 4
    assert len(server.log) == 4
    fields = {"question_id", "model", "judge", "user_prompt", "judgment", "score", "turn", "tstamp"}
    assert set(records[0]) == fields
    by_key = {(record["question_id"], record["turn"]): record for record in records}
    assert by_key[writing, 1]["judge"] == [JUDGE_MODEL, "single-v1"]
    assert by_key[writing, 2]["judge"] == [JUDGE_MODEL, "single-v1-multi-turn"]
    assert by_key[math_id, 1]["judge"] == [JUDGE_MODEL, "single-math-v1"]
    assert by_key[math_id, 2]["judge"] == [JUDGE_MODEL, "single-math-v1-multi-turn"]
    assert by_key[writing, 1]["score"] == 7
    assert by_key[math_id, 2]["score"] == -1
    assert mt_judge.reference_answers[math_id][0] in by_key[math_id, 1]["user_prompt"]
    system_prompts = {entry["payload"]["messages"][0]["content"] for entry in server.log}
    assert "You are a helpful assistant." in system_prompts
    assert all(entry["payload"]["temperature"] == 0.0 for entry in server.log)
    assert all(entry["payload"]["max_tokens"] == 2048 for entry in server.log)


def test_mt_bench_missing_reference_raises(data_dir: Path, mt_judge: MTBenchJudge):
    coding = [question for question in load_mt_bench_questions(data_dir) if question["category"] == "coding"]
    question = coding[0]
    judge = MTBenchJudge(mt_judge.prompts, {})

    with pytest.raises(ValueError, match=f"question {question['question_id']} .*reference"):
        judge.user_prompt(question, ["a", "b"], 1)


def test_answers_by_question_reads_both_schemas():
    arena = [{"question_id": "q1", "choices": [{"index": 0, "turns": [{"content": "hello"}]}]}]
    fastchat = [{"question_id": 81, "choices": [{"index": 0, "turns": ["one", "two"]}]}]

    assert answers_by_question(arena) == {"q1": "hello"}
    assert answers_by_question(fastchat, turn=1) == {81: "two"}


# LLM preference oracle


def biased_length_judge(payload: dict[str, Any], authorization: str) -> dict[str, Any]:
    """Prefer the longer output with probability 0.8, plus a bias of 0.1 towards the first position."""
    output_1, output_2 = shown_outputs(payload)
    first_better = 0.8 if len(output_1) > len(output_2) else 0.2
    probability = first_better + 0.1
    return {"content": "m", "top_logprobs": [("m", math.log(probability)), ("M", math.log(1 - probability))]}


def test_oracle_matrix_cancels_position_bias(client, server, alpaca_judge: AlpacaEvalJudge):
    server.responder = biased_length_judge
    oracle = LLMJudgeOracle(client, alpaca_judge)
    responses = ["short", "a much longer answer", "medium one", "short"]

    matrix = oracle.preference_matrix("Explain gravity.", responses)

    expected = np.array(
        [
            [0.5, 0.2, 0.2, 0.5],
            [0.8, 0.5, 0.8, 0.8],
            [0.8, 0.2, 0.5, 0.8],
            [0.5, 0.2, 0.2, 0.5],
        ]
    )
    np.testing.assert_allclose(matrix, expected, atol=1e-12)
    np.testing.assert_allclose(matrix + matrix.T, np.ones((4, 4)), atol=1e-12)
    # 5 pairs of distinct responses in two orders, but pairs (1, 3) and (2, 3) repeat pairs (1, 0) and (2, 0).
    assert len(server.log) == 6

    again = oracle.preference_matrix("Explain gravity.", responses)
    np.testing.assert_array_equal(again, matrix)
    assert len(server.log) == 6


def test_oracle_pair_without_labels_is_even(client, server, alpaca_judge: AlpacaEvalJudge):
    server.responder = lambda payload, authorization: {"content": "The", "top_logprobs": [("The", -0.1)]}
    oracle = LLMJudgeOracle(client, alpaca_judge)

    assert oracle.preference("Say hi.", "hi", "hello there") == 0.5


def test_oracle_batch_preferences_shape(client, server, alpaca_judge: AlpacaEvalJudge):
    server.responder = biased_length_judge
    oracle = LLMJudgeOracle(client, alpaca_judge)

    probabilities = oracle.batch_preferences(["q1", "q2"], ["long answer", "a"], ["a", "long answer"])

    np.testing.assert_allclose(probabilities, [0.8, 0.2])
    with pytest.raises(ValueError, match="same length"):
        oracle.batch_preferences(["q1"], ["a", "b"], ["c"])


def test_oracle_identity(client, alpaca_judge: AlpacaEvalJudge, tmp_path: Path):
    oracle = LLMJudgeOracle(client, alpaca_judge)
    other_client = ChatJudgeClient(
        "http://127.0.0.1:9/v1", "other-judge", cache_path=tmp_path / "other.sqlite"
    )
    other = LLMJudgeOracle(other_client, alpaca_judge)

    assert oracle.name == f"llm-judge:{JUDGE_MODEL}"
    assert oracle.fingerprint() == LLMJudgeOracle(client, alpaca_judge).fingerprint()
    assert oracle.fingerprint() != other.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", oracle.fingerprint())
    assert JUDGE_MODEL in oracle.description()
    assert "both orders" in oracle.description()
    assert oracle.fingerprint()[:12] in repr(oracle)
    other_client.close()
