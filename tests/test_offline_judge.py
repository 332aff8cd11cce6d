"""Tests of the offline proxy judge: formula, determinism, persistence and behaviour on AlpacaEval outputs."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rspo_bench.data import (
    data_file,
    load_alpaca_eval_baseline,
    load_alpaca_eval_instructions,
    read_json,
)
from rspo_bench.preference.offline_judge import (
    OfflineJudge,
    content_words,
    sentence_tokens,
    sigmoid,
    verbosity,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# A small reference corpus, so that the formula tests do not need the data folder.
REFERENCE_TEXTS = [
    "To bake bread, mix flour, water, salt and yeast in a large bowl. Knead the dough for ten minutes.",
    "Let the dough rise in a warm place for one hour. Then shape the loaf and bake it in a hot oven.",
    "A good loaf of bread has a crisp crust and a soft crumb. Let the bread cool before you slice it.",
    "Water the tomato plants in the morning. Tomato plants need full sun and rich soil to grow well.",
    "Prune the plants in early spring. Remove dead branches and weeds from the garden bed.",
    "The train leaves the station at nine in the morning. Buy your ticket at the station before you board.",
    "Python is a programming language. You can write a function in Python with the def keyword.",
    "A function returns a value to the caller. Write small functions that do one thing well.",
    "Sleep is important for your health. Most adults need seven to nine hours of sleep each night.",
    "Exercise helps you sleep better. A short walk in the evening can improve the quality of your sleep.",
]
BREAD_INSTRUCTION = "How do I bake bread at home?"
BREAD_ANSWER = REFERENCE_TEXTS[0]
GARDEN_ANSWER = (
    "Water the tomato plants in the morning. Prune the plants in early spring and remove the weeds."
)
FLUENT_PADDING = " " + REFERENCE_TEXTS[1]

MODELS = ("alpaca-7b", "OpenHermes-2.5-Mistral-7B", "FuseChat-Llama-3.1-8B-Instruct")


@pytest.fixture(scope="module")
def judge() -> OfflineJudge:
    return OfflineJudge.fit(REFERENCE_TEXTS)


@pytest.fixture(scope="module")
def data_judge(data_dir: Path) -> OfflineJudge:
    return OfflineJudge.fit_ultrafeedback(data_dir)


def word_salad(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


# Formula


def test_preference_matrix_symmetry(judge: OfflineJudge) -> None:
    responses = [BREAD_ANSWER, GARDEN_ANSWER, "", word_salad(BREAD_ANSWER, 0), BREAD_ANSWER + FLUENT_PADDING]
    matrix = judge.preference_matrix(BREAD_INSTRUCTION, responses)

    assert matrix.shape == (5, 5)
    np.testing.assert_array_equal(np.diag(matrix), np.full(5, 0.5))
    np.testing.assert_allclose(matrix + matrix.T, np.ones((5, 5)), rtol=0, atol=1e-15)
    assert np.all((matrix > 0) & (matrix < 1))


def test_preference_matrix_matches_pairwise(judge: OfflineJudge) -> None:
    responses = [BREAD_ANSWER, GARDEN_ANSWER, word_salad(BREAD_ANSWER, 1)]
    matrix = judge.preference_matrix(BREAD_INSTRUCTION, responses)

    for i, response_i in enumerate(responses):
        for j, response_j in enumerate(responses):
            if i != j:
                pairwise = judge.preference(BREAD_INSTRUCTION, response_i, response_j)
                assert matrix[i, j] == pytest.approx(pairwise, abs=1e-15)


def test_preference_is_sigmoid_of_score_gap(judge: OfflineJudge) -> None:
    score_a = judge.score(BREAD_INSTRUCTION, BREAD_ANSWER)
    score_b = judge.score(BREAD_INSTRUCTION, GARDEN_ANSWER)
    expected = 1.0 / (1.0 + math.exp(-(score_a - score_b) / judge.parameters.temperature))

    preference = judge.preference(BREAD_INSTRUCTION, BREAD_ANSWER, GARDEN_ANSWER)
    assert preference == pytest.approx(expected, rel=1e-12)


def test_score_is_weighted_sum(judge: OfflineJudge) -> None:
    parameters = judge.parameters
    expected = (
        parameters.relevance_weight * judge.relevance(BREAD_INSTRUCTION, BREAD_ANSWER)
        + parameters.fluency_weight * judge.fluency(BREAD_ANSWER)
        + parameters.verbosity_bias * math.log(1 + len(BREAD_ANSWER) / 100)
    )

    assert judge.score(BREAD_INSTRUCTION, BREAD_ANSWER) == pytest.approx(expected, rel=1e-12)


def test_relevance_counts_content_words(judge: OfflineJudge) -> None:
    # Content words of the instruction: explain, photosynthesis, plant ("plants" loses its plural s).
    instruction = "Explain photosynthesis in plants."

    assert content_words(instruction) == {"explain", "photosynthesis", "plant"}
    assert judge.relevance(instruction, "Photosynthesis feeds the plant.") == pytest.approx(2 / 3)
    assert judge.relevance(instruction, "The train leaves at nine.") == 0.0
    assert judge.relevance("Is it?", "Yes it is.") == 1.0


def test_irrelevance_lowers_score(judge: OfflineJudge) -> None:
    relevant = judge.score(BREAD_INSTRUCTION, BREAD_ANSWER)
    irrelevant = judge.score("How do I grow tomato plants in my garden?", BREAD_ANSWER)

    assert relevant > irrelevant
    assert judge.preference(BREAD_INSTRUCTION, BREAD_ANSWER, GARDEN_ANSWER) > 0.5


def test_fluent_beats_word_salad(judge: OfflineJudge) -> None:
    salad = word_salad(BREAD_ANSWER, 2)

    assert judge.relevance(BREAD_INSTRUCTION, salad) == judge.relevance(BREAD_INSTRUCTION, BREAD_ANSWER)
    assert judge.fluency(BREAD_ANSWER) > judge.fluency(salad)
    assert judge.preference(BREAD_INSTRUCTION, BREAD_ANSWER, salad) > 0.5


def test_empty_response_gets_minimum(judge: OfflineJudge) -> None:
    assert judge.fluency("") == 0.0
    assert judge.fluency("  ...  ") == 0.0
    assert judge.relevance(BREAD_INSTRUCTION, "") == 0.0
    assert judge.score(BREAD_INSTRUCTION, "") == 0.0


def test_fluency_is_bounded(judge: OfflineJudge) -> None:
    for text in [BREAD_ANSWER, "zyxq wvut srqp", "the the the the", "bread"]:
        assert 0.0 <= judge.fluency(text) <= 1.0


def test_verbosity_feature_values() -> None:
    assert verbosity("") == 0.0
    assert verbosity("x" * 100) == pytest.approx(math.log(2))
    assert verbosity("x" * 900) == pytest.approx(math.log(10))


def test_padding_raises_score_with_bias(judge: OfflineJudge) -> None:
    assert judge.parameters.verbosity_bias > 0
    padded = BREAD_ANSWER + FLUENT_PADDING
    repeated = BREAD_ANSWER + " " + BREAD_ANSWER

    assert judge.score(BREAD_INSTRUCTION, padded) > judge.score(BREAD_INSTRUCTION, BREAD_ANSWER)
    assert judge.score(BREAD_INSTRUCTION, repeated) > judge.score(BREAD_INSTRUCTION, BREAD_ANSWER)
    assert judge.preference(BREAD_INSTRUCTION, padded, BREAD_ANSWER) > 0.5


def test_score_increases_with_bias() -> None:
    repeated = BREAD_ANSWER + " " + BREAD_ANSWER
    gaps = []
    for bias in [0.0, 0.25, 0.5, 1.0, 2.0]:
        biased = OfflineJudge.fit(REFERENCE_TEXTS, verbosity_bias=bias)
        gaps.append(biased.score(BREAD_INSTRUCTION, repeated) - biased.score(BREAD_INSTRUCTION, BREAD_ANSWER))

    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:]))


def test_zero_bias_removes_length_effect() -> None:
    unbiased = OfflineJudge.fit(REFERENCE_TEXTS, verbosity_bias=0.0)
    # Repeating whole sentences keeps relevance and the mean per-token log-probability unchanged.
    repeated = BREAD_ANSWER + " " + BREAD_ANSWER + "\n" + BREAD_ANSWER

    assert sentence_tokens(repeated) == sentence_tokens(BREAD_ANSWER) * 3
    assert unbiased.score(BREAD_INSTRUCTION, repeated) == pytest.approx(
        unbiased.score(BREAD_INSTRUCTION, BREAD_ANSWER), abs=1e-12
    )
    assert unbiased.preference(BREAD_INSTRUCTION, repeated, BREAD_ANSWER) == pytest.approx(0.5, abs=1e-12)


def test_batch_preferences_match_single(judge: OfflineJudge) -> None:
    instructions = [BREAD_INSTRUCTION, "How do I grow tomato plants?", "What is a Python function?"]
    responses_a = [BREAD_ANSWER, GARDEN_ANSWER, ""]
    responses_b = [GARDEN_ANSWER, BREAD_ANSWER, REFERENCE_TEXTS[7]]
    batch = judge.batch_preferences(instructions, responses_a, responses_b)

    assert batch.shape == (3,)
    for n in range(3):
        single = judge.preference(instructions[n], responses_a[n], responses_b[n])
        assert batch[n] == pytest.approx(single, abs=1e-15)


def test_batch_preferences_length_mismatch(judge: OfflineJudge) -> None:
    with pytest.raises(ValueError, match="same length"):
        judge.batch_preferences([BREAD_INSTRUCTION], [BREAD_ANSWER, GARDEN_ANSWER], [GARDEN_ANSWER])


@pytest.mark.parametrize(
    "parameters",
    [{"verbosity_bias": -0.1}, {"temperature": 0.0}, {"relevance_weight": -1.0}, {"fluency_weight": -1.0}],
)
def test_invalid_parameters_raise(parameters: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OfflineJudge.fit(REFERENCE_TEXTS, **parameters)


def test_fit_rejects_text_without_words() -> None:
    with pytest.raises(ValueError, match="no words"):
        OfflineJudge.fit(["...", "!!!"])


def test_sigmoid_is_stable() -> None:
    assert sigmoid(1000.0) == 1.0
    assert sigmoid(-1000.0) == 0.0
    assert sigmoid(0.0) == 0.5


# Identity, persistence and determinism


def test_name_and_description(judge: OfflineJudge) -> None:
    assert "proxy" in judge.name
    description = judge.description()
    assert "sigmoid" in description
    assert f"{judge.parameters.verbosity_bias:g} * verbosity" in description
    assert f"/ {judge.parameters.temperature:g})" in description


def test_fingerprint_tracks_parameters_and_counts(judge: OfflineJudge) -> None:
    same = OfflineJudge.fit(REFERENCE_TEXTS)
    other_bias = OfflineJudge.fit(REFERENCE_TEXTS, verbosity_bias=1.0)
    other_corpus = OfflineJudge.fit(REFERENCE_TEXTS[:-1])

    assert len(judge.fingerprint()) == 64
    assert judge.fingerprint() == same.fingerprint()
    assert judge.fingerprint() != other_bias.fingerprint()
    assert judge.fingerprint() != other_corpus.fingerprint()


def test_save_load_roundtrip(judge: OfflineJudge, tmp_path: Path) -> None:
    path = tmp_path / "judge.json"
    judge.save(path)
    loaded = OfflineJudge.load(path)
    responses = [BREAD_ANSWER, GARDEN_ANSWER, "", word_salad(BREAD_ANSWER, 3)]

    assert loaded.fingerprint() == judge.fingerprint()
    assert loaded.parameters == judge.parameters
    assert loaded.description() == judge.description()
    np.testing.assert_array_equal(
        loaded.preference_matrix(BREAD_INSTRUCTION, responses),
        judge.preference_matrix(BREAD_INSTRUCTION, responses),
    )
    assert list(tmp_path.iterdir()) == [path]


def test_load_rejects_other_format(judge: OfflineJudge, tmp_path: Path) -> None:
    path = tmp_path / "judge.json"
    judge.save(path)
    state = json.loads(path.read_text())
    state["formula_version"] = "offline-proxy-judge-v0"
    path.write_text(json.dumps(state))

    with pytest.raises(ValueError, match="unsupported judge file"):
        OfflineJudge.load(path)


_SUBPROCESS_SCRIPT = """
import json, sys
from rspo_bench.preference.offline_judge import OfflineJudge
texts, instruction, responses = json.loads(sys.stdin.read())
judge = OfflineJudge.fit(texts)
print(json.dumps({
    "fingerprint": judge.fingerprint(),
    "scores": [repr(value) for value in judge.scores(instruction, responses)],
    "matrix": [[repr(value) for value in row] for row in judge.preference_matrix(instruction, responses)],
}))
"""


def test_determinism_across_processes(judge: OfflineJudge) -> None:
    responses = [BREAD_ANSWER, GARDEN_ANSWER, word_salad(BREAD_ANSWER, 4), BREAD_ANSWER + FLUENT_PADDING]
    payload = json.dumps([REFERENCE_TEXTS, BREAD_INSTRUCTION, responses])
    environment = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO_ROOT))
    completed = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS_SCRIPT],
        input=payload,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=120,
        check=True,
    )
    result = json.loads(completed.stdout)

    assert result["fingerprint"] == judge.fingerprint()
    assert result["scores"] == [repr(value) for value in judge.scores(BREAD_INSTRUCTION, responses)]
    matrix = judge.preference_matrix(BREAD_INSTRUCTION, responses)
    assert result["matrix"] == [[repr(value) for value in row] for row in matrix]


# Real data


def _model_outputs(data_dir: Path, model: str) -> list[str]:
    records = read_json(data_file(f"alpaca_eval/models/{model}/model_outputs.json.gz", data_dir))
    return [record["output"] for record in records]


@pytest.fixture(scope="module")
def baseline_preferences(data_dir: Path, data_judge: OfflineJudge) -> dict[str, np.ndarray]:
    instructions = [record["instruction"] for record in load_alpaca_eval_instructions(data_dir)]
    baseline = [record["output"] for record in load_alpaca_eval_baseline(data_dir)]
    return {
        model: data_judge.batch_preferences(instructions, _model_outputs(data_dir, model), baseline)
        for model in MODELS
    }


def test_real_outputs_ordering(baseline_preferences: dict[str, np.ndarray]) -> None:
    # Measured with the default parameters on the 805 AlpacaEval instructions (judge fitted on the
    # 1,000 UltraFeedback train `chosen` responses): alpaca-7b 20.6 %, OpenHermes-2.5 34.4 %,
    # FuseChat-Llama-3.1-8B 41.3 % mean preference against the gpt4_1106_preview baseline.
    alpaca = baseline_preferences["alpaca-7b"].mean()
    open_hermes = baseline_preferences["OpenHermes-2.5-Mistral-7B"].mean()

    assert open_hermes > alpaca
    assert 0.02 <= alpaca <= 0.30


def test_real_outputs_soft_probabilities(baseline_preferences: dict[str, np.ndarray]) -> None:
    for model, preferences in baseline_preferences.items():
        assert preferences.shape == (805,), model
        assert np.all((preferences > 0) & (preferences < 1)), model
        assert 0.01 < np.mean(preferences > 0.5) < 0.99, model


def test_real_baseline_beats_its_word_salad(data_dir: Path, data_judge: OfflineJudge) -> None:
    instructions = [record["instruction"] for record in load_alpaca_eval_instructions(data_dir)][:200]
    baseline = [record["output"] for record in load_alpaca_eval_baseline(data_dir)][:200]
    salads = [word_salad(text, seed) for seed, text in enumerate(baseline)]
    preferences = data_judge.batch_preferences(instructions, baseline, salads)

    assert np.mean(preferences > 0.5) >= 0.95
