"""MT-Bench scores from FastChat single-answer judgments.

A judgment file has one JSON object per line: ``{question_id, model, judge: [judge_model,
prompt_name], score, turn, ...}``, where ``score`` is the judge's 1-10 rating of one turn
and -1 marks a judgment whose rating could not be parsed. The prompt name varies with the
turn and the question category (``single-v1``, ``single-math-v1-multi-turn``, ...), so only
the judge model must be the same on every row.

Scores follow FastChat's ``show_result.py`` (``display_result_single``): rows with score -1
are dropped, turn 1 and turn 2 are averaged per model, and the overall score is the mean
of all remaining rows of both turns pooled. It equals the mean of the two turn scores
only when both turns keep the same number of rows.
"""

from __future__ import annotations

import math
import numbers
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pandas as pd

from rspo_bench.data import read_jsonl
from rspo_bench.logs import get_logger

logger = get_logger(__name__)

UNPARSED_SCORE = -1
TURNS = (1, 2)
_MAX_LISTED = 10


class JudgmentFileError(ValueError):
    """An MT-Bench judgment file has invalid, duplicate or inconsistent rows; the message names them."""


def _listed(items: list[str]) -> str:
    text = "; ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        text += f"; and {len(items) - _MAX_LISTED} more"
    return text


def _parse_row(record: dict[str, Any], where: str) -> tuple[dict[str, Any] | None, list[str]]:
    problems = []
    for field in ("question_id", "model", "judge", "score", "turn"):
        if field not in record:
            problems.append(f"{where}: missing field {field!r}")
    if problems:
        return None, problems

    question_id = record["question_id"]
    if isinstance(question_id, bool) or not isinstance(question_id, (int, str)):
        problems.append(f"{where}: question_id must be an integer or a string, got {question_id!r}")
    model = record["model"]
    if not isinstance(model, str) or not model:
        problems.append(f"{where}: model must be a non-empty string, got {model!r}")
    judge = record["judge"]
    if not (isinstance(judge, list) and len(judge) == 2 and all(isinstance(item, str) for item in judge)):
        problems.append(f"{where}: judge must be [judge_model, prompt_name], got {judge!r}")
    score = record["score"]
    if isinstance(score, bool) or not isinstance(score, numbers.Real) or not math.isfinite(score):
        problems.append(f"{where}: score must be a number (-1 when unparsed), got {score!r}")
    turn = record["turn"]
    if isinstance(turn, bool) or turn not in TURNS:
        problems.append(f"{where}: turn must be 1 or 2, got {turn!r}")
    if problems:
        return None, problems
    row = {
        "question_id": str(question_id),
        "model": model,
        "judge_model": judge[0],
        "prompt_name": judge[1],
        "score": float(score),
        "turn": int(turn),
        "record": where,
    }
    return row, []


def read_single_judgments(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and check a FastChat single-answer judgment file (JSONL, optionally gzip-compressed).

    Returns one row per record with the columns question_id (as a string), model,
    judge_model, prompt_name, score, turn and record (``file record N``, counting from 1).
    Raises :class:`JudgmentFileError` naming the records with missing or invalid fields,
    the duplicated (question, model, turn) rows and the judge models when they differ.
    """
    path = Path(path)
    records = read_jsonl(path)
    if not records:
        raise JudgmentFileError(f"{path}: no judgments found")

    rows, problems = [], []
    for number, record in enumerate(records, start=1):
        row, row_problems = _parse_row(record, f"{path.name} record {number}")
        problems.extend(row_problems)
        if row is not None:
            rows.append(row)
    if problems:
        raise JudgmentFileError(f"{path}: invalid judgment rows: {_listed(problems)}")

    first_seen: dict[tuple[str, str, int], str] = {}
    duplicates = []
    for row in rows:
        key = (row["question_id"], row["model"], row["turn"])
        if key in first_seen:
            question_id, model, turn = key
            duplicates.append(
                f"{row['record']} repeats {first_seen[key]} "
                f"(question {question_id}, model {model}, turn {turn})"
            )
        else:
            first_seen[key] = row["record"]
    if duplicates:
        raise JudgmentFileError(
            f"{path}: duplicate (question, model, turn) rows: {_listed(duplicates)}. Keep one judgment per "
            f"question, model and turn."
        )

    judges: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        judges[row["judge_model"]].append(row["record"])
    if len(judges) > 1:
        described = [
            f"{judge!r} on {len(where)} rows (first: {where[0]})" for judge, where in sorted(judges.items())
        ]
        raise JudgmentFileError(
            f"{path}: judgments come from more than one judge model: {_listed(described)}. Score each "
            f"judge's rows in a separate file."
        )
    return pd.DataFrame(rows)


def _mean_or_nan(values: pd.Series) -> float:
    return float(values.mean()) if len(values) else math.nan


def score_mt_bench(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Compute each model's MT-Bench turn-1, turn-2 and overall score from single-answer judgments.

    Returns ``{"file", "judge", "models": [...]}`` with one entry per model, sorted by
    overall score (highest first): ``model``, ``turn_1``, ``turn_2``, ``overall``, the
    numbers of scored rows ``n_turn_1`` and ``n_turn_2``, and ``n_unparsed``, the rows with
    score -1 that were dropped. A turn without scored rows has a NaN score.
    """
    frame = read_single_judgments(path)
    unparsed = Counter(frame.loc[frame["score"] == UNPARSED_SCORE, "model"])
    scored = frame[frame["score"] != UNPARSED_SCORE]

    models = []
    for model in sorted(frame["model"].unique()):
        rows = scored[scored["model"] == model]
        turn_1 = rows[rows["turn"] == 1]["score"]
        turn_2 = rows[rows["turn"] == 2]["score"]
        models.append(
            {
                "model": model,
                "turn_1": _mean_or_nan(turn_1),
                "turn_2": _mean_or_nan(turn_2),
                "overall": _mean_or_nan(rows["score"]),
                "n_turn_1": len(turn_1),
                "n_turn_2": len(turn_2),
                "n_unparsed": unparsed.get(model, 0),
            }
        )
        if unparsed.get(model, 0):
            logger.warning("MT-Bench: dropped %d unparsed judgments (score -1) of %s", unparsed[model], model)
    models.sort(key=lambda entry: -entry["overall"] if not math.isnan(entry["overall"]) else math.inf)
    return {"file": str(path), "judge": str(frame["judge_model"].iloc[0]), "models": models}
