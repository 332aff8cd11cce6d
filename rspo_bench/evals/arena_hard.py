"""Arena-Hard-Auto scores from pairwise judgments of models against a baseline.

Each judgment contains two games on one question. In game 1 the baseline's answer is
assistant A and the model's answer is B. In game 2 the positions are swapped, so the
model is A. A game's verdict is ``A>>B``, ``A>B``, ``A=B``, ``B>A`` or ``B>>A``, and
v2.0 judges may also write the mirrored forms ``B<<A``, ``B<A``, ``B=A``, ``A<B`` and
``A<<B``. A decisive verdict (``>>`` or ``<<``) counts as three battles, any other as
one, and a tie gives each side half a win. These are the rules of lmarena/arena-hard-auto
(``show_result.py`` at commit 0489bf3 for v0.1 and at commit 196f6b8 for v2.0).

Two judgment schemas are read, one object per JSONL line:

* 2024 (v0.1): ``{question_id, model, judge, games: [{user_prompt, judgment, score}, x2]}``
* 2025 (v2.0): ``{uid, category, judge, model, baseline, games: [{score, judgment, prompt}, x2]}``

Scoring, by version:

* ``v0.1``: a Bradley-Terry model is fitted to all battles by logistic regression without
  intercept, scaled to Elo (scale 400, base 10, baseline anchored at 1000). The score is
  the predicted win rate against the baseline in percent. Its confidence interval takes
  the percentiles of that win rate over bootstrap refits on battles resampled with
  replacement. A game without a valid verdict is dropped on its own.
* ``v2.0``: the score is the mean over bootstrap rounds of the model's mean battle outcome,
  with battles resampled per model. A judgment is dropped when either game lacks a valid
  verdict. With style control, a logistic regression on model indicators and normalised
  style differences (:func:`style_difference_features`) replaces the plain mean, and the
  score is the median over bootstrap refits of the style-controlled win rate.

Both versions print a 95% interval by default here, while arena-hard-auto v2.0 prints the
5% and 95% quantiles (``ci_level=0.9``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from rspo_bench.data import DataFileNotFoundError, data_file, read_jsonl
from rspo_bench.logs import get_logger, progress

logger = get_logger(__name__)

VERSION_AUTO = "auto"
V01 = "v0.1"
V20 = "v2.0"
VERSIONS = (VERSION_AUTO, V01, V20)
SCHEMA_2024 = "2024"
SCHEMA_2025 = "2025"
# Official baselines of the 2024 (v0.1) and 2025 (v2.0 hard prompts) judgment schemas.
DEFAULT_BASELINES = {SCHEMA_2024: "gpt-4-0314", SCHEMA_2025: "o3-mini-2025-01-31"}
# Answer files of each version's baselines in the data folder.
ANSWER_FILE = "arena_hard/arena-hard-{version}/model_answer/{model}.jsonl"

DECISIVE_WEIGHT = 3
ELO_SCALE = 400.0
ELO_BASE = 10.0
ELO_INIT = 1000.0
DEFAULT_ROUNDS = 100
DEFAULT_CI_LEVEL = 0.95

STYLE_FEATURES = ("token_len", "header_count", "list_count", "bold_count")

# Outcome for assistant A (1 = A better, 0.5 = tie, 0 = B better) and whether the verdict is decisive.
_V01_VERDICTS = {
    "A>>B": (1.0, True),
    "A>B": (1.0, False),
    "A=B": (0.5, False),
    "B>A": (0.0, False),
    "B>>A": (0.0, True),
}
_V20_VERDICTS = {
    **_V01_VERDICTS,
    "B<<A": (1.0, True),
    "B<A": (1.0, False),
    "B=A": (0.5, False),
    "A<B": (0.0, False),
    "A<<B": (0.0, True),
}
VERDICTS = {V01: _V01_VERDICTS, V20: _V20_VERDICTS}

_MAX_LISTED = 10


class ArenaHardInputError(ValueError):
    """A judgment, answer or question file is invalid or inconsistent. The message names the rows."""


def _listed(items: Sequence[str]) -> str:
    text = "; ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        text += f"; and {len(items) - _MAX_LISTED} more"
    return text


# Reading judgments


@dataclass(frozen=True)
class Judgment:
    """One judged question: the model against the baseline in two games with swapped positions."""

    question_id: str
    model: str
    judge: str
    baseline: str | None
    category: str | None
    # Verdicts of game 1 (baseline is A) and game 2 (model is A), or None where the judge gave none.
    verdicts: tuple[str | None, str | None]
    schema: str
    record: str


def jsonl_files(path: str | os.PathLike[str]) -> list[Path]:
    """Return the file itself, or the ``*.jsonl`` and ``*.jsonl.gz`` files of a folder in name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        suffixes = (".jsonl", ".jsonl.gz")
        files = sorted(item for item in path.iterdir() if item.is_file() and item.name.endswith(suffixes))
        if not files:
            raise ArenaHardInputError(f"{path}: no .jsonl or .jsonl.gz files in this folder")
        return files
    raise ArenaHardInputError(f"{path}: no such file or folder")


