"""``rspo-bench score``: benchmark scores from judge outputs of AlpacaEval 2.0, Arena-Hard-Auto and MT-Bench.

Each command prints a table, or JSON with ``--json``, and exits with code 2 and a message
naming the file and rows when its input is invalid.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy as np
import pandas as pd
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rspo_bench.data import ENV_VAR, DataFileNotFoundError, read_json

score_app = typer.Typer(
    no_args_is_help=True,
    help="Score judge outputs: AlpacaEval 2.0 annotations, Arena-Hard-Auto judgments, MT-Bench judgments.",
)
_stderr = Console(stderr=True)

EXIT_INVALID_INPUT = 2
_MAX_LISTED = 10

JsonOption = Annotated[bool, typer.Option("--json", help="Print the scores as JSON instead of a table.")]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help=f"Benchmark data folder; default: ${ENV_VAR}, then ~/.cache/rspo-bench/data."
    ),
]


def _exit_invalid(message: str) -> NoReturn:
    # Text keeps brackets in the message (such as verdicts "[[A>B]]") from being read as rich markup.
    _stderr.print(Text("invalid input: ", style="red") + Text(message), soft_wrap=True)
    raise typer.Exit(EXIT_INVALID_INPUT)


def _json_ready(value: Any) -> Any:
    """Convert numpy scalars, tuples and non-finite floats (as null) into plain JSON values."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(_json_ready(value), indent=2, allow_nan=False))


def _add_number_column(table: Table, header: str) -> None:
    # Narrow consoles wrap headers at spaces, and a minimum width keeps each word whole.
    table.add_column(header, justify="right", min_width=max(len(word) for word in header.split()))


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


# AlpacaEval 2.0


def _single_value(frame: pd.DataFrame, column: str, label: str, path: Path) -> str | None:
    if column not in frame.columns:
        return None
    values = frame[column].astype(str)
    if values.nunique() > 1:
        described = [
            f"{value!r} ({count} rows, first row {int(values.index[values == value][0])})"
            for value, count in Counter(values).most_common()
        ]
        listed = ", ".join(described[:_MAX_LISTED])
        _exit_invalid(f"{path}: the annotations mix {label}s: {listed}. Score one {label} per file.")
    return str(values.iloc[0]) if len(values) else None


ALPACA_EVAL2_HELP = (
    "Compute AlpacaEval 2.0 raw and length-controlled (LC) win rates from one annotation file.\n\n"
    "Reports the raw win rate (percent, a tie counts 0.5) with its standard error, the wins, losses and "
    "draws, the average output length in characters, the LC win rate with its standard error, and the "
    "source of df_gamed.csv, which the LC GLM needs. When df_gamed.csv is not in the data folder or the "
    "Hugging Face cache it is reconstructed, and the LC win rate is approximate: on the three published "
    "annotation files in the data folder it exceeds the leaderboard by +0.059 (alpaca-7b), +0.045 "
    "(OpenHermes-2.5-Mistral-7B) and +0.022 (FuseChat-Llama-3.1-8B-Instruct) points, measured with "
    "alpaca-eval 0.6.6."
)


