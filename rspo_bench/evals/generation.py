"""Benchmark answers from a policy, in the answer-file schemas that the benchmarks' own tools read.

Generation goes through a :class:`Generator` callable, which renders each prompt (an
instruction or a conversation) with the checkpoint's own chat template. The worlds'
``generate`` methods have that signature.

- **Arena-Hard**: one answer per question, in arena-hard-auto's 2024 answer schema
  (``question_id``, ``answer_id``, ``model_id``, ``choices[0].turns[0]``, ``tstamp``)
  with ``conv_metadata``: the answer's token length and its Markdown counts
  (:func:`markdown_counts`), which style control reads.
- **MT-Bench**: two turns per question. The second turn's prompt holds the first
  question, the model's first answer and the second question. Each category is
  sampled at its own temperature, 0 meaning greedy, as FastChat's ``gen_model_answer``
  does. The records follow FastChat's answer schema.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from rspo_bench.config import SamplingConfig
from rspo_bench.logs import get_logger

logger = get_logger(__name__)

_CODE_BLOCK = re.compile(r"```[^`]*```")
_HEADERS = {f"h{level}": re.compile(rf"^#{{{level}}}\s", re.MULTILINE) for level in range(1, 7)}
_ORDERED_ITEM = re.compile(r"^\s*\d+\.\s", re.MULTILINE)
_UNORDERED_ITEM = re.compile(r"^\s*[-*+]\s", re.MULTILINE)
_BOLD = {"**": re.compile(r"\*\*[^*\n]+\*\*"), "__": re.compile(r"__[^_\n]+__")}


class Generator(Protocol):
    def __call__(
        self, prompts: Sequence[Any], sampling: SamplingConfig, *, seed: int, num_samples: int | None = None
    ) -> list[list[str]]:
        """Return ``num_samples`` responses for each instruction string or conversation."""


def markdown_counts(text: str) -> dict[str, dict[str, int]]:
    """Count the Markdown headers, list items and bold spans of an answer, outside fenced code.

    Headers are lines that start with one to six ``#`` and a space, list items lines that
    start (after indentation) with ``1.`` or ``-``, ``*``, ``+`` and a space, and bold
    spans ``**text**`` or ``__text__`` within one line. The test suite checks these
    counts against the metadata of a published arena-hard-auto answer file.
    """
    prose = _CODE_BLOCK.sub("", text)
    return {
        "header_count": {name: len(pattern.findall(prose)) for name, pattern in _HEADERS.items()},
        "list_count": {
            "ordered": len(_ORDERED_ITEM.findall(prose)),
            "unordered": len(_UNORDERED_ITEM.findall(prose)),
        },
        "bold_count": {name: len(pattern.findall(prose)) for name, pattern in _BOLD.items()},
    }


def _answer_id(model: str, question_id: Any, text: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"rspo-bench/{model}/{question_id}/{text}").hex[:22]


def arena_hard_answer(
    question_id: str, model: str, text: str, *, token_len: int, tokenizer: str
) -> dict[str, Any]:
    """Return one answer record in the 2024 schema, with the metadata that style control reads.

    ``tokenizer`` names the tokenizer that counted ``token_len``. arena-hard-auto counts
    tokens with an OpenAI tokenizer, which cannot be loaded offline, so lengths counted
    with the policy's tokenizer are comparable between the policies of one sweep only.
    """
    return {
        "question_id": question_id,
        "answer_id": _answer_id(model, question_id, text),
        "model_id": model,
        "choices": [{"index": 0, "turns": [{"content": text, "token_len": token_len}]}],
        "tstamp": time.time(),
        "conv_metadata": {"token_len": token_len, "token_len_tokenizer": tokenizer, **markdown_counts(text)},
    }


def question_text(question: Mapping[str, Any], turn: int = 0) -> str:
    """Return the text of one turn of a question record (plain strings or ``{"content": ...}``)."""
    item = question["turns"][turn]
    return str(item["content"]) if isinstance(item, Mapping) else str(item)


def generate_arena_hard(
    generate: Generator,
    questions: Sequence[Mapping[str, Any]],
    sampling: SamplingConfig,
    *,
    seed: int,
    model: str,
    count_tokens: Callable[[str], int],
    tokenizer: str,
) -> list[dict[str, Any]]:
    """Answer each single-turn Arena-Hard question once and return the answer records."""
    prompts = [question_text(question) for question in questions]
    logger.info("Arena-Hard: answering %d questions as %s", len(prompts), model)
    responses = generate(prompts, sampling, seed=seed, num_samples=1)
    return [
        arena_hard_answer(
            str(question["question_id"]), model, group[0], token_len=count_tokens(group[0]), tokenizer=tokenizer
        )
        for question, group in zip(questions, responses, strict=True)
    ]


def mt_bench_conversation(question: Mapping[str, Any], first_answer: str | None = None) -> list[dict[str, str]]:
    """Return the prompt of turn 1 (no answer given) or of turn 2 (with the model's first answer)."""
    messages = [{"role": "user", "content": question_text(question, 0)}]
    if first_answer is not None:
        messages += [
            {"role": "assistant", "content": first_answer},
            {"role": "user", "content": question_text(question, 1)},
        ]
    return messages


def generate_mt_bench(
    generate: Generator,
    questions: Sequence[Mapping[str, Any]],
    temperatures: Mapping[str, float],
    *,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    model: str,
) -> list[dict[str, Any]]:
    """Answer both turns of each MT-Bench question and return FastChat answer records.

    Questions are grouped by temperature; a category missing from ``temperatures`` is
    an error that names it. Turn 2 of every question is generated after turn 1 of all
    questions in its group.
    """
    unknown = sorted({str(question["category"]) for question in questions} - set(temperatures))
    if unknown:
        raise ValueError(
            f"MT-Bench categories {unknown} have no temperature; add them to evaluation.mt_bench.temperatures"
        )
    groups: dict[float, list[Mapping[str, Any]]] = defaultdict(list)
    for question in questions:
        groups[float(temperatures[str(question["category"])])].append(question)

    answers: dict[Any, list[str]] = {}
    for temperature, group in sorted(groups.items()):
        sampling = SamplingConfig(
            num_samples=1, temperature=temperature, top_p=1.0, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        logger.info("MT-Bench: answering %d questions at temperature %g as %s", len(group), temperature, model)
        first = [responses[0] for responses in generate(
            [mt_bench_conversation(question) for question in group], sampling, seed=seed, num_samples=1
        )]
        second = [responses[0] for responses in generate(
            [mt_bench_conversation(question, answer) for question, answer in zip(group, first, strict=True)],
            sampling, seed=seed + 1, num_samples=1,
        )]
        for question, turn_1, turn_2 in zip(group, first, second, strict=True):
            answers[question["question_id"]] = [turn_1, turn_2]

    return [
        {
            "question_id": question["question_id"],
            "answer_id": _answer_id(model, question["question_id"], "\n".join(answers[question["question_id"]])),
            "model_id": model,
            "choices": [{"index": 0, "turns": answers[question["question_id"]]}],
            "tstamp": time.time(),
        }
        for question in questions
    ]