def _string_field(
    record: dict[str, Any], field: str, where: str, problems: list[str], *, required: bool = True
) -> str | None:
    value = record.get(field)
    if value is None and not required:
        return None
    if isinstance(value, str) and value:
        return value
    problems.append(f"{where}: {field} must be a non-empty string, got {value!r}")
    return None


def _parse_games(
    record: dict[str, Any], where: str, problems: list[str]
) -> tuple[str | None, str | None] | None:
    games = record.get("games")
    if not isinstance(games, list) or len(games) != 2:
        count = len(games) if isinstance(games, list) else type(games).__name__
        problems.append(
            f"{where}: games must be a list of 2 games (baseline as A, then model as A), got {count}"
        )
        return None
    verdicts: list[str | None] = []
    for position, game in enumerate(games, start=1):
        if game is None:
            verdicts.append(None)
            continue
        if not isinstance(game, dict) or "score" not in game:
            problems.append(f"{where}: game {position} must be an object with a 'score' field")
            return None
        score = game["score"]
        if score is not None and not isinstance(score, str):
            problems.append(f"{where}: game {position} score must be a verdict string or null, got {score!r}")
            return None
        verdicts.append(score)
    return verdicts[0], verdicts[1]


def _parse_judgment(record: dict[str, Any], where: str, problems: list[str]) -> Judgment | None:
    if "question_id" in record:
        schema, id_field = SCHEMA_2024, "question_id"
    elif "uid" in record:
        schema, id_field = SCHEMA_2025, "uid"
    else:
        problems.append(f"{where}: neither 'question_id' (2024 schema) nor 'uid' (2025 schema) is present")
        return None
    start = len(problems)
    question_id = _string_field(record, id_field, where, problems)
    model = _string_field(record, "model", where, problems)
    judge = _string_field(record, "judge", where, problems)
    baseline = _string_field(record, "baseline", where, problems, required=False)
    category = _string_field(record, "category", where, problems, required=False)
    verdicts = _parse_games(record, where, problems)
    if len(problems) > start or verdicts is None:
        return None
    return Judgment(question_id, model, judge, baseline, category, verdicts, schema, where)


def read_judgments(path: str | os.PathLike[str]) -> list[Judgment]:
    """Read judgments of the 2024 or 2025 schema from a JSONL file or a folder of them.

    Raises :class:`ArenaHardInputError` naming the records with missing or invalid fields,
    and when the files mix the two schemas.
    """
    judgments, problems = [], []
    for file in jsonl_files(path):
        for number, record in enumerate(read_jsonl(file), start=1):
            judgment = _parse_judgment(record, f"{file.name} record {number}", problems)
            if judgment is not None:
                judgments.append(judgment)
    if problems:
        raise ArenaHardInputError(f"{path}: invalid judgment rows: {_listed(problems)}")
    if not judgments:
        raise ArenaHardInputError(f"{path}: no judgments found")
    first_by_schema: dict[str, str] = {}
    for judgment in judgments:
        first_by_schema.setdefault(judgment.schema, judgment.record)
    if len(first_by_schema) > 1:
        described = [f"{schema} schema from {record}" for schema, record in sorted(first_by_schema.items())]
        raise ArenaHardInputError(
            f"{path}: judgments mix the 2024 schema (question_id) and the 2025 schema (uid): "
            f"{_listed(described)}. Score each benchmark version separately."
        )
    return judgments


def _check_single_value(judgments: Sequence[Judgment], field: str, label: str, path: Any) -> str | None:
    records_by_value: dict[str, list[str]] = defaultdict(list)
    for judgment in judgments:
        value = getattr(judgment, field)
        if value is not None:
            records_by_value[value].append(judgment.record)
    if len(records_by_value) > 1:
        described = [
            f"{value!r} on {len(records)} rows (first: {records[0]})"
            for value, records in sorted(records_by_value.items())
        ]
        raise ArenaHardInputError(
            f"{path}: judgments mix {label}s: {_listed(described)}. Score each {label} separately."
        )
    return next(iter(records_by_value), None)


