"""LLM judges of AlpacaEval 2, Arena-Hard v0.1 and MT-Bench, built from the benchmarks' prompt files.

Every prompt, system message and verdict pattern is read from the data folder at run
time (see :mod:`rspo_bench.data`). This module contains only the rules that turn them
into requests and the judge's replies into scores:

- :class:`AlpacaEvalJudge`: the ``weighted_alpaca_eval_gpt4_turbo`` annotator of
  alpaca-eval 0.6.6. The preference is ``2 - P(m) / (P(m) + P(M))`` from the top-5
  log-probabilities of the single generated token, where "m" names output_1, so it
  lies in [1, 2] and equals ``1 + P(output_2 preferred)``.
- :class:`ArenaHardJudge`: the pairwise v0.1 judge, two games per question (game 1
  shows the baseline as assistant A, game 2 swaps the answers), written in the 2024
  judgment schema ``{question_id, model, judge, games: [{user_prompt, judgment, score}]}``.
- :class:`MTBenchJudge`: FastChat's single-answer grading with ``single-v1``, the
  reference-guided ``single-math-v1`` for math, reasoning and coding, and their
  ``-multi-turn`` variants for turn 2, written in FastChat's single-judgment schema.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from rspo_bench.data import data_file, read_jsonl
from rspo_bench.evals.judges import ChatJudgeClient, JudgeRequest, JudgeResponse
from rspo_bench.logs import get_logger

logger = get_logger(__name__)

ALPACA_EVAL_JUDGE_DIR = "alpaca_eval/judge_prompt"
ALPACA_EVAL_ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
ARENA_HARD_V01 = "arena-hard-v0.1"
ARENA_HARD_CONFIG = "arena_hard/{bench}/judge_config.yaml"
ARENA_HARD_QUESTIONS = "arena_hard/{bench}/question.jsonl"
ARENA_HARD_ANSWERS = "arena_hard/{bench}/model_answer/{model}.jsonl.gz"
MT_BENCH_JUDGE_PROMPTS = "mt_bench/judge_prompts.jsonl"
MT_BENCH_QUESTIONS = "mt_bench/question.jsonl"
MT_BENCH_REFERENCE_ANSWERS = "mt_bench/reference_answer/{model}.jsonl"

# FastChat grades these categories against a reference answer (NEED_REF_CATS in
# fastchat/llm_judge/common.py, commit 007ecd07).
MT_BENCH_REFERENCE_CATEGORIES = ("math", "reasoning", "coding")

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_CHATML_START = "<|im_start|>"
_CHATML_END = "<|im_end|>"


def fill_template(template: str, values: Mapping[str, Any]) -> str:
    """Replace each ``{name}`` placeholder of a template by ``values[name]`` in one pass.

    Unlike ``str.format``, braces that are not a placeholder stay as they are, and text
    inserted for one placeholder is never scanned for further placeholders. Values for
    names that the template does not use are ignored.
    """
    missing = sorted({name for name in _PLACEHOLDER.findall(template) if name not in values})
    if missing:
        raise ValueError(f"no value for template placeholders {missing}; got values for {sorted(values)}")
    return _PLACEHOLDER.sub(lambda match: str(values[match.group(1)]), template)


def chatml_to_messages(prompt: str) -> list[dict[str, str]]:
    """Split a ChatML prompt (``<|im_start|>role\\ncontent<|im_end|>`` blocks) into chat messages.

    The role is the first line of a block and the content the rest, stripped of
    surrounding whitespace. A role line such as ``system name=example_user`` gives
    ``{"role": "system", "name": "example_user"}``.
    """
    text = prompt.strip()
    if not text.startswith(_CHATML_START) or not text.endswith(_CHATML_END):
        raise ValueError(
            f"invalid ChatML prompt: it must start with {_CHATML_START} and end with {_CHATML_END}"
        )
    messages = []
    for block in text.split(_CHATML_START)[1:]:
        header, _, body = block.partition("\n")
        words = header.split()
        if not words:
            raise ValueError("invalid ChatML prompt: a block has no role on its first line")
        message = {"role": words[0], "content": body.split(_CHATML_END, 1)[0].strip()}
        for word in words[1:]:
            name, _, value = word.partition("=")
            if name == "name" and value:
                message["name"] = value
        messages.append(message)
    return messages


def _read_yaml(relative: str, data_dir: str | os.PathLike[str] | None) -> Any:
    path = data_file(relative, data_dir)
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# AlpacaEval 2


@dataclass(frozen=True)
class AlpacaEvalJudge:
    """AlpacaEval pairwise annotator that scores one token's log-probabilities.

    ``numerator_token`` is the label of output_1 and ``denominator_tokens`` all valid
    labels. With ``randomize_order`` (alpaca-eval's default, which the config keeps),
    :meth:`annotate` shows the outputs in swapped order for the instructions that
    :meth:`is_switched` selects and maps the preference back with ``3 - p``.
    """

    annotator: str
    prompt_template: str = field(repr=False)
    reference_judge_model: str
    temperature: float
    max_tokens: int
    top_logprobs: int
    numerator_token: str
    denominator_tokens: tuple[str, ...]
    is_binarize: bool
    randomize_order: bool = True
    seed: int = 0

    @classmethod
    def from_data(
        cls,
        data_dir: str | os.PathLike[str] | None = None,
        annotator: str = ALPACA_EVAL_ANNOTATOR,
        *,
        randomize_order: bool = True,
        seed: int = 0,
    ) -> AlpacaEvalJudge:
        """Read ``alpaca_eval/judge_prompt/<annotator>/configs.yaml`` and the prompt file it names."""
        configs = _read_yaml(f"{ALPACA_EVAL_JUDGE_DIR}/{annotator}/configs.yaml", data_dir)
        if not isinstance(configs, dict) or annotator not in configs:
            raise ValueError(f"the AlpacaEval config of {annotator!r} has no top-level key {annotator!r}")
        config = configs[annotator]
        if config.get("fn_completion_parser") != "logprob_parser":
            raise ValueError(
                f"AlpacaEval annotator {annotator!r} uses completion parser "
                f"{config.get('fn_completion_parser')!r}; only 'logprob_parser' is supported"
            )
        completion = config.get("completions_kwargs") or {}
        if not completion.get("logprobs"):
            raise ValueError(f"AlpacaEval annotator {annotator!r} does not request logprobs")
        parser = config.get("completion_parser_kwargs") or {}
        template_path = data_file(f"{ALPACA_EVAL_JUDGE_DIR}/{config['prompt_template']}", data_dir)
        return cls(
            annotator=annotator,
            prompt_template=template_path.read_text(encoding="utf-8"),
            reference_judge_model=str(completion.get("model_name", "")),
            temperature=float(completion.get("temperature", 0.0)),
            max_tokens=int(completion.get("max_tokens", 1)),
            top_logprobs=int(completion.get("top_logprobs", 5)),
            numerator_token=str(parser["numerator_token"]),
            denominator_tokens=tuple(str(token) for token in parser["denominator_tokens"]),
            is_binarize=bool(parser.get("is_binarize", True)),
            randomize_order=randomize_order,
            seed=seed,
        )

    def messages(self, instruction: str, output_1: str, output_2: str) -> list[dict[str, str]]:
        """Render the prompt for outputs in the given order and split it into chat messages.

        NOTE: alpaca-eval replaces the placeholders one after another, so an instruction or
        output that itself contains ``{output_1}`` or ``{output_2}`` is rendered differently
        there. Here each placeholder is filled once (:func:`fill_template`).
        """
        prompt = fill_template(
            self.prompt_template, {"instruction": instruction, "output_1": output_1, "output_2": output_2}
        )
        return chatml_to_messages(prompt)

    def request(self, instruction: str, output_1: str, output_2: str) -> JudgeRequest:
        """Return the judge request for outputs in the given order, with no order randomisation."""
        return JudgeRequest(
            messages=self.messages(instruction, output_1, output_2),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            top_logprobs=self.top_logprobs,
        )

    def is_switched(self, instruction: str) -> bool:
        """Return whether :meth:`annotate` shows the two outputs of this instruction in swapped order.

        alpaca-eval 0.6.6 draws ``random.Random(seed_string).choices([False, True])`` with
        the seed string ``"is_switched_outputs" + instruction + str(seed)`` and seed 0.
        The test suite checks this rule against published annotations.
        """
        if not self.randomize_order:
            return False
        seed_string = f"is_switched_outputs{instruction}{self.seed}"
        return random.Random(seed_string).choices([False, True], k=1)[0]

    def preference(self, top_logprobs: Mapping[str, float]) -> float:
        """Return the preference in [1, 2] for outputs as shown: 1 favours output_1, 2 output_2.

        It is ``2 - P(numerator) / sum of P(labels)`` over the labels among the top
        alternatives, a missing label counting as probability 0. With ``is_binarize`` it
        is 1 when the numerator label is strictly the most probable label, else 2. It is
        NaN when no label is among the alternatives.
        """
        labels = set(self.denominator_tokens) | {self.numerator_token}
        found = {token: float(value) for token, value in top_logprobs.items() if token in labels}
        if not found:
            return math.nan
        numerator = found.get(self.numerator_token, -math.inf)
        if self.is_binarize:
            others = [token for token in self.denominator_tokens if token != self.numerator_token]
            return 1.0 if all(numerator > found.get(token, -math.inf) for token in others) else 2.0
        denominator = _logsumexp([found.get(token, -math.inf) for token in self.denominator_tokens])
        return 2.0 - math.exp(numerator - denominator)

    def annotate(
        self, client: ChatJudgeClient, records: Sequence[Mapping[str, Any]], *, run: str = "alpaca_eval"
    ) -> list[dict[str, Any]]:
        """Judge records with ``instruction``, ``output_1`` and ``output_2`` fields.

        Returns copies of the records with ``annotator``, ``judge_model``, ``preference``
        (for output_1 and output_2 as given, after undoing any swap),
        ``is_switched_outputs`` and ``raw_completion`` (text and top log-probabilities
        of the first token). Identical outputs get 1.5 without a request, as in
        alpaca-eval.
        """
        requests = []
        positions = []
        switched = []
        for position, record in enumerate(records):
            instruction = str(record["instruction"])
            output_1, output_2 = str(record["output_1"]), str(record["output_2"])
            is_switched = self.is_switched(instruction)
            switched.append(is_switched)
            if output_1 == output_2:
                continue
            if is_switched:
                output_1, output_2 = output_2, output_1
            requests.append(self.request(instruction, output_1, output_2))
            positions.append(position)
        responses = dict(zip(positions, client.complete_many(requests, run=run, desc="AlpacaEval judge")))

        annotations = []
        missing_labels = 0
        for position, record in enumerate(records):
            annotation = dict(record)
            annotation["annotator"] = self.annotator
            annotation["judge_model"] = client.model
            annotation["is_switched_outputs"] = switched[position]
            response = responses.get(position)
            if response is None:
                annotation["preference"] = 1.5
                annotation["raw_completion"] = None
            else:
                alternatives = response.top_logprobs(0)
                preference = self.preference(alternatives)
                if math.isnan(preference):
                    missing_labels += 1
                elif switched[position]:
                    preference = 3.0 - preference
                annotation["preference"] = preference
                annotation["raw_completion"] = {"text": response.text, "top_logprobs": alternatives}
            annotations.append(annotation)
        if missing_labels:
            logger.warning(
                "AlpacaEval judge: %d of %d replies had none of the labels %s among their top "
                "log-probabilities; their preference is NaN",
                missing_labels,
                len(responses),
                sorted(set(self.denominator_tokens)),
            )
        return annotations


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(value - top) for value in values))


# Arena-Hard


ARENA_HARD_VERDICTS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")


def game_outcome(score: str | None, game: int, strong_weight: int = 3) -> tuple[str, int] | None:
    """Return ``(winner, weight)`` of one game from the evaluated model's side.

    ``winner`` is "model", "baseline" or "tie". Game 0 shows the baseline as
    assistant A and game 1 shows it as B. A ``>>`` verdict counts ``strong_weight``
    times (``WEIGHT = 3`` in arena-hard-auto's show_result.py). Unknown or missing
    verdicts return None.
    """
    if score not in ARENA_HARD_VERDICTS:
        return None
    if score == "A=B":
        return "tie", 1
    weight = strong_weight if ">>" in score else 1
    a_wins = score.startswith("A")
    baseline_is_a = game == 0
    return ("baseline" if a_wins == baseline_is_a else "model"), weight


@dataclass(frozen=True)
class ArenaHardJudge:
    """Arena-Hard pairwise judge of one config file (system prompt, template and verdict pattern)."""

    bench_name: str
    reference_judge_model: str
    baseline_model: str
    system_prompt: str = field(repr=False)
    prompt_template: str = field(repr=False)
    verdict_pattern: str
    temperature: float
    max_tokens: int
    number_of_judgment_attempts: int = 1
    continuation_prompt: str | None = None

    @classmethod
    def from_data(
        cls,
        data_dir: str | os.PathLike[str] | None = None,
        bench_name: str = ARENA_HARD_V01,
        *,
        continuation_prompt: str | None = None,
    ) -> ArenaHardJudge:
        """Read ``arena_hard/<bench_name>/judge_config.yaml`` (the v0.1 layout).

        ``continuation_prompt`` is the user message sent after a reply without a verdict,
        up to ``number_of_judgment_attempts`` requests per game. Without it each game gets
        one request.

        NOTE: arena-hard-auto sends a fixed follow-up message of its own code, which the
        data folder does not contain, so by default a reply without a verdict keeps score None.
        """
        config = _read_yaml(ARENA_HARD_CONFIG.format(bench=bench_name), data_dir)
        templates = config.get("prompt_template")
        if isinstance(templates, str):
            templates = [templates]
        if not templates or len(templates) != 1:
            raise ValueError(
                f"{bench_name} judge config: expected one prompt template for single-turn questions, "
                f"got {0 if not templates else len(templates)}"
            )
        if not config.get("pairwise", True) or not config.get("system_prompt"):
            raise ValueError(f"{bench_name} judge config: expected a pairwise judge with a system_prompt")
        return cls(
            bench_name=bench_name,
            reference_judge_model=str(config.get("judge_model", "")),
            baseline_model=str(config["baseline_model"]),
            system_prompt=str(config["system_prompt"]),
            prompt_template=str(templates[0]),
            verdict_pattern=str(config["regex_pattern"]),
            temperature=float(config.get("temperature", 0.0)),
            max_tokens=int(config.get("max_tokens", 4096)),
            number_of_judgment_attempts=int(config.get("number_of_judgment_attempts", 1)),
            continuation_prompt=continuation_prompt,
        )

    def user_prompt(self, question: str, answer_a: str, answer_b: str) -> str:
        values = {"question_1": question, "answer_1": answer_a, "answer_2": answer_b}
        return fill_template(self.prompt_template, values)

    def messages(self, question: str, answer_a: str, answer_b: str) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.user_prompt(question, answer_a, answer_b)},
        ]

    def game_messages(self, question: str, baseline_answer: str, answer: str) -> list[list[dict[str, str]]]:
        """Return the messages of game 1 (baseline as A) and game 2 (baseline as B)."""
        return [
            self.messages(question, baseline_answer, answer),
            self.messages(question, answer, baseline_answer),
        ]

    def parse_verdict(self, judgment: str) -> tuple[str | None, bool]:
        """Return ``(verdict, ask_again)`` of a judge reply.

        The verdict is the single distinct label that the pattern finds, stripped of
        newlines. No label gives ``(None, True)``: the judge may add it when asked to
        continue. Two or more distinct labels give ``(None, False)``.
        """
        matches = [match for match in re.findall(self.verdict_pattern, judgment) if match != ""]
        distinct = set(matches)
        if not distinct:
            return None, True
        if len(distinct) == 1:
            return matches[0].strip("\n"), False
        return None, False

    def judge(
        self,
        client: ChatJudgeClient,
        questions: Sequence[Mapping[str, Any]],
        answers: Mapping[Any, str],
        model: str,
        baseline_answers: Mapping[Any, str],
        *,
        run: str = "arena_hard",
    ) -> list[dict[str, Any]]:
        """Judge a model's answers against the baseline answers, two games per question.

        ``questions`` are records of ``question.jsonl`` (``question_id`` and ``turns``);
        ``answers`` and ``baseline_answers`` map a question id to the answer text.
        Questions without an answer are skipped with a warning. The records follow
        arena-hard-auto's 2024 judgment schema, with the client's model as ``judge``.
        """
        games: list[dict[str, Any]] = []
        records = []
        skipped = []
        for question in questions:
            question_id = question["question_id"]
            if question_id not in answers or question_id not in baseline_answers:
                skipped.append(question_id)
                continue
            text = _single_turn(question)
            record = {"question_id": question_id, "model": model, "judge": client.model, "games": []}
            for messages in self.game_messages(text, baseline_answers[question_id], answers[question_id]):
                game = {"messages": messages, "judgment": "", "score": None, "ask_again": True}
                record["games"].append(game)
                games.append(game)
            records.append(record)
        if skipped:
            logger.warning(
                "Arena-Hard judge: %d questions have no answer of %s or of the baseline and are skipped: %s",
                len(skipped),
                model,
                ", ".join(str(question_id) for question_id in skipped[:10]),
            )

        self._play(client, games, run)
        for record in records:
            record["games"] = [
                {
                    "user_prompt": game["messages"][1]["content"],
                    "judgment": game["judgment"],
                    "score": game["score"],
                }
                for game in record["games"]
            ]
        unparsed = sum(game["score"] is None for record in records for game in record["games"])
        if unparsed:
            logger.warning("Arena-Hard judge: %d of %d games have no verdict", unparsed, 2 * len(records))
        return records

    def _play(self, client: ChatJudgeClient, games: list[dict[str, Any]], run: str) -> None:
        """Run the judge on all games, with up to ``number_of_judgment_attempts`` requests per game."""
        attempts = max(1, self.number_of_judgment_attempts) if self.continuation_prompt else 1
        pending = games
        for attempt in range(attempts):
            if attempt > 0:
                for game in pending:
                    follow_up = {"role": "user", "content": self.continuation_prompt}
                    game["messages"] = [*game["messages"], follow_up]
            requests = [
                JudgeRequest(game["messages"], temperature=self.temperature, max_tokens=self.max_tokens)
                for game in pending
            ]
            description = f"Arena-Hard judge, attempt {attempt + 1}"
            responses = client.complete_many(requests, run=run, desc=description)
            for game, response in zip(pending, responses):
                game["judgment"] = response.text if attempt == 0 else f"{game['judgment']}\n{response.text}"
                game["messages"] = [*game["messages"], {"role": "assistant", "content": response.text}]
                game["score"], game["ask_again"] = self.parse_verdict(game["judgment"])
            pending = [game for game in pending if game["ask_again"]]
            if not pending:
                break


def _single_turn(question: Mapping[str, Any]) -> str:
    turns = question.get("turns") or []
    if len(turns) != 1:
        raise ValueError(
            f"Arena-Hard question {question.get('question_id')!r} has {len(turns)} turns; only single-turn "
            f"questions are supported"
        )
    turn = turns[0]
    return turn["content"] if isinstance(turn, Mapping) else str(turn)


def load_arena_hard_questions(
    data_dir: str | os.PathLike[str] | None = None, bench_name: str = ARENA_HARD_V01
) -> list[dict[str, Any]]:
    """Return the questions of ``arena_hard/<bench_name>/question.jsonl`` (2024 schema)."""
    return read_jsonl(data_file(ARENA_HARD_QUESTIONS.format(bench=bench_name), data_dir))


def answers_by_question(records: Sequence[Mapping[str, Any]], turn: int = 0) -> dict[Any, str]:
    """Map question ids to the answer text of one turn in FastChat/Arena-Hard answer records.

    Each record has ``choices[0]["turns"]``, whose items are strings (MT-Bench) or
    ``{"content": ...}`` objects (Arena-Hard v0.1).
    """
    answers = {}
    for record in records:
        item = record["choices"][0]["turns"][turn]
        answers[record["question_id"]] = item["content"] if isinstance(item, Mapping) else str(item)
    return answers


def load_arena_hard_baseline(
    data_dir: str | os.PathLike[str] | None = None,
    bench_name: str = ARENA_HARD_V01,
    model: str = "gpt-4-0314",
) -> dict[Any, str]:
    """Return the baseline model's answers of the data folder by question id."""
    path = data_file(ARENA_HARD_ANSWERS.format(bench=bench_name, model=model), data_dir)
    return answers_by_question(read_jsonl(path))


# MT-Bench


@dataclass(frozen=True)
class MTBenchPrompt:
    """One record of FastChat's ``judge_prompts.jsonl``."""

    name: str
    type: str
    system_prompt: str
    prompt_template: str
    output_format: str


_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(judgment: str) -> int | float:
    """Return the rating of a single-answer judgment, or -1 when it has none.

    The first ``[[number]]`` counts, else the first ``[number]``, as in FastChat. An
    integer string gives an int and a decimal one a float.
    """
    match = _RATING.search(judgment) or _RATING_FALLBACK.search(judgment)
    if match is None:
        return -1
    value = match.group(1)
    return float(value) if "." in value else int(value)


class MTBenchJudge:
    """MT-Bench single-answer grader: prompt choice per category and turn, and rating parsing.

    ``reference_answers`` maps a question id to the reference answer of each turn.
    ``temperature`` 0 and ``max_tokens`` 2048 are FastChat's settings for a GPT-4 judge
    (run_judge_single in fastchat/llm_judge/common.py, commit 007ecd07).
    """

    def __init__(
        self,
        prompts: Mapping[str, MTBenchPrompt],
        reference_answers: Mapping[Any, Sequence[str]],
        *,
        temperature: float = 0.0,
        max_tokens: int = 2048,
    ):
        for name in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"):
            if name not in prompts:
                raise ValueError(f"MT-Bench judge prompts lack {name!r}; got {sorted(prompts)}")
        self.prompts = dict(prompts)
        self.reference_answers = {key: list(value) for key, value in reference_answers.items()}
        self.temperature = temperature
        self.max_tokens = max_tokens

    @classmethod
    def from_data(
        cls,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        reference_model: str = "gpt-4",
        **settings: Any,
    ) -> MTBenchJudge:
        """Read the judge prompts and the reference answers of ``reference_model`` from the data folder."""
        prompts = {}
        for record in read_jsonl(data_file(MT_BENCH_JUDGE_PROMPTS, data_dir)):
            prompts[record["name"]] = MTBenchPrompt(
                name=record["name"],
                type=record["type"],
                system_prompt=record["system_prompt"],
                prompt_template=record["prompt_template"],
                output_format=record["output_format"],
            )
        reference_path = data_file(MT_BENCH_REFERENCE_ANSWERS.format(model=reference_model), data_dir)
        references = mt_bench_answer_turns(read_jsonl(reference_path))
        return cls(prompts, references, **settings)

    def prompt_for(self, category: str, turn: int) -> MTBenchPrompt:
        """Return ``single(-math)-v1(-multi-turn)`` for a question category and turn 1 or 2."""
        if turn not in (1, 2):
            raise ValueError(f"invalid MT-Bench turn {turn}: expected 1 or 2")
        name = "single-math-v1" if category in MT_BENCH_REFERENCE_CATEGORIES else "single-v1"
        if turn == 2:
            name += "-multi-turn"
        return self.prompts[name]

    def user_prompt(
        self, question: Mapping[str, Any], answer_turns: Sequence[str], turn: int
    ) -> tuple[MTBenchPrompt, str]:
        """Return the judge prompt and the rendered user message for one question, answer and turn."""
        prompt = self.prompt_for(question["category"], turn)
        turns = question["turns"]
        if len(answer_turns) < turn:
            raise ValueError(
                f"MT-Bench question {question['question_id']}: the answer has {len(answer_turns)} turns, "
                f"turn {turn} requested"
            )
        if turn == 1:
            values: dict[str, Any] = {"question": turns[0], "answer": answer_turns[0]}
        else:
            values = {
                "question_1": turns[0],
                "question_2": turns[1],
                "answer_1": answer_turns[0],
                "answer_2": answer_turns[1],
            }
        if question["category"] in MT_BENCH_REFERENCE_CATEGORIES:
            reference = self.reference_answers.get(question["question_id"])
            if reference is None:
                raise ValueError(
                    f"MT-Bench question {question['question_id']} ({question['category']}) needs a reference "
                    f"answer, but the reference answers file has none for it"
                )
            values["ref_answer_1"] = reference[0]
            values["ref_answer_2"] = reference[1] if len(reference) > 1 else ""
        return prompt, fill_template(prompt.prompt_template, values)

    def request(self, question: Mapping[str, Any], answer_turns: Sequence[str], turn: int) -> JudgeRequest:
        prompt, user_prompt = self.user_prompt(question, answer_turns, turn)
        return JudgeRequest(
            messages=[
                {"role": "system", "content": prompt.system_prompt},
                {"role": "user", "content": user_prompt},
            ],
            temperature=self.temperature,
            max_tokens=self.max_tokens,
        )

    def judge(
        self,
        client: ChatJudgeClient,
        questions: Sequence[Mapping[str, Any]],
        answers: Mapping[Any, Sequence[str]],
        model: str,
        *,
        turns: Sequence[int] = (1, 2),
        run: str = "mt_bench",
    ) -> list[dict[str, Any]]:
        """Grade a model's answers (question id to answer turns) and return FastChat single-judgment records.

        Each record is ``{question_id, model, judge: [judge_model, prompt_name],
        user_prompt, judgment, score, turn, tstamp}``, with score -1 when the judgment
        has no rating and ``tstamp`` the time the judgment was fetched.
        """
        jobs: list[tuple[Mapping[str, Any], int, MTBenchPrompt, str]] = []
        requests = []
        skipped = []
        for turn in turns:
            for question in questions:
                answer_turns = answers.get(question["question_id"])
                if answer_turns is None:
                    skipped.append(question["question_id"])
                    continue
                prompt, user_prompt = self.user_prompt(question, answer_turns, turn)
                jobs.append((question, turn, prompt, user_prompt))
                requests.append(self.request(question, answer_turns, turn))
        if skipped:
            logger.warning(
                "MT-Bench judge: %d question turns have no answer of %s and are skipped", len(skipped), model
            )

        responses: list[JudgeResponse] = client.complete_many(requests, run=run, desc="MT-Bench judge")
        records = []
        for (question, turn, prompt, user_prompt), response in zip(jobs, responses):
            records.append(
                {
                    "question_id": question["question_id"],
                    "model": model,
                    "judge": [client.model, prompt.name],
                    "user_prompt": user_prompt,
                    "judgment": response.text,
                    "score": parse_rating(response.text),
                    "turn": turn,
                    "tstamp": response.created_at,
                }
            )
        unrated = sum(record["score"] == -1 for record in records)
        if unrated:
            logger.warning(
                "MT-Bench judge: %d of %d judgments have no [[rating]]; score -1", unrated, len(records)
            )
        return records


def load_mt_bench_questions(data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Return the 80 MT-Bench questions ``{question_id, category, turns}``."""
    return read_jsonl(data_file(MT_BENCH_QUESTIONS, data_dir))


def mt_bench_answer_turns(records: Sequence[Mapping[str, Any]]) -> dict[Any, list[str]]:
    """Map question ids to the answer turns of FastChat answer records."""
    answers = {}
    for record in records:
        answers[record["question_id"]] = [str(turn) for turn in record["choices"][0]["turns"]]
    return answers