@score_app.command("alpaca-eval2", help=ALPACA_EVAL2_HELP)
def alpaca_eval2(
    annotations: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="alpaca_eval annotations.json or .json.gz: the 805 instructions in canonical order, "
            "output_1 from the baseline and output_2 from the model.",
        ),
    ],
    data_dir: DataDirOption = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            help="rspo-bench cache folder for df_gamed.csv; default: $RSPO_BENCH_CACHE, then "
            "~/.cache/rspo-bench.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    from rspo_bench.evals.alpaca_eval2 import compute_metrics

    try:
        records = read_json(annotations)
    except ValueError as error:
        _exit_invalid(str(error))
    is_record_list = isinstance(records, list) and all(isinstance(record, dict) for record in records)
    if not is_record_list or not records:
        _exit_invalid(f"{annotations}: expected a JSON list of annotation objects")
    frame = pd.DataFrame(records)
    annotator = _single_value(frame, "annotator", "annotator (judge)", annotations)
    baseline = _single_value(frame, "generator_1", "baseline (generator_1)", annotations)
    _single_value(frame, "generator_2", "model (generator_2)", annotations)

    try:
        metrics = compute_metrics(frame, data_dir=data_dir, cache_dir=cache_dir)
    except DataFileNotFoundError as error:
        _exit_invalid(f"missing data: {error}")
    except ValueError as error:
        _exit_invalid(f"{annotations}: {error}")

    result = {"file": str(annotations), "annotator": annotator, "baseline": baseline, **metrics}
    if as_json:
        _print_json(result)
        return
    table = Table(title=f"AlpacaEval 2.0: {metrics['generator']} vs {baseline}, judged by {annotator}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("win rate (%)", f"{metrics['win_rate']:.2f} ± {metrics['standard_error']:.2f}")
    lc_text = f"{_number(metrics['lc_win_rate'])} ± {_number(metrics['lc_standard_error'])}"
    table.add_row("LC win rate (%)", lc_text)
    counts_text = f"{metrics['n_wins']} / {metrics['n_wins_base']} / {metrics['n_draws']}"
    table.add_row("wins / losses / draws", counts_text)
    table.add_row("discrete win rate (%)", f"{metrics['discrete_win_rate']:.2f}")
    table.add_row("average length (characters)", f"{metrics['avg_length']:.0f}")
    table.add_row("instructions", str(metrics["n_total"]))
    gamed_note = " (LC approximate)" if metrics["lc_gamed_source"] == "reconstructed" else ""
    table.add_row("df_gamed.csv", f"{metrics['lc_gamed_source']}{gamed_note}")
    if metrics["is_subset"]:
        table.add_row("note", "subset of the 805 instructions: LC not comparable to the leaderboard")
    Console().print(table)


# Arena-Hard-Auto


ARENA_HARD_HELP = (
    "Compute Arena-Hard-Auto win rates (percent) against the baseline with bootstrap intervals.\n\n"
    "Game 1 of each judgment shows the baseline as assistant A and game 2 the model as A. A decisive "
    "verdict (A>>B, B>>A) counts as three battles and a tie as half a win. v0.1 fits a Bradley-Terry "
    "model (Elo scale 400, baseline at 1000) and reports its predicted win rate. v2.0 reports the "
    "bootstrap mean of the win rate."
)


@score_app.command("arena-hard", help=ARENA_HARD_HELP)
def arena_hard(
    judgments: Annotated[
        Path,
        typer.Argument(exists=True, help="Judgment JSONL file, or a folder of them (2024 or 2025 schema)."),
    ],
    baseline: Annotated[
        str | None,
        typer.Option(
            "--baseline",
            help="Baseline model; default: the judgments' 'baseline' field, else gpt-4-0314 for question_id "
            "rows (2024 schema) or o3-mini-2025-01-31 for uid rows (2025 schema).",
        ),
    ] = None,
    version: Annotated[
        str,
        typer.Option(
            "--version",
            help="Scoring: v0.1 (Bradley-Terry win rate), v2.0 (bootstrap mean win rate) or auto "
            "(v0.1 for question_id rows, v2.0 for uid rows).",
        ),
    ] = "auto",
    style_control: Annotated[
        bool,
        typer.Option(
            "--style-control",
            help="v2.0 only: control for answer token length and header, list and bold counts. Needs answer "
            "files with metadata (--answers); the baseline's answers may come from the data folder.",
        ),
    ] = False,
    rounds: Annotated[int, typer.Option("--bootstrap", min=1, help="Number of bootstrap rounds.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap resampling.")] = 0,
    ci_level: Annotated[
        float,
        typer.Option(
            "--ci-level", help="Confidence level of the bootstrap percentile interval, between 0 and 1."
        ),
    ] = 0.95,
    questions: Annotated[
        Path | None,
        typer.Option(
            "--questions",
            exists=True,
            dir_okay=False,
            help="Question JSONL file. Every model must have a judgment for each of its questions.",
        ),
    ] = None,
    answers: Annotated[
        list[Path] | None,
        typer.Option(
            "--answers",
            exists=True,
            help="Model answer JSONL file or folder, for average token lengths and style control. "
            "Repeat the option for several.",
        ),
    ] = None,
    category: Annotated[
        str | None,
        typer.Option(
            "--category", help="Score only judgments of this category (2025 schema), e.g. hard_prompt."
        ),
    ] = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    from rspo_bench.evals.arena_hard import ArenaHardInputError, score_arena_hard

    try:
        result = score_arena_hard(
            judgments,
            baseline=baseline,
            version=version,
            style_control=style_control,
            rounds=rounds,
            seed=seed,
            ci_level=ci_level,
            questions_path=questions,
            answer_paths=answers or (),
            category=category,
            data_dir=data_dir,
        )
    except (ArenaHardInputError, DataFileNotFoundError, ValueError) as error:
        _exit_invalid(str(error))

    if as_json:
        _print_json(result)
        return
    control = ", style control" if result["style_control"] else ""
    table = Table(
        title=f"Arena-Hard {result['version']}{control}: win rate (%) vs {result['baseline']}, judged by "
        f"{result['judge']}, {result['rounds']} bootstrap rounds"
    )
    table.add_column("model", no_wrap=True)
    headers = ["score", f"{result['ci_level']:.0%} CI", "judgments", "unparsed games", "avg tokens"]
    if result["version"] == "v0.1":
        headers.insert(2, "Elo")
    for header in headers:
        _add_number_column(table, header)
    for entry in result["models"]:
        cells = [
            entry["model"],
            _number(entry["score"], 1),
            f"{_number(entry['ci_low'], 1)} to {_number(entry['ci_high'], 1)}",
        ]
        if result["version"] == "v0.1":
            cells.append(_number(entry["elo"], 0))
        cells += [str(entry["n_judgments"]), str(entry["n_unparsed_games"]), _number(entry["avg_tokens"], 0)]
        table.add_row(*cells)
    Console().print(table)
    if result["style_coefficients"]:
        listed = ", ".join(f"{name} {value:+.3f}" for name, value in result["style_coefficients"].items())
        Console().print(f"style coefficients (bootstrap median): {listed}")


# MT-Bench


MT_BENCH_HELP = (
    "Compute MT-Bench turn-1, turn-2 and overall scores (1-10) per model, as FastChat's show_result.\n\n"
    "Rows with score -1 (rating not parsed) are dropped and counted. The overall score is the mean over "
    "the remaining rows of both turns."
)


@score_app.command("mt-bench", help=MT_BENCH_HELP)
def mt_bench(
    judgments: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="FastChat single-answer judgment JSONL, e.g. gpt-4_single.jsonl.",
        ),
    ],
    as_json: JsonOption = False,
) -> None:
    from rspo_bench.evals.mt_bench import score_mt_bench

    try:
        result = score_mt_bench(judgments)
    except ValueError as error:
        _exit_invalid(str(error))

    if as_json:
        _print_json(result)
        return
    table = Table(title=f"MT-Bench single-answer scores, judged by {result['judge']}")
    table.add_column("model", no_wrap=True)
    for header in ("turn 1", "turn 2", "overall", "rows (turn 1 / 2)", "unparsed rows"):
        _add_number_column(table, header)
    for entry in result["models"]:
        table.add_row(
            entry["model"],
            _number(entry["turn_1"], 3),
            _number(entry["turn_2"], 3),
            _number(entry["overall"], 3),
            f"{entry['n_turn_1']} / {entry['n_turn_2']}",
            str(entry["n_unparsed"]),
        )
    Console().print(table)