def check_judgments(judgments: Sequence[Judgment], *, baseline: str, path: Any = "judgments") -> str:
    """Check one judge, one baseline and one judgment per (question, model), and return the judge.

    Raises :class:`ArenaHardInputError` naming the judges or baselines when they differ, the
    duplicated rows, and the rows that judge the baseline against itself.
    """
    judge = _check_single_value(judgments, "judge", "judge", path)
    recorded_baseline = _check_single_value(judgments, "baseline", "baseline", path)
    if recorded_baseline is not None and recorded_baseline != baseline:
        raise ArenaHardInputError(
            f"{path}: the judgments name the baseline {recorded_baseline!r} but {baseline!r} was requested. "
            f"Pass --baseline {recorded_baseline}."
        )

    first_seen: dict[tuple[str, str], str] = {}
    duplicates, self_judged = [], []
    for judgment in judgments:
        key = (judgment.question_id, judgment.model)
        if key in first_seen:
            duplicates.append(
                f"{judgment.record} repeats {first_seen[key]} (question {key[0]}, model {key[1]})"
            )
        else:
            first_seen[key] = judgment.record
        if judgment.model == baseline:
            self_judged.append(judgment.record)
    if duplicates:
        raise ArenaHardInputError(
            f"{path}: duplicate (question, model) rows: {_listed(duplicates)}. Keep one judgment per "
            f"question and model."
        )
    if self_judged:
        raise ArenaHardInputError(
            f"{path}: rows judge the baseline {baseline!r} against itself: {_listed(self_judged)}. "
            f"Remove them."
        )
    assert judge is not None  # every parsed judgment has a judge
    return judge


def read_question_ids(path: str | os.PathLike[str]) -> list[str]:
    """Return the ids (``question_id`` or ``uid``) of an Arena-Hard question file."""
    ids, problems = [], []
    for number, record in enumerate(read_jsonl(path), start=1):
        value = record.get("question_id", record.get("uid"))
        if isinstance(value, str) and value:
            ids.append(value)
        else:
            problems.append(f"record {number}: no string question_id or uid")
    if problems:
        raise ArenaHardInputError(f"{path}: invalid question rows: {_listed(problems)}")
    return ids


def check_question_coverage(judgments: Sequence[Judgment], question_ids: Sequence[str], *, path: Any) -> None:
    """Raise :class:`ArenaHardInputError` naming questions that a model lacks or the question file lacks."""
    expected = set(question_ids)
    judged: dict[str, set[str]] = defaultdict(set)
    unknown = []
    for judgment in judgments:
        judged[judgment.model].add(judgment.question_id)
        if judgment.question_id not in expected:
            unknown.append(f"{judgment.record} (question {judgment.question_id}, model {judgment.model})")
    problems = []
    if unknown:
        problems.append(f"questions not in the question file: {_listed(unknown)}")
    for model in sorted(judged):
        missing = [question for question in question_ids if question not in judged[model]]
        if missing:
            problems.append(
                f"model {model} lacks {len(missing)} of {len(question_ids)} questions: {_listed(missing)}"
            )
    if problems:
        raise ArenaHardInputError(f"{path}: judgments do not match the question file: {' | '.join(problems)}")


# Battles


@dataclass(frozen=True)
class Battles:
    """Battle rows of models against the baseline, with what was dropped on the way."""

    # Columns question_id, model and outcome (the model's score: 1 win, 0.5 tie, 0 loss).
    frame: pd.DataFrame
    # Per model: judgments read, games without a valid verdict, and judgments dropped (v2.0 only).
    judgments: Counter[str]
    unparsed_games: Counter[str]
    dropped_judgments: Counter[str]


def judgment_battles(
    judgments: Iterable[Judgment], *, version: str, decisive_weight: int = DECISIVE_WEIGHT
) -> Battles:
    """Turn judgments into battle rows; a decisive verdict becomes ``decisive_weight`` rows.

    A verdict outside the version's table (or null) makes its game unparsed. Under v0.1
    only that game is dropped, and under v2.0 the whole judgment is.
    """
    table = VERDICTS[version]
    question_ids, models, outcomes = [], [], []
    judgment_count: Counter[str] = Counter()
    unparsed: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    invalid_labels: Counter[str] = Counter()

    for judgment in judgments:
        judgment_count[judgment.model] += 1
        parsed = []
        for verdict in judgment.verdicts:
            entry = table.get(verdict) if verdict is not None else None
            if entry is None and verdict is not None:
                invalid_labels[verdict] += 1
            parsed.append(entry)
        unparsed[judgment.model] += sum(entry is None for entry in parsed)
        if version == V20 and any(entry is None for entry in parsed):
            dropped[judgment.model] += 1
            continue
        for game, entry in enumerate(parsed):
            if entry is None:
                continue
            outcome_a, decisive = entry
            # The baseline is A in game 1 and the model is A in game 2.
            outcome = 1.0 - outcome_a if game == 0 else outcome_a
            count = decisive_weight if decisive else 1
            question_ids.extend([judgment.question_id] * count)
            models.extend([judgment.model] * count)
            outcomes.extend([outcome] * count)

    if invalid_labels:
        logger.warning(
            "Arena-Hard %s: games with verdicts outside %s were dropped: %s",
            version,
            ", ".join(table),
            ", ".join(f"{label!r} x{count}" for label, count in invalid_labels.most_common()),
        )
    frame = pd.DataFrame(
        {"question_id": question_ids, "model": models, "outcome": np.asarray(outcomes, dtype=np.float64)}
    )
    return Battles(frame, judgment_count, unparsed, dropped)


