"""Benchmark generation, proxy and LLM judges, ArmoRM metrics, `rspo-bench eval` and sweep logging."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
import pytest

from rspo_bench.config import ExperimentConfig, SamplingConfig, TinyModelConfig
from rspo_bench.data import load_ultrafeedback
from rspo_bench.evals import armorm, generation, proxy_judges
from rspo_bench.evals.arena_hard import score_arena_hard
from rspo_bench.evals.mt_bench import score_mt_bench
from rspo_bench.evals.run_eval import eval_config, parse_benchmarks
from rspo_bench.preference.reward_model import RewardModelJudge, RewardOutputs
from rspo_bench.worlds import tiny
from tests.test_judge_client import FakeJudgeServer
from tests.test_reward_model import TEXTS, save_remote_reward_checkpoint

REPO = Path(__file__).resolve().parent.parent

EVAL_CONFIG = """\
name: evalcfg
evaluation:
  alpaca_eval2: {max_instructions: 12, sampling: {num_samples: 1, max_new_tokens: 8, batch_size: 16}}
  arena_hard:
    enabled: true
    max_questions: 6
    bootstrap_rounds: 20
    sampling: {num_samples: 1, temperature: 0, max_new_tokens: 8}
  mt_bench: {enabled: true, max_questions: 8, max_new_tokens: 8}
  diversity: {enabled: true, max_prompts: 4, sampling: {num_samples: 3, max_new_tokens: 8}}
sweep:
  variants: [{name: eval}]
"""


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "rspo_bench.cli", *args], cwd=cwd, env=environment, capture_output=True, text=True,
        timeout=600,
    )


# Markdown metadata


def test_markdown_counts_match_published_answer_metadata(data_dir: Path):
    path = data_dir / "arena_hard" / "arena-hard-v2.0" / "model_answer" / "o3-mini-2025-01-31.jsonl.gz"
    mismatches = []
    count = 0
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        for line in stream.read().split("\n"):
            if not line.strip():
                continue
            record = json.loads(line)
            content = record["messages"][-1]["content"]
            text = content["answer"] if isinstance(content, dict) else content
            expected = {key: record["metadata"][key] for key in ("header_count", "list_count", "bold_count")}
            count += 1
            if generation.markdown_counts(text) != expected:
                mismatches.append(record["uid"])
    assert count == 750
    assert mismatches == []


def test_markdown_counts_skip_code_blocks():
    text = "# Title\n## Part\n```\n# not a header\n- not an item\n```\n1. one\n2. two\n- a\n* b\n**bold** and __also__"
    counts = generation.markdown_counts(text)
    assert counts["header_count"] == {"h1": 1, "h2": 1, "h3": 0, "h4": 0, "h5": 0, "h6": 0}
    assert counts["list_count"] == {"ordered": 2, "unordered": 2}
    assert counts["bold_count"] == {"**": 1, "__": 1}


def test_arena_hard_answer_record_schema():
    record = generation.arena_hard_answer("q1", "m", "## Head\n- item", token_len=5, tokenizer="policy")
    assert record["model_id"] == "m"
    assert record["question_id"] == "q1"
    assert record["choices"][0]["turns"][0] == {"content": "## Head\n- item", "token_len": 5}
    metadata = record["conv_metadata"]
    assert metadata["token_len"] == 5
    assert metadata["header_count"]["h2"] == 1
    assert metadata["list_count"]["unordered"] == 1


# MT-Bench generation


class RecordingGenerator:
    """Answers each prompt with a text naming the call and the prompt's last user message."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Any], SamplingConfig, int]] = []

    def __call__(self, prompts, sampling, *, seed, num_samples=None):
        self.calls.append((list(prompts), sampling, seed))
        return [[f"answer {len(self.calls)} to {prompt[-1]['content']}"] for prompt in prompts]


