"""Arena-Hard, MT-Bench, ArmoRM and diversity evaluation of one policy, with cached stages.

Each benchmark writes its answers and judgments in the benchmark's own file schema and
scores them with the same code as ``rspo-bench score``, which reproduces the published
leaderboards from published judgments. Answers, judgments and reward scores are stage
cache entries, so a rerun, or a run killed halfway, regenerates and re-judges nothing
that finished.

Every result carries tags that name its judge, benchmark version and baseline, and
whether the judge is a proxy (:func:`benchmark_tags`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from rspo_bench.cache import stable_hash
from rspo_bench.data import data_file, read_jsonl
from rspo_bench.evals import armorm, diversity, generation, proxy_judges
from rspo_bench.evals.arena_hard import ArenaHardInputError, score_arena_hard
from rspo_bench.evals.judge_prompts import (
    ARENA_HARD_V01,
    ArenaHardJudge,
    MTBenchJudge,
    answers_by_question,
    load_arena_hard_baseline,
    load_arena_hard_questions,
    load_mt_bench_questions,
    mt_bench_answer_turns,
)
from rspo_bench.evals.mt_bench import score_mt_bench
from rspo_bench.logs import get_logger

logger = get_logger(__name__)

BENCHMARKS = ("alpaca_eval2", "arena_hard", "mt_bench", "armorm", "diversity")
EXTRA_BENCHMARKS = BENCHMARKS[1:]
MT_BENCH_PROXY_REFERENCE = "gpt-4"
MT_BENCH_VERSION = "mt_bench (FastChat llm_judge, single-answer grading)"
DIVERSITY_VERSION = "Self-BLEU and distinct-n over AlpacaEval 2.0 instructions"


@dataclass
class BenchmarkResult:
    """Metrics of one benchmark (MLflow names), their tags and JSON artifacts by file name."""

    benchmark: str
    metrics: dict[str, float]
    tags: dict[str, str]
    artifacts: dict[str, Any] = field(default_factory=dict)


def spread(total: int, count: int | None) -> list[int]:
    """Return ``count`` indices spread evenly over ``total`` items (all of them for None)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted({int(round(value)) for value in np.linspace(0, total - 1, count)})


def benchmark_tags(benchmark: str, *, judge: str, is_proxy: bool, version: str, baseline: str) -> dict[str, str]:
    """Return the MLflow tags ``rspo.<benchmark>.judge|judge_is_proxy|version|baseline``."""
    return {
        f"rspo.{benchmark}.judge": judge,
        f"rspo.{benchmark}.judge_is_proxy": "true" if is_proxy else "false",
        f"rspo.{benchmark}.version": version,
        f"rspo.{benchmark}.baseline": baseline,
    }


def alpaca_eval2_judge(world: Any) -> tuple[str, bool]:
    """Return the AlpacaEval 2.0 judge's name and whether it is a proxy, from ``evaluation.judge``."""
    from rspo_bench.evals.judge_prompts import ALPACA_EVAL_ANNOTATOR

    judge = world.config.evaluation.judge
    if judge.kind == "llm":
        return f"{ALPACA_EVAL_ANNOTATOR} ({judge.model})", False
    return world.judge.name, True


def alpaca_eval2_tags(world: Any) -> dict[str, str]:
    """Return the ``rspo.alpaca_eval2.*`` tags of a world's AlpacaEval 2.0 evaluation."""
    settings = world.config.evaluation.alpaca_eval2
    count = settings.max_instructions or 805
    judge, is_proxy = alpaca_eval2_judge(world)
    return benchmark_tags(
        "alpaca_eval2", judge=judge, is_proxy=is_proxy,
        version=f"AlpacaEval 2.0, {count} of 805 instructions, at most {settings.sampling.max_new_tokens} new "
                f"tokens; LC: alpaca_eval 0.6.6 length_controlled_v1",
        baseline="gpt4_1106_preview",
    )