# Bradley-Terry fit


def predicted_win_rate(
    rating: float, opponent_rating: float, *, scale: float = ELO_SCALE, base: float = ELO_BASE
) -> float:
    """Return the Bradley-Terry probability that a player rated ``rating`` beats ``opponent_rating``."""
    if math.isnan(rating) or math.isnan(opponent_rating):
        return math.nan
    if rating == opponent_rating:
        return 0.5
    exponent = (opponent_rating - rating) / scale
    if exponent > 300:
        return 0.0
    return 1.0 / (1.0 + base**exponent)


def _fit_logistic(features: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, bool]:
    """Fit an unpenalised logistic regression without intercept; return coefficients and convergence."""
    # C=inf gives the unpenalised fit that penalty=None gave before scikit-learn 1.8.
    regression = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8, max_iter=1000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        regression.fit(features, labels, sample_weight=weights)
    converged = not any(issubclass(warning.category, ConvergenceWarning) for warning in caught)
    return regression.coef_[0], converged


def _warn_unconverged(count: int, total: int, what: str) -> None:
    if count:
        logger.warning(
            "%d of %d %s fits did not converge, so their ratings may be inaccurate", count, total, what
        )


def _fit_ratings(
    index_a: np.ndarray,
    index_b: np.ndarray,
    outcome: np.ndarray,
    num_models: int,
    baseline_index: int,
    scale: float,
    base: float,
    init: float,
) -> tuple[np.ndarray, bool]:
    # wins[i, j] is the number of battles i won against j, where a tie counts half for each side.
    wins = np.zeros((num_models, num_models))
    np.add.at(wins, (index_a, index_b), outcome)
    np.add.at(wins, (index_b, index_a), 1.0 - outcome)
    ratings = np.full(num_models, math.nan)
    ratings[baseline_index] = init

    # A model that never won (never lost) has no finite maximum-likelihood rating, so it gets
    # -inf (+inf) and leaves the fit, which may make one of its opponents degenerate in turn.
    active = np.ones(num_models, dtype=bool)
    changed = True
    while changed:
        changed = False
        for model in range(num_models):
            if model == baseline_index or not active[model]:
                continue
            won = wins[model, active].sum()
            lost = wins[active, model].sum()
            if won == 0 and lost == 0:
                continue
            if won == 0 or lost == 0:
                ratings[model] = -math.inf if won == 0 else math.inf
                active[model] = False
                changed = True

    # Models that no chain of battles connects to the baseline have no rating (NaN).
    connected = np.zeros(num_models, dtype=bool)
    connected[baseline_index] = True
    frontier = [baseline_index]
    played = (wins + wins.T) > 0
    while frontier:
        model = frontier.pop()
        for opponent in np.flatnonzero(played[model] & active & ~connected):
            connected[opponent] = True
            frontier.append(int(opponent))
    fitted = [model for model in range(num_models) if connected[model] and model != baseline_index]
    if not fitted:
        return ratings, True

    column = {model: position for position, model in enumerate(fitted)}
    features, labels, weights = [], [], []
    log_base = math.log(base)
    members = [baseline_index, *fitted]
    for position, first in enumerate(members):
        for second in members[position + 1 :]:
            row = np.zeros(len(fitted))
            if first in column:
                row[column[first]] = log_base
            if second in column:
                row[column[second]] = -log_base
            for label, weight in ((1, wins[first, second]), (0, wins[second, first])):
                if weight > 0:
                    features.append(row)
                    labels.append(label)
                    weights.append(weight)

    coefficients, converged = _fit_logistic(np.asarray(features), np.asarray(labels), np.asarray(weights))
    # The baseline's column is left out, so its rating stays at init: the anchor.
    ratings[fitted] = init + scale * coefficients
    return ratings, converged