def test_mt_bench_turns_and_temperatures():
    questions = [
        {"question_id": 1, "category": "writing", "turns": ["Write a poem.", "Shorten it."]},
        {"question_id": 2, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]},
    ]
    temperatures = {"writing": 0.7, "math": 0.0}
    generate = RecordingGenerator()
    records = generation.generate_mt_bench(
        generate, questions, temperatures, max_new_tokens=16, batch_size=4, seed=3, model="m"
    )
    # One turn-1 and one turn-2 call per temperature, greedy first.
    assert [call[1].temperature for call in generate.calls] == [0.0, 0.0, 0.7, 0.7]
    turn_1_math, turn_2_math = generate.calls[0][0][0], generate.calls[1][0][0]
    assert turn_1_math == [{"role": "user", "content": "What is 2+2?"}]
    assert turn_2_math == [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "answer 1 to What is 2+2?"},
        {"role": "user", "content": "And 3+3?"},
    ]
    by_id = {record["question_id"]: record for record in records}
    assert by_id[2]["choices"][0]["turns"] == ["answer 1 to What is 2+2?", "answer 2 to And 3+3?"]
    assert by_id[1]["choices"][0]["turns"] == ["answer 3 to Write a poem.", "answer 4 to Shorten it."]


def test_mt_bench_unknown_category_named():
    with pytest.raises(ValueError, match="'poetry'"):
        generation.generate_mt_bench(
            RecordingGenerator(), [{"question_id": 1, "category": "poetry", "turns": ["a", "b"]}],
            {"writing": 0.7}, max_new_tokens=4, batch_size=1, seed=0, model="m",
        )


def test_conversation_prompt_goes_through_chat_template():
    tokenizer = tiny.train_tokenizer(TEXTS, vocab_size=300)
    conversation = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]
    (ids,) = tiny.encode_prompts(tokenizer, [conversation], None)
    text = tokenizer.decode(ids)
    assert text.index("first question") < text.index("first answer") < text.index("second question")
    with pytest.raises(ValueError, match="end with a user message"):
        tiny.encode_prompts(tokenizer, [conversation[:2]], None)