class PolicyEvaluator:
    """Runs the benchmarks that ``world.config.evaluation`` enables on one policy of a world.

    ``world`` is a tiny or hf world (``load_policy``, ``generate``, ``judge``, ``cache``,
    ``config``, ``data_dir``); ``generator`` is the model name written into answer and
    judgment files. The policy is loaded only when some answers are not cached.
    """

    def __init__(self, world: Any, policy: Any, *, generator: str) -> None:
        self.world = world
        self.policy = policy
        self.generator = generator
        self.settings = world.config.evaluation
        self._model: tuple[Any, Any] | None = None
        self._clients: dict[str, Any] = {}

    # Shared pieces -------------------------------------------------------------

    def _loaded(self) -> tuple[Any, Any]:
        if self._model is None:
            self._model = self.world.load_policy(self.policy)
        return self._model

    def _generate(self, prompts, sampling, *, seed: int, num_samples: int | None = None) -> list[list[str]]:
        model, tokenizer = self._loaded()
        return self.world.generate(model, tokenizer, prompts, sampling, seed=seed, num_samples=num_samples)

    def _count_tokens(self, text: str) -> int:
        _, tokenizer = self._loaded()
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _cached(self, stage: str, inputs: dict[str, Any], compute: Callable[[], Any]) -> tuple[str, Any]:
        """Return (key, value) of a JSON stage, computing and storing it on a miss."""
        cache = self.world.cache
        key = cache.key(stage, inputs)
        return key, cache.compute_json(stage, key, inputs, compute)

    def judge_model(self, benchmark: str) -> str:
        """Return the LLM judge of a benchmark: its own ``judge_model``, else ``evaluation.judge.model``."""
        return getattr(self.settings, benchmark).judge_model or self.settings.judge.model

    def llm_client(self, benchmark: str):
        from rspo_bench.evals.judges import ChatJudgeClient

        model = self.judge_model(benchmark)
        if model not in self._clients:
            judge = self.settings.judge
            self._clients[model] = ChatJudgeClient(
                judge.base_url, model, api_key_env=judge.api_key_env, max_concurrency=judge.max_concurrency
            )
        return self._clients[model]

    @property
    def uses_llm_judge(self) -> bool:
        return self.settings.judge.kind == "llm"

    def judge_identity(self, benchmark: str) -> dict[str, Any]:
        """Return what the judgments depend on besides the answers: the judge and its settings."""
        if self.uses_llm_judge:
            return {"kind": "llm", "model": self.judge_model(benchmark), "base_url": self.settings.judge.base_url}
        return {"kind": "proxy", "oracle": self.world.judge.fingerprint()}

    def judge_name(self, benchmark: str) -> str:
        if self.uses_llm_judge:
            return self.judge_model(benchmark)
        return proxy_judges.proxy_name(self.world.judge)

    def enabled(self) -> list[str]:
        return [name for name in EXTRA_BENCHMARKS if getattr(self.settings, name).enabled]

    def run(self, alpaca_outputs: Sequence[dict[str, Any]] | None = None) -> list[BenchmarkResult]:
        """Run every enabled benchmark besides AlpacaEval-2, whose outputs ArmoRM scores."""
        results = []
        for name in self.enabled():
            logger.info("%s: starting %s", self.generator, name)
            if name == "armorm":
                if not alpaca_outputs:
                    raise ValueError(
                        "ArmoRM scores the AlpacaEval-2 outputs; enable evaluation.alpaca_eval2 as well"
                    )
                results.append(self.armorm(alpaca_outputs))
            else:
                results.append(getattr(self, name)())
            logger.info("%s: finished %s: %s", self.generator, name, _summary(results[-1].metrics))
        return results

    # Arena-Hard ----------------------------------------------------------------

    def arena_hard(self) -> BenchmarkResult:
        settings = self.settings.arena_hard
        data_dir = self.world.data_dir
        questions = load_arena_hard_questions(data_dir, ARENA_HARD_V01)
        questions = [questions[index] for index in spread(len(questions), settings.max_questions)]
        seed = self.world.config.seed * 1000 + 998
        answer_inputs = {
            "policy": self.policy.key,
            "questions": stable_hash([question["question_id"] for question in questions]),
            "generator": self.generator,
            **self.world.sampling_inputs(settings.sampling, seed),
        }
        answers_key, answers = self._cached("eval_arena_hard_answers", answer_inputs, lambda: (
            generation.generate_arena_hard(
                self._generate, questions, settings.sampling, seed=seed, model=self.generator,
                count_tokens=self._count_tokens, tokenizer=f"policy tokenizer ({self.generator})",
            )
        ))
        baseline_answers = load_arena_hard_baseline(data_dir, ARENA_HARD_V01, settings.baseline)
        model_answers = answers_by_question(answers)

        def judge() -> list[dict[str, Any]]:
            if self.uses_llm_judge:
                return ArenaHardJudge.from_data(data_dir, ARENA_HARD_V01).judge(
                    self.llm_client("arena_hard"), questions, model_answers, self.generator, baseline_answers
                )
            return proxy_judges.judge_arena_hard(
                self.world.judge, questions, model_answers, self.generator, baseline_answers
            )

        judgment_inputs = {
            "answers": answers_key, "judge": self.judge_identity("arena_hard"), "baseline": settings.baseline,
        }
        _, judgments = self._cached("eval_arena_hard_judgments", judgment_inputs, judge)
        with tempfile.TemporaryDirectory(prefix="rspo-arena-hard-") as folder:
            judgments_path = _write_jsonl(Path(folder) / "judgments" / f"{self.generator_file}.jsonl", judgments)
            answers_path = _write_jsonl(Path(folder) / "answers" / f"{self.generator_file}.jsonl", answers)
            try:
                scores = score_arena_hard(
                    judgments_path.parent, baseline=settings.baseline, version="v0.1",
                    rounds=settings.bootstrap_rounds, seed=self.world.config.seed, answer_paths=[answers_path],
                    data_dir=data_dir,
                )
            except ArenaHardInputError as error:
                raise ValueError(
                    f"Arena-Hard: the judgments of {self.judge_name('arena_hard')} cannot be scored: {error}. "
                    f"Check that the judge model ends its reply with a verdict such as [[A>B]]; its replies are "
                    f"in the stage cache entry eval_arena_hard_judgments"
                ) from error
        entry = next(item for item in scores["models"] if item["model"] == self.generator)
        metrics = {
            "arena_hard/score": float(entry["score"]),
            "arena_hard/ci_low": float(entry["ci_low"]),
            "arena_hard/ci_high": float(entry["ci_high"]),
            "arena_hard/n_questions": float(len(questions)),
            "arena_hard/n_unparsed_games": float(entry["n_unparsed_games"]),
        }
        if entry.get("avg_tokens") is not None:
            metrics["arena_hard/avg_tokens"] = float(entry["avg_tokens"])
        tags = benchmark_tags(
            "arena_hard", judge=self.judge_name("arena_hard"), is_proxy=not self.uses_llm_judge,
            version=f"{ARENA_HARD_V01} ({len(questions)} of 500 questions; temperature "
                    f"{settings.sampling.temperature:g}, at most {settings.sampling.max_new_tokens} new tokens; "
                    f"Bradley-Terry, {settings.bootstrap_rounds} bootstrap rounds)",
            baseline=settings.baseline,
        )
        return BenchmarkResult("arena_hard", metrics, tags, {
            "eval/arena_hard_answers.jsonl": answers, "eval/arena_hard_judgments.jsonl": judgments,
            "eval/arena_hard_scores.json": scores,
        })

    @property
    def generator_file(self) -> str:
        return self.generator.replace("/", "__")

    # MT-Bench ------------------------------------------------------------------

    def mt_bench(self) -> BenchmarkResult:
        settings = self.settings.mt_bench
        data_dir = self.world.data_dir
        questions = load_mt_bench_questions(data_dir)
        questions = [questions[index] for index in spread(len(questions), settings.max_questions)]
        seed = self.world.config.seed * 1000 + 997
        answer_inputs = {
            "policy": self.policy.key,
            "questions": stable_hash([question["question_id"] for question in questions]),
            "generator": self.generator,
            "temperatures": settings.temperatures,
            "max_new_tokens": settings.max_new_tokens,
            "seed": seed,
        }
        answers_key, answers = self._cached("eval_mt_bench_answers", answer_inputs, lambda: (
            generation.generate_mt_bench(
                self._generate, questions, settings.temperatures, max_new_tokens=settings.max_new_tokens,
                batch_size=settings.batch_size, seed=seed, model=self.generator,
            )
        ))
        model_answers = mt_bench_answer_turns(answers)

        def judge() -> list[dict[str, Any]]:
            if self.uses_llm_judge:
                client = self.llm_client("mt_bench")
                return MTBenchJudge.from_data(data_dir).judge(client, questions, model_answers, self.generator)
            references = mt_bench_answer_turns(read_jsonl(
                data_file(f"mt_bench/model_answer/{MT_BENCH_PROXY_REFERENCE}.jsonl", data_dir)
            ))
            return proxy_judges.judge_mt_bench(
                self.world.judge, questions, model_answers, self.generator, references,
                reference_model=MT_BENCH_PROXY_REFERENCE,
            )

        judgment_inputs = {"answers": answers_key, "judge": self.judge_identity("mt_bench")}
        _, judgments = self._cached("eval_mt_bench_judgments", judgment_inputs, judge)
        with tempfile.TemporaryDirectory(prefix="rspo-mt-bench-") as folder:
            scores = score_mt_bench(_write_jsonl(Path(folder) / "judgments.jsonl", judgments))
        scores["file"] = "eval/mt_bench_judgments.jsonl"
        entry = scores["models"][0]
        metrics = {
            "mt_bench/turn1": float(entry["turn_1"]),
            "mt_bench/turn2": float(entry["turn_2"]),
            "mt_bench/score": float(entry["overall"]),
            "mt_bench/n_questions": float(len(questions)),
            "mt_bench/n_unparsed": float(entry["n_unparsed"]),
        }
        if self.uses_llm_judge:
            baseline = "none (single-answer grading; math, reasoning and coding graded against GPT-4 references)"
        else:
            baseline = f"{MT_BENCH_PROXY_REFERENCE} answers (proxy rating 1 + 9 * P(answer preferred))"
        tags = benchmark_tags(
            "mt_bench", judge=self.judge_name("mt_bench"), is_proxy=not self.uses_llm_judge,
            version=f"{MT_BENCH_VERSION}: {len(questions)} of 80 questions, at most {settings.max_new_tokens} "
                    f"new tokens per turn", baseline=baseline,
        )
        return BenchmarkResult("mt_bench", metrics, tags, {
            "eval/mt_bench_answers.jsonl": answers, "eval/mt_bench_judgments.jsonl": judgments,
            "eval/mt_bench_scores.json": scores,
        })

    # ArmoRM --------------------------------------------------------------------

    def armorm(self, alpaca_outputs: Sequence[dict[str, Any]]) -> BenchmarkResult:
        settings = self.settings.armorm
        instructions = [record["instruction"] for record in alpaca_outputs]
        outputs = [record["output"] for record in alpaca_outputs]
        inputs = {
            "model": settings.model_name_or_path, "revision": settings.revision,
            "answers": stable_hash([instructions, outputs]),
        }

        def score() -> dict[str, Any]:
            from rspo_bench.preference.reward_model import RewardModelJudge

            judge = RewardModelJudge.from_pretrained(
                settings.model_name_or_path, revision=settings.revision,
                trust_remote_code=settings.trust_remote_code, batch_size=settings.batch_size,
            )
            metrics, records = armorm.score_answers(judge, instructions, outputs)
            return {"metrics": metrics, "records": records}

        _, value = self._cached("eval_armorm", inputs, score)
        model = settings.model_name_or_path + (f"@{settings.revision}" if settings.revision else "")
        tags = benchmark_tags(
            "armorm", judge=model, is_proxy=False,
            version=f"reward-model scores of the {len(outputs)} AlpacaEval 2.0 outputs",
            baseline="none (absolute reward)",
        )
        return BenchmarkResult("armorm", dict(value["metrics"]), tags, {"eval/armorm_scores.json": value["records"]})

    # Diversity -----------------------------------------------------------------

    def diversity(self) -> BenchmarkResult:
        settings = self.settings.diversity
        items = self.world.alpaca_instructions
        indices = spread(len(items), settings.max_prompts)
        instructions = [items[index]["instruction"] for index in indices]
        inputs = {
            "policy": self.policy.key, "instructions": stable_hash(instructions),
            **self.world.sampling_inputs(settings.sampling, settings.seed),
        }
        _, samples = self._cached("eval_diversity_samples", inputs, lambda: self._generate(
            instructions, settings.sampling, seed=settings.seed
        ))
        bleu = diversity.self_bleu(samples, max_n=settings.max_ngram, num_samples=settings.sampling.num_samples)
        metrics = {"diversity/self_bleu": float(bleu["self_bleu"]), "diversity/n_prompts": float(len(samples))}
        for n in settings.distinct:
            metrics[f"diversity/distinct_{n}"] = float(diversity.distinct_n(samples, n))
        tags = benchmark_tags(
            "diversity", judge="none (n-gram statistics)", is_proxy=False,
            version=f"{DIVERSITY_VERSION}: {len(samples)} of 805 instructions, "
                    f"{settings.sampling.num_samples} samples, BLEU-{settings.max_ngram} smoothing method1, "
                    f"seed {settings.seed}, {bleu['tokenizer']} tokens",
            baseline="none",
        )
        records = [
            {"instruction": text, "samples": group, "self_bleu": score}
            for text, group, score in zip(instructions, samples, bleu["per_prompt"], strict=True)
        ]
        return BenchmarkResult("diversity", metrics, tags, {"eval/diversity_samples.json": records})


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def _summary(metrics: dict[str, float]) -> str:
    reported = [(name, value) for name, value in metrics.items() if not name.split("/")[-1].startswith("n_")]
    return ", ".join(f"{name} {value:.3g}" for name, value in reported[:4])