def fit_bradley_terry(
    battles: pd.DataFrame,
    *,
    baseline: str,
    scale: float = ELO_SCALE,
    base: float = ELO_BASE,
    init: float = ELO_INIT,
) -> pd.Series:
    """Fit Bradley-Terry Elo ratings to battles by logistic regression, with the baseline at ``init``.

    ``battles`` has the columns model_a, model_b and outcome (the score of model_a: 1, 0.5
    or 0). The win probability is ``1 / (1 + base ** ((R_b - R_a) / scale))``. A model
    that never won gets -inf, one that never lost +inf, and one not connected to the
    baseline by battles NaN.
    """
    models = sorted(set(battles["model_a"]) | set(battles["model_b"]) | {baseline})
    position = {model: index for index, model in enumerate(models)}
    ratings, converged = _fit_ratings(
        battles["model_a"].map(position).to_numpy(),
        battles["model_b"].map(position).to_numpy(),
        battles["outcome"].to_numpy(dtype=np.float64),
        len(models),
        position[baseline],
        scale,
        base,
        init,
    )
    _warn_unconverged(int(not converged), 1, "Bradley-Terry")
    return pd.Series(ratings, index=models, name="elo")


def _percentiles(values: np.ndarray, ci_level: float) -> tuple[float, float]:
    tail = (1.0 - ci_level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def _score_v01(
    battles: Battles, baseline: str, rounds: int, rng: np.random.Generator, ci_level: float
) -> dict[str, dict[str, Any]]:
    frame = battles.frame
    models = sorted(set(frame["model"]) | {baseline})
    position = {model: index for index, model in enumerate(models)}
    index_a = frame["model"].map(position).to_numpy()
    index_b = np.full(len(frame), position[baseline])
    outcome = frame["outcome"].to_numpy()
    arguments = (len(models), position[baseline], ELO_SCALE, ELO_BASE, ELO_INIT)

    ratings, converged = _fit_ratings(index_a, index_b, outcome, *arguments)
    unconverged = int(not converged)
    bootstrap = np.empty((rounds, len(models)))
    for round_index in progress(range(rounds), desc="Arena-Hard v0.1 bootstrap", unit="round"):
        sample = rng.integers(0, len(frame), len(frame))
        bootstrap[round_index], converged = _fit_ratings(
            index_a[sample], index_b[sample], outcome[sample], *arguments
        )
        unconverged += int(not converged)
    _warn_unconverged(unconverged, rounds + 1, "Bradley-Terry")

    results = {}
    for model in models:
        if model == baseline:
            continue
        column = position[model]
        # Win rate increases with Elo, so the win-rate percentiles are the win rates at the Elo
        # percentiles (up to interpolation between neighbouring rounds).
        win_rates = np.array([predicted_win_rate(value, ELO_INIT) for value in bootstrap[:, column]])
        # A round whose resample contains none of the model's battles gives it no rating (NaN).
        rated = win_rates[~np.isnan(win_rates)]
        if len(rated) < rounds:
            missing_rounds = rounds - len(rated)
            logger.warning("%s has no battles in %d of %d bootstrap rounds", model, missing_rounds, rounds)
        low, high = _percentiles(rated, ci_level) if len(rated) else (math.nan, math.nan)
        results[model] = {
            "score": 100.0 * float(predicted_win_rate(ratings[column], ELO_INIT)),
            "ci_low": 100.0 * low,
            "ci_high": 100.0 * high,
            "elo": float(ratings[column]),
        }
    return results


def _score_v20(
    battles: Battles, rounds: int, rng: np.random.Generator, ci_level: float
) -> dict[str, dict[str, Any]]:
    results = {}
    for model, group in battles.frame.groupby("model", sort=True):
        outcome = group["outcome"].to_numpy()
        sample = rng.integers(0, len(outcome), (rounds, len(outcome)))
        means = outcome[sample].mean(axis=1)
        low, high = _percentiles(means, ci_level)
        results[str(model)] = {
            "score": 100.0 * float(means.mean()),
            "ci_low": 100.0 * low,
            "ci_high": 100.0 * high,
            "win_rate": 100.0 * float(outcome.mean()),
        }
    return results


# Answers and style control


@dataclass(frozen=True)
class AnswerInfo:
    """Token length and Markdown counts of one answer, as its answer file records them."""

    token_len: float | None
    # Counts of STYLE_FEATURES, or None when the answer carries no metadata.
    style: tuple[float, float, float, float] | None


def _count(value: Any) -> float | None:
    """Return a count, summing per-kind counts such as ``{"h1": 2, "h2": 0}``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        counts = [None if isinstance(item, dict) else _count(item) for item in value.values()]
        if all(count is not None for count in counts):
            return float(sum(counts))  # type: ignore[arg-type]
    return None


def _answer_info(record: dict[str, Any]) -> AnswerInfo:
    # 2025 answer files store the metadata under "metadata", 2024 ones under "conv_metadata".
    metadata = record.get("metadata")
    if not isinstance(metadata, dict):
        metadata = record.get("conv_metadata")
    if not isinstance(metadata, dict):
        metadata = {}
    token_len = _count(metadata.get("token_len"))
    choices = record.get("choices")
    if token_len is None and isinstance(choices, list) and choices and isinstance(choices[0], dict):
        turns = choices[0].get("turns") or []
        lengths = [_count(turn.get("token_len")) if isinstance(turn, dict) else None for turn in turns]
        if lengths and all(length is not None for length in lengths):
            token_len = float(sum(lengths))
    counts = [_count(metadata.get(feature)) for feature in STYLE_FEATURES]
    style = tuple(counts) if all(count is not None for count in counts) else None
    return AnswerInfo(token_len, style)  # type: ignore[arg-type]


def read_answers(paths: Iterable[str | os.PathLike[str]]) -> dict[str, dict[str, AnswerInfo]]:
    """Read model answer files (2024 or 2025 schema): model name -> question id -> :class:`AnswerInfo`.

    Each path is a JSONL file or a folder of them. Raises :class:`ArenaHardInputError`
    naming records without a question id or model name and answers given twice.
    """
    answers: dict[str, dict[str, AnswerInfo]] = defaultdict(dict)
    first_seen: dict[tuple[str, str], str] = {}
    problems = []
    for path in paths:
        for file in jsonl_files(path):
            for number, record in enumerate(read_jsonl(file), start=1):
                where = f"{file.name} record {number}"
                question_id = record.get("question_id", record.get("uid"))
                model = record.get("model_id", record.get("model"))
                if not isinstance(question_id, str) or not isinstance(model, str):
                    problems.append(
                        f"{where}: expected string question_id and model_id (2024) or uid and model (2025)"
                    )
                    continue
                key = (model, question_id)
                if key in first_seen:
                    problems.append(
                        f"{where} repeats {first_seen[key]} (model {model}, question {question_id})"
                    )
                    continue
                first_seen[key] = where
                answers[model][question_id] = _answer_info(record)
    if problems:
        raise ArenaHardInputError(f"invalid answer rows: {_listed(problems)}")
    return dict(answers)


def average_token_length(answers: dict[str, AnswerInfo]) -> float | None:
    """Return the mean token length over a model's answers, or None when any answer lacks one."""
    lengths = [info.token_len for info in answers.values()]
    if not lengths or any(length is None for length in lengths):
        return None
    return float(np.mean(lengths))


def style_difference_features(model_counts: np.ndarray, baseline_counts: np.ndarray) -> np.ndarray:
    """Return the standardised style differences between model and baseline answers, one row per battle.

    Both inputs have the columns of :data:`STYLE_FEATURES`. The length feature is
    ``(t_m - t_b) / (t_m + t_b)`` for token lengths t. Each Markdown count c becomes a
    density ``d = c / (t + 1)`` and the feature ``(d_m - d_b) / (d_m + d_b + 1)``. Each
    column is then standardised to mean 0 and sample standard deviation 1, and a constant
    column is set to 0. This is the normalisation of arena-hard-auto v2.0.
    """
    model_length, baseline_length = model_counts[:, 0], baseline_counts[:, 0]
    total_length = model_length + baseline_length
    if np.any(total_length <= 0):
        raise ArenaHardInputError(
            "both answers of a battle have token length 0, so the length feature is undefined"
        )
    features = np.empty_like(model_counts, dtype=np.float64)
    features[:, 0] = (model_length - baseline_length) / total_length
    model_density = model_counts[:, 1:] / (model_length[:, None] + 1.0)
    baseline_density = baseline_counts[:, 1:] / (baseline_length[:, None] + 1.0)
    features[:, 1:] = (model_density - baseline_density) / (model_density + baseline_density + 1.0)

    mean = features.mean(axis=0)
    deviation = features.std(axis=0, ddof=1) if len(features) > 1 else np.zeros(features.shape[1])
    constant = ~(deviation > 0)
    standardised = np.zeros_like(features)
    standardised[:, ~constant] = (features[:, ~constant] - mean[~constant]) / deviation[~constant]
    if constant.any():
        logger.warning(
            "style features without variation are left out of style control: %s",
            ", ".join(name for name, flag in zip(STYLE_FEATURES, constant) if flag),
        )
    return standardised


def _style_counts(
    battles: Battles, answers: dict[str, dict[str, AnswerInfo]], baseline: str
) -> tuple[np.ndarray, np.ndarray]:
    missing = []
    model_rows, baseline_rows = [], []
    for question_id, model in zip(battles.frame["question_id"], battles.frame["model"]):
        model_info = answers.get(model, {}).get(question_id)
        baseline_info = answers.get(baseline, {}).get(question_id)
        for name, info in ((model, model_info), (baseline, baseline_info)):
            if info is None or info.style is None:
                missing.append(f"model {name}, question {question_id}")
        if model_info is not None and model_info.style and baseline_info is not None and baseline_info.style:
            model_rows.append(model_info.style)
            baseline_rows.append(baseline_info.style)
    if missing:
        unique = list(dict.fromkeys(missing))
        raise ArenaHardInputError(
            f"style control needs answers with metadata ({', '.join(STYLE_FEATURES)}) for every judged "
            f"question of each model and the baseline. Missing or without metadata: {_listed(unique)}. "
            f"Pass the answer files with --answers."
        )
    return np.asarray(model_rows, dtype=np.float64), np.asarray(baseline_rows, dtype=np.float64)


def _fit_style_model(
    indicators: np.ndarray, features: np.ndarray, outcome: np.ndarray
) -> tuple[np.ndarray, bool]:
    design = np.hstack([indicators, features])
    # A battle with a fractional outcome s counts as a win with weight s and a loss with weight 1 - s.
    stacked = np.vstack([design, design])
    labels = np.concatenate([np.ones(len(outcome)), np.zeros(len(outcome))])
    weights = np.concatenate([outcome, 1.0 - outcome])
    keep = weights > 0
    return _fit_logistic(stacked[keep], labels[keep], weights[keep])


def _score_style_control(
    battles: Battles,
    answers: dict[str, dict[str, AnswerInfo]],
    baseline: str,
    rounds: int,
    rng: np.random.Generator,
    ci_level: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    frame = battles.frame
    model_counts, baseline_counts = _style_counts(battles, answers, baseline)
    # NOTE: the features are centred on their mean over all battles, as in arena-hard-auto v2.0.
    # A model's indicator therefore absorbs the mean style difference of the scored models, so
    # style control corrects models relative to each other and changes little for a lone model.
    features = style_difference_features(model_counts, baseline_counts)
    models = sorted(frame["model"].unique())
    position = {model: index for index, model in enumerate(models)}
    # The model's column is +1 and the baseline has no column, which fixes its coefficient at 0.
    indicators = np.zeros((len(frame), len(models)))
    indicators[np.arange(len(frame)), frame["model"].map(position).to_numpy()] = 1.0
    outcome = frame["outcome"].to_numpy()

    point, converged = _fit_style_model(indicators, features, outcome)
    unconverged = int(not converged)
    bootstrap = np.empty((rounds, len(point)))
    for round_index in progress(range(rounds), desc="Arena-Hard style control bootstrap", unit="round"):
        sample = rng.integers(0, len(frame), len(frame))
        bootstrap[round_index], converged = _fit_style_model(
            indicators[sample], features[sample], outcome[sample]
        )
        unconverged += int(not converged)
    _warn_unconverged(unconverged, rounds + 1, "style control")

    def win_rate(coefficient: np.ndarray | float) -> np.ndarray:
        return 100.0 / (1.0 + np.exp(-np.asarray(coefficient, dtype=np.float64)))

    results = {}
    for model in models:
        column = position[model]
        rates = win_rate(bootstrap[:, column])
        low, high = _percentiles(rates, ci_level)
        results[model] = {
            "score": float(np.median(rates)),
            "ci_low": low,
            "ci_high": high,
            "win_rate": float(win_rate(point[column])),
        }
    coefficients = {
        name: float(np.median(bootstrap[:, len(models) + index])) for index, name in enumerate(STYLE_FEATURES)
    }
    return results, coefficients


def _baseline_answer_file(baseline: str, data_dir: str | os.PathLike[str] | None) -> Path | None:
    for version in (V20, V01):
        try:
            return data_file(ANSWER_FILE.format(version=version, model=baseline), data_dir)
        except DataFileNotFoundError:
            continue
    return None


# Scores


def resolve_version(version: str, judgments: Sequence[Judgment]) -> str:
    """Return v0.1 or v2.0; ``auto`` picks v0.1 for the 2024 schema and v2.0 for the 2025 schema."""
    if version not in VERSIONS:
        raise ArenaHardInputError(f"unknown version {version!r}. Use one of {', '.join(VERSIONS)}.")
    if version != VERSION_AUTO:
        return version
    return V01 if judgments[0].schema == SCHEMA_2024 else V20


def score_arena_hard(
    judgments_path: str | os.PathLike[str],
    *,
    baseline: str | None = None,
    version: str = VERSION_AUTO,
    style_control: bool = False,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
    ci_level: float = DEFAULT_CI_LEVEL,
    questions_path: str | os.PathLike[str] | None = None,
    answer_paths: Sequence[str | os.PathLike[str]] = (),
    category: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Score every model in Arena-Hard judgments against the baseline, in percent.

    ``baseline`` defaults to the judgments' ``baseline`` field, else to the official
    baseline of their schema (:data:`DEFAULT_BASELINES`). ``category`` keeps only
    judgments of that category (2025 schema). ``answer_paths`` supply average token
    lengths and, for style control, the answers' Markdown metadata. The baseline's answers
    are taken from the data folder when not given. Bootstrap rounds use
    ``numpy.random.default_rng(seed)``.

    Returns a dict with ``version``, ``schema``, ``judge``, ``baseline``, ``category``,
    ``style_control``, ``rounds``, ``seed``, ``ci_level``, ``style_coefficients`` (or None)
    and ``models``. That list is sorted by score, and each entry has ``model``, ``score``,
    ``ci_low``, ``ci_high``, ``n_judgments``, ``n_battles``, ``n_unparsed_games``,
    ``n_dropped_judgments`` and ``avg_tokens`` (None without answers). v0.1 entries add
    ``elo``. v2.0 entries add ``win_rate``: the plain mean outcome, or with style control
    the fit on all battles. Raises :class:`ArenaHardInputError` on invalid input.
    """
    if rounds < 1:
        raise ArenaHardInputError(f"the number of bootstrap rounds must be at least 1, got {rounds}")
    if not 0.0 < ci_level < 1.0:
        raise ArenaHardInputError(f"the confidence level must lie strictly between 0 and 1, got {ci_level}")

    judgments = read_judgments(judgments_path)
    if category is not None:
        categories = Counter(judgment.category for judgment in judgments)
        judgments = [judgment for judgment in judgments if judgment.category == category]
        if not judgments:
            available = ", ".join(f"{name!r} ({count} rows)" for name, count in categories.most_common())
            raise ArenaHardInputError(
                f"{judgments_path}: no judgments of category {category!r}. Found {available}."
            )
    version = resolve_version(version, judgments)
    if style_control and version != V20:
        raise ArenaHardInputError("style control is implemented for v2.0 scoring only. Pass --version v2.0.")

    recorded_baselines = {judgment.baseline for judgment in judgments if judgment.baseline is not None}
    if baseline is None:
        if len(recorded_baselines) == 1:
            baseline = next(iter(recorded_baselines))
        else:
            baseline = DEFAULT_BASELINES[judgments[0].schema]
    judge = check_judgments(judgments, baseline=baseline, path=judgments_path)
    if questions_path is not None:
        check_question_coverage(judgments, read_question_ids(questions_path), path=judgments_path)

    battles = judgment_battles(judgments, version=version)
    if battles.frame.empty:
        raise ArenaHardInputError(
            f"{judgments_path}: no game has a valid verdict, so there is nothing to score"
        )

    answers = read_answers(answer_paths)
    rng = np.random.default_rng(seed)
    style_coefficients = None
    if version == V01:
        scores = _score_v01(battles, baseline, rounds, rng, ci_level)
    elif style_control:
        if baseline not in answers:
            baseline_file = _baseline_answer_file(baseline, data_dir)
            if baseline_file is not None:
                logger.info("reading the baseline answers of %s from %s", baseline, baseline_file)
                answers.update(read_answers([baseline_file]))
        scores, style_coefficients = _score_style_control(battles, answers, baseline, rounds, rng, ci_level)
    else:
        scores = _score_v20(battles, rounds, rng, ci_level)

    models = []
    for model in sorted(battles.judgments):
        entry = {
            "model": model,
            "score": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            **scores.get(model, {}),
            "n_judgments": battles.judgments[model],
            "n_battles": int((battles.frame["model"] == model).sum()),
            "n_unparsed_games": battles.unparsed_games.get(model, 0),
            "n_dropped_judgments": battles.dropped_judgments.get(model, 0),
            "avg_tokens": average_token_length(answers[model]) if model in answers else None,
        }
        models.append(entry)
    models.sort(key=lambda entry: -entry["score"] if not math.isnan(entry["score"]) else math.inf)
    for entry in models:
        logger.info(
            "Arena-Hard %s %s vs %s: score %.1f%% (CI %.1f to %.1f) from %d judgments",
            version,
            entry["model"],
            baseline,
            entry["score"],
            entry["ci_low"],
            entry["ci_high"],
            entry["n_judgments"],
        )
    return {
        "version": version,
        "schema": judgments[0].schema,
        "judge": judge,
        "baseline": baseline,
        "category": category,
        "style_control": style_control,
        "rounds": rounds,
        "seed": seed,
        "ci_level": ci_level,
        "style_coefficients": style_coefficients,
        "models": models,
    }