def test_greedy_decoding_is_deterministic_and_needs_one_sample():
    tokenizer = tiny.train_tokenizer(TEXTS, vocab_size=300)
    model = tiny.build_tiny_model(
        TinyModelConfig(vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        tokenizer, seed=0,
    )
    greedy = SamplingConfig(num_samples=1, temperature=0.0, max_new_tokens=6)
    first = tiny.generate(model, tokenizer, ["hello there"], greedy, seed=1)
    second = tiny.generate(model, tokenizer, ["hello there"], greedy, seed=2)
    assert first == second
    with pytest.raises(ValueError, match="greedily"):
        SamplingConfig(num_samples=2, temperature=0.0)


# Proxy judges


class FixedOracle:
    """Preference oracle that computes P(a preferred over b) from a strength per response text."""

    name = "fixed-oracle"

    def __init__(self, strength: dict[str, float]) -> None:
        self.strength = strength

    def batch_preferences(self, instructions, responses_a, responses_b):
        return np.array([1.0 / (1.0 + np.exp(self.strength[b] - self.strength[a]))
                         for a, b in zip(responses_a, responses_b, strict=True)])


@pytest.mark.parametrize(
    ("probability", "verdict"),
    [(0.95, "A>>B"), (0.8, "A>>B"), (0.7, "A>B"), (0.6, "A>B"), (0.5, "A=B"), (0.4, "B>A"), (0.2, "B>>A")],
)
def test_arena_hard_verdict_thresholds(probability: float, verdict: str):
    assert proxy_judges.arena_hard_verdict(probability) == verdict


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def test_arena_hard_proxy_judgments_score_with_leaderboard_code(tmp_path: Path):
    questions = [{"question_id": f"q{i}", "turns": [{"content": f"question {i}"}]} for i in range(6)]
    baseline = {f"q{i}": f"baseline {i}" for i in range(6)}
    # Equal strength everywhere: every game is a tie, so the Bradley-Terry score is exactly 50%.
    tied = FixedOracle({**{v: 0.0 for v in baseline.values()}, **{f"model {i}": 0.0 for i in range(6)}})
    answers = {f"q{i}": f"model {i}" for i in range(6)}
    records = proxy_judges.judge_arena_hard(tied, questions, answers, "m", baseline)
    assert all(game["score"] == "A=B" for record in records for game in record["games"])
    assert records[0]["judge"] == "fixed-oracle (proxy)"
    scores = score_arena_hard(_write_jsonl(tmp_path / "tie" / "m.jsonl", records).parent, baseline="gpt-4-0314",
                              version="v0.1", rounds=10)
    assert scores["models"][0]["score"] == pytest.approx(50.0, abs=1e-6)

    # A model that wins half the questions decisively and loses the rest decisively also scores 50%.
    mixed = FixedOracle({**{v: 0.0 for v in baseline.values()},
                         **{f"model {i}": (3.0 if i % 2 else -3.0) for i in range(6)}})
    records = proxy_judges.judge_arena_hard(mixed, questions, answers, "m", baseline)
    first_games = [record["games"][0]["score"] for record in records]
    assert first_games == ["A>>B", "B>>A"] * 3
    scores = score_arena_hard(_write_jsonl(tmp_path / "mixed" / "m.jsonl", records).parent,
                              baseline="gpt-4-0314", version="v0.1", rounds=10)
    assert scores["models"][0]["score"] == pytest.approx(50.0, abs=0.5)


def test_arena_hard_proxy_names_missing_answers():
    questions = [{"question_id": "q1", "turns": [{"content": "x"}]}]
    with pytest.raises(ValueError, match="q1"):
        proxy_judges.judge_arena_hard(FixedOracle({}), questions, {}, "m", {"q1": "b"})


def test_mt_bench_proxy_ratings(tmp_path: Path):
    questions = [{"question_id": 1, "category": "writing", "turns": ["a", "b"]},
                 {"question_id": 2, "category": "math", "turns": ["c", "d"]}]
    answers = {1: ["x1", "x2"], 2: ["y1", "y2"]}
    references = {1: ["r1", "r2"], 2: ["s1", "s2"]}
    # P = 0.5 on turn 1 (equal strength), sigmoid(ln 3) = 0.75 on turn 2.
    strength = {"x1": 0.0, "y1": 0.0, "r1": 0.0, "s1": 0.0, "x2": np.log(3.0), "y2": np.log(3.0), "r2": 0.0, "s2": 0.0}
    records = proxy_judges.judge_mt_bench(
        FixedOracle(strength), questions, answers, "m", references, reference_model="gpt-4"
    )
    assert [(record["turn"], record["score"]) for record in records] == [(1, 5.5), (1, 5.5), (2, 7.75), (2, 7.75)]
    assert records[0]["judge"] == ["fixed-oracle (proxy)", "proxy-pairwise-vs-gpt-4"]
    scores = score_mt_bench(_write_jsonl(tmp_path / "judgments.jsonl", records))
    entry = scores["models"][0]
    assert (entry["turn_1"], entry["turn_2"], entry["overall"]) == pytest.approx((5.5, 7.75, 6.625))


# ArmoRM


@pytest.fixture(scope="module")
def armorm_checkpoint(tmp_path_factory) -> Path:
    """A tiny remote-code reward model with ArmoRM's 19 objectives and its output fields."""
    return save_remote_reward_checkpoint(
        tmp_path_factory.mktemp("armorm"), tiny.train_tokenizer(TEXTS, vocab_size=300), num_objectives=19,
        module_name="tiny_armorm_code_for_saving",
    )


def test_armorm_metrics_name_the_objectives(armorm_checkpoint: Path):
    judge = RewardModelJudge.from_pretrained(armorm_checkpoint, trust_remote_code=True, device="cpu")
    instructions = ["say hi", "count to three", "name a color"]
    answers = ["hi there", "one two three", "blue"]
    metrics, records = armorm.score_answers(judge, instructions, answers)
    outputs = judge.reward_outputs(instructions, answers)
    assert metrics["armorm/score"] == pytest.approx(float(np.mean(outputs.rewards)))
    assert metrics["armorm/helpsteer-helpfulness"] == pytest.approx(float(np.mean(outputs.objective_rewards[:, 0])))
    assert metrics["armorm/code-readability"] == pytest.approx(float(np.mean(outputs.objective_rewards[:, 18])))
    assert len(metrics) == 20
    assert set(records[0]["objectives"]) == set(armorm.ARMORM_OBJECTIVES)


def test_reward_metrics_without_armorm_objectives():
    outputs = RewardOutputs(np.array([1.0, 3.0]), np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert armorm.reward_metrics(outputs) == {"armorm/score": 2.0, "armorm/objective_0": 2.0,
                                              "armorm/objective_1": 3.0}


# Config and CLI


def test_eval_config_and_benchmark_names(tmp_path: Path):
    assert parse_benchmarks("alpaca-eval2, mt_bench") == ["alpaca_eval2", "mt_bench"]
    with pytest.raises(ValueError, match="choose from"):
        parse_benchmarks("alpaca,mt_bench")
    config = eval_config("/models/my model", ["arena_hard"], judge_url="http://127.0.0.1:9/v1", judge_model="gpt-4")
    assert config.name == "__models__my_model"
    assert config.world.kind == "hf"
    assert config.world.hf.name_or_path == "/models/my model"
    assert config.evaluation.arena_hard.enabled and not config.evaluation.alpaca_eval2.enabled
    assert config.evaluation.judge.kind == "llm"


def test_judge_url_needs_scheme():
    with pytest.raises(ValueError, match="lacks a scheme"):
        eval_config("/models/m", ["mt_bench"], judge_url="127.0.0.1:8000/v1", judge_model="gpt-4")


def test_eval_defaults_use_upstream_lengths():
    config = eval_config("/models/m", None)
    evaluation = config.evaluation
    assert [name for name in ("alpaca_eval2", "arena_hard", "mt_bench", "armorm", "diversity")
            if getattr(evaluation, name).enabled] == ["alpaca_eval2", "arena_hard", "mt_bench", "diversity"]
    assert evaluation.arena_hard.sampling.max_new_tokens == 4096
    assert evaluation.arena_hard.sampling.temperature == 0
    assert evaluation.mt_bench.max_new_tokens == 1024
    assert evaluation.alpaca_eval2.sampling.max_new_tokens == 2048
    assert evaluation.diversity.sampling.max_new_tokens == 200


def test_objective_needs_enabled_benchmark():
    base = {"name": "x", "sweep": {"variants": [{"name": "sppo"}], "objectives": ["arena_hard/score"]}}
    with pytest.raises(ValueError, match="evaluation.arena_hard.enabled"):
        ExperimentConfig.model_validate(base)
    base["evaluation"] = {"arena_hard": {"enabled": True}}
    assert ExperimentConfig.model_validate(base).sweep.objectives == ["arena_hard/score"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_dir) -> Path:
    """A randomly initialised Llama checkpoint with its own tokenizer and chat template."""
    records = load_ultrafeedback("train", data_dir)[:100]
    tokenizer = tiny.train_tokenizer([record["prompt"] for record in records], vocab_size=300)
    model = tiny.build_tiny_model(
        TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        tokenizer, seed=0,
    )
    path = tmp_path_factory.mktemp("eval_checkpoint") / "checkpoint"
    tiny.save_policy(model, tokenizer, path)
    return path


def test_eval_cli_logs_and_resumes(tmp_path: Path, checkpoint: Path):
    config = tmp_path / "eval.yaml"
    config.write_text(EVAL_CONFIG, encoding="utf-8")
    args = ("eval", "--model", str(checkpoint), "--config", str(config), "--name", "tinyck",
            "--workdir", str(tmp_path / "runs"), "--json")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    result = json.loads(first.stdout)
    metrics = result["metrics"]
    for name in ("alpaca_eval2/lc_win_rate", "arena_hard/score", "arena_hard/ci_low", "arena_hard/ci_high",
                 "mt_bench/turn1", "mt_bench/turn2", "mt_bench/score", "diversity/self_bleu", "diversity/distinct_2"):
        assert np.isfinite(metrics[name]), name
    assert 1.0 <= metrics["mt_bench/turn1"] <= 10.0
    assert 0.0 <= metrics["diversity/self_bleu"] <= 1.0
    tags = result["tags"]
    for benchmark in ("alpaca_eval2", "arena_hard", "mt_bench", "diversity"):
        for field in ("judge", "judge_is_proxy", "version", "baseline"):
            assert tags[f"rspo.{benchmark}.{field}"], (benchmark, field)
    assert tags["rspo.arena_hard.judge_is_proxy"] == "true"
    assert tags["rspo.arena_hard.baseline"] == "gpt-4-0314"

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlruns.db'}")
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["arena_hard/score"] == pytest.approx(metrics["arena_hard/score"])
    assert run.data.tags["rspo.mt_bench.judge"].endswith("(proxy)")
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/arena_hard_answers.jsonl", "eval/mt_bench_judgments.jsonl", "eval/diversity_samples.json"} <= artifacts

    # The answer files carry the metadata and turns that the benchmarks' own tools read.
    answers = _read_jsonl(client.download_artifacts(run.info.run_id, "eval/arena_hard_answers.jsonl", str(tmp_path)))
    assert len(answers) == 6
    assert "bold_count" in answers[0]["conv_metadata"]
    mt_answers = _read_jsonl(client.download_artifacts(run.info.run_id, "eval/mt_bench_answers.jsonl", str(tmp_path)))
    assert len(mt_answers) == 8
    assert all(len(record["choices"][0]["turns"]) == 2 for record in mt_answers)

    # The logged judgment files rescore with `rspo-bench score` to the logged numbers.
    judgments = client.download_artifacts(run.info.run_id, "eval/mt_bench_judgments.jsonl", str(tmp_path))
    rescored = run_cli("score", "mt-bench", judgments, "--json", cwd=tmp_path)
    assert rescored.returncode == 0, rescored.stderr[-3000:]
    assert json.loads(rescored.stdout)["models"][0]["overall"] == pytest.approx(metrics["mt_bench/score"])

    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["metrics"] == metrics
    assert json.loads(second.stdout)["mlflow_run_id"] != result["mlflow_run_id"]
    assert "sampling" not in second.stderr, "a rerun must take every answer from the stage cache"


def test_eval_armorm_logs_score_and_objectives(tmp_path: Path, checkpoint: Path, armorm_checkpoint: Path):
    config = tmp_path / "eval.yaml"
    config.write_text(EVAL_CONFIG, encoding="utf-8")
    result = run_cli(
        "eval", "--model", str(checkpoint), "--config", str(config), "--bench", "alpaca_eval2,armorm",
        "--armorm", str(armorm_checkpoint), "--workdir", str(tmp_path / "runs"), "--json", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout)
    metrics, tags = output["metrics"], output["tags"]
    assert np.isfinite(metrics["armorm/score"])
    assert {f"armorm/{name}" for name in armorm.ARMORM_OBJECTIVES} <= set(metrics)
    assert tags["rspo.armorm.judge"] == str(armorm_checkpoint)
    assert tags["rspo.armorm.judge_is_proxy"] == "false"
    assert "12 AlpacaEval 2.0 outputs" in tags["rspo.armorm.version"]
    assert "arena_hard/score" not in metrics


def llm_judge_responder(payload: dict[str, Any], authorization: str) -> dict[str, Any]:
    """Play the three benchmark judges: AlpacaEval log-probabilities, Arena-Hard ties, MT-Bench ratings."""
    system = payload["messages"][0]["content"]
    user = payload["messages"][-1]["content"]
    if payload.get("logprobs"):
        return {"content": "m", "usage": (50, 1), "top_logprobs": [("m", -0.2), ("M", -1.8)]}
    if "[[A>>B]]" in system:
        return {"content": "Both are alike. My final verdict is tie: [[A=B]]", "usage": (300, 20)}
    if "Assistant A's Conversation with User" in user:
        return {"content": "Good follow-up. Rating: [[6]]", "usage": (200, 10)}
    return {"content": "Fine. Rating: [[7]]", "usage": (200, 10)}


def test_eval_with_llm_judge_endpoint(tmp_path: Path, checkpoint: Path):
    server = FakeJudgeServer(llm_judge_responder).start()
    try:
        config = tmp_path / "eval.yaml"
        mt_bench_line = "  mt_bench: {enabled: true, max_questions: 8, max_new_tokens: 8}"
        assert mt_bench_line in EVAL_CONFIG
        config.write_text(EVAL_CONFIG.replace(
            mt_bench_line, "  mt_bench: {enabled: true, max_questions: 8, max_new_tokens: 8, judge_model: mt-judge-y}"
        ), encoding="utf-8")
        result = run_cli(
            "eval", "--model", str(checkpoint), "--config", str(config), "--bench", "alpaca_eval2,arena_hard,mt_bench",
            "--judge-url", server.url, "--judge-model", "judge-model-x", "--workdir", str(tmp_path / "runs"), "--json",
            cwd=tmp_path, env={"RSPO_BENCH_CACHE": str(tmp_path / "user_cache")},
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout)
    metrics, tags = output["metrics"], output["tags"]
    # All Arena-Hard games are ties: 50% exactly. MT-Bench: 7 on turn 1, 6 on turn 2.
    assert metrics["arena_hard/score"] == pytest.approx(50.0, abs=1e-6)
    assert (metrics["mt_bench/turn1"], metrics["mt_bench/turn2"], metrics["mt_bench/score"]) == (7.0, 6.0, 6.5)
    assert 0.0 < metrics["alpaca_eval2/win_rate"] < 100.0
    for benchmark in ("alpaca_eval2", "arena_hard", "mt_bench"):
        assert tags[f"rspo.{benchmark}.judge_is_proxy"] == "false"
    assert "judge-model-x" in tags["rspo.alpaca_eval2.judge"]
    assert tags["rspo.arena_hard.judge"] == "judge-model-x"
    assert tags["rspo.mt_bench.judge"] == "mt-judge-y"
    arena_requests = [entry for entry in server.log if "[[A>>B]]" in entry["payload"]["messages"][0]["content"]]
    assert len(arena_requests) == 12  # 6 questions, two games each
    assert {entry["payload"]["model"] for entry in arena_requests} == {"judge-model-x"}
    mt_requests = [entry for entry in server.log if "Rating" in entry["payload"]["messages"][-1]["content"]
                   or "Assistant A's Conversation" in entry["payload"]["messages"][-1]["content"]]
    assert len(mt_requests) == 16  # 8 questions, two turns
    assert {entry["payload"]["model"] for entry in mt_requests} == {"mt-judge-y"}


SWEEP_CONFIG = """\
name: benchsweep
seed: 0
world:
  model: {vocab_size: 384, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}
  warmup: {num_examples: 60, epochs: 1, batch_size: 16, max_prompt_tokens: 48, max_response_tokens: 24}
prompts: {per_iteration: 6}
selfplay:
  iterations: 1
  sampling: {num_samples: 3, max_new_tokens: 12, batch_size: 16}
training: {batch_size: 3, learning_rate: 1.0e-3, max_prompt_tokens: 48, max_response_tokens: 16}
evaluation:
  alpaca_eval2: {max_instructions: 12, sampling: {num_samples: 1, max_new_tokens: 8, batch_size: 16}}
  arena_hard: {enabled: true, max_questions: 6, bootstrap_rounds: 20, sampling: {num_samples: 1, temperature: 0, max_new_tokens: 8}}
  mt_bench: {enabled: true, max_questions: 8, max_new_tokens: 8}
sweep:
  beta: 0.1
  include_base: false
  objectives: [mt_bench/score]
  variants:
    - name: reverse_kl
      regularizers: [{name: reverse_kl}]
      coefs: [0.1]
"""


def test_sweep_logs_benchmarks_and_optimizes_mt_bench(tmp_path: Path, data_dir: Path):
    config = tmp_path / "benchsweep.yaml"
    config.write_text(SWEEP_CONFIG, encoding="utf-8")
    result = run_cli("sweep", str(config), "--workdir", str(tmp_path / "runs"), "--report-dir",
                     str(tmp_path / "report"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("benchsweep")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`rspo.role` = 'trial'")
    for name in ("arena_hard/score", "arena_hard/ci_low", "arena_hard/ci_high", "mt_bench/turn1",
                 "mt_bench/turn2", "mt_bench/score"):
        assert name in run.data.metrics, name
    assert "diversity/self_bleu" not in run.data.metrics
    assert run.data.tags["rspo.arena_hard.judge_is_proxy"] == "true"
    assert run.data.tags["rspo.mt_bench.version"].startswith("mt_bench")
    assert "at most 8 new tokens per turn" in run.data.tags["rspo.mt_bench.version"]
    study = optuna.load_study(study_name="benchsweep", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    (trial,) = study.trials
    assert trial.value == pytest.approx(run.data.metrics["mt_bench/score"])
    html = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    table = html[html.index("Other benchmarks"):]
    assert f"{run.data.metrics['mt_bench/score']:.2f}" in table
    assert "a proxy judge, not comparable with leaderboard numbers" in table
    assert "baseline gpt-4-0314" in table
    assert "Sweep objective: mt_bench/score (maximize)" in html


def test_missing_benchmark_data_stops_sweep_before_training(tmp_path: Path, data_dir: Path):
    partial = tmp_path / "data"
    partial.mkdir()
    for folder in ("alpaca_eval", "ultrafeedback", "mt_bench"):
        (partial / folder).symlink_to(data_dir / folder)
    config = tmp_path / "benchsweep.yaml"
    config.write_text(SWEEP_CONFIG, encoding="utf-8")
    result = run_cli("sweep", str(config), "--workdir", str(tmp_path / "runs"), "--data-dir", str(partial),
                     "--format", "", cwd=tmp_path)
    assert result.returncode == 2
    assert "arena_hard/arena-hard-v0.1/question.jsonl" in result.stderr
    assert not (tmp_path / "runs" / "cache" / "policy").exists()
