"""Benchmark and training data: where it lives and how it is read.

The data folder is found in this order: the ``--data-dir`` flag, the
``RSPO_BENCH_DATA`` environment variable, then the user cache
``~/.cache/rspo-bench/data``. The repository never ships benchmark data.
Its layout mirrors the public sources::

    alpaca_eval/alpaca_eval_instructions.jsonl
    alpaca_eval/baseline/gpt4_1106_preview/model_outputs.json.gz
    alpaca_eval/instruction_difficulty.csv
    ultrafeedback/train_clean.jsonl.gz
    ...
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Any

ENV_VAR = "RSPO_BENCH_DATA"
DEFAULT_CACHE = Path("~/.cache/rspo-bench/data")

ALPACA_EVAL_INSTRUCTIONS = "alpaca_eval/alpaca_eval_instructions.jsonl"
ALPACA_EVAL_BASELINE = "alpaca_eval/baseline/gpt4_1106_preview/model_outputs.json.gz"
ALPACA_EVAL_DIFFICULTY = "alpaca_eval/instruction_difficulty.csv"
ALPACA_EVAL_GAMED_WEIGHTS = "alpaca_eval/gamed_baselines/glm_weights_gamed_baselines.csv"
ALPACA_EVAL_GAMED_OUTPUTS = "alpaca_eval/gamed_baselines/{name}/model_outputs.json.gz"
ULTRAFEEDBACK_TRAIN = "ultrafeedback/train_clean.jsonl.gz"
ULTRAFEEDBACK_EVAL = "ultrafeedback/eval_clean.jsonl"


class DataFileNotFoundError(FileNotFoundError):
    """A required benchmark or training file is missing from the data folder."""


class DataFormatError(ValueError):
    """A data file exists but a record in it is malformed."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the data folder: the argument, then ``$RSPO_BENCH_DATA``, then the user cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return DEFAULT_CACHE.expanduser()


def data_file(relative: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of a data file, or raise an error naming the file and how to provide it."""
    root = resolve_data_dir(data_dir)
    path = root / relative
    if path.is_file():
        return path
    # A plain copy of a file that the sources store gzip-compressed is accepted too, and the reverse.
    alternative = path.with_suffix("") if path.suffix == ".gz" else path.with_name(path.name + ".gz")
    if alternative.is_file():
        return alternative
    raise DataFileNotFoundError(
        f"data file not found: {path}. Put '{relative}' under a data folder and pass it with "
        f"--data-dir DIR or the {ENV_VAR} environment variable (data folder now: {root})."
    )


def prompt_file(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of a prompt file: absolute as given, relative under the data folder.

    Raises DataFileNotFoundError naming the path tried and the data folder.
    """
    root = resolve_data_dir(data_dir)
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = root / path
    if not path.is_file():
        raise DataFileNotFoundError(
            f"prompt file not found: {path} (prompts.files entry {name!r}). A relative path is resolved "
            f"against the data folder, now {root}, set with --data-dir DIR or the {ENV_VAR} environment "
            f"variable; an absolute path is used as it is."
        )
    return path


def _open_text(path: Path) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            return handle.read()
    return path.read_text(encoding="utf-8")


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file (optionally gzip-compressed), one JSON object per LF-separated line.

    Records are split on ``\\n`` only: some benchmark files hold U+2028 inside strings,
    which ``str.splitlines`` would treat as a line break. Blank lines are skipped.
    """
    return [record for _, record in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSONL file like :func:`read_jsonl` and return (1-based line number, record) pairs."""
    path = Path(path)
    records = []
    for line_number, line in enumerate(_open_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFormatError(
                f"{path}:{line_number}: invalid JSON ({error.msg} at column {error.colno}); "
                f"fix or remove that line"
            ) from error
        if not isinstance(record, dict):
            raise DataFormatError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
        records.append((line_number, record))
    return records


def read_prompt_file(path: str | os.PathLike[str]) -> list[str]:
    """Return the prompts of a JSONL file (optionally gzip-compressed) in file order.

    Each line is an object with a ``prompt`` string, or else an ``instruction`` string.
    Raises DataFormatError naming the file and line of a malformed record, and for a
    file without records.
    """
    path = Path(path)
    prompts = []
    for line_number, record in read_jsonl_numbered(path):
        field = "prompt" if "prompt" in record else "instruction"
        if field not in record:
            raise DataFormatError(
                f"{path}:{line_number}: missing field 'prompt' (or 'instruction'); the record has keys "
                f"{sorted(record)[:10]}"
            )
        value = record[field]
        if not isinstance(value, str) or not value.strip():
            raise DataFormatError(
                f"{path}:{line_number}: field {field!r} must be a non-empty string, got {value!r:.80}"
            )
        prompts.append(value)
    if not prompts:
        raise DataFormatError(f"{path}: the prompt file contains no records")
    return prompts


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, optionally gzip-compressed."""
    path = Path(path)
    try:
        return json.loads(_open_text(path))
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}: invalid JSON at line {error.lineno}: {error.msg}") from error


def load_alpaca_eval_instructions(data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Return the 805 AlpacaEval instructions in canonical order: ``{index, dataset, instruction}``."""
    return read_jsonl(data_file(ALPACA_EVAL_INSTRUCTIONS, data_dir))


def load_alpaca_eval_baseline(data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Return the gpt4_1106_preview baseline outputs: ``{dataset, instruction, output, generator}``."""
    return read_json(data_file(ALPACA_EVAL_BASELINE, data_dir))


def load_ultrafeedback(split: str = "train", data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Return UltraFeedback-binarized records ``{prompt, chosen, rejected, ...}`` of the train or eval split."""
    relative = {"train": ULTRAFEEDBACK_TRAIN, "eval": ULTRAFEEDBACK_EVAL}.get(split)
    if relative is None:
        raise ValueError(f"unknown UltraFeedback split {split!r}; use 'train' or 'eval'")
    return read_jsonl(data_file(relative, data_dir))
