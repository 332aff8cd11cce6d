"""AlpacaEval 2.0 metrics computed offline with alpaca_eval's own code.

Raw and length-controlled (LC) win rates come from
``alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`` (alpaca-eval 0.6.6).
That function fits the ``length_controlled_v1`` GLM on the model's annotations plus
the annotations of two length-gamed baselines, which it reads from ``df_gamed.csv``
through ``huggingface_hub.hf_hub_download``. :func:`offline_alpaca_eval_hub` serves
that file from a private Hugging Face cache folder in offline mode, so nothing is
downloaded and nothing is written inside the installed package.

``df_gamed.csv`` is taken from ``alpaca_eval/df_gamed.csv`` in the data folder or from
the user's Hugging Face hub cache when present. Otherwise it is reconstructed
(:func:`reconstruct_df_gamed`) because its judge annotations are published only on
the Hugging Face Hub. Metrics then carry ``lc_gamed_source = "reconstructed"``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from rspo_bench.data import (
    ALPACA_EVAL_BASELINE,
    ALPACA_EVAL_DIFFICULTY,
    ALPACA_EVAL_GAMED_OUTPUTS,
    ALPACA_EVAL_GAMED_WEIGHTS,
    DataFileNotFoundError,
    data_file,
    load_alpaca_eval_instructions,
    read_json,
)
from rspo_bench.logs import get_logger

if TYPE_CHECKING:
    from rspo_bench.preference.offline_judge import OfflineJudge

logger = get_logger(__name__)

NUM_INSTRUCTIONS = 805
BASELINE_GENERATOR = "gpt4_1106_preview"
GLM_NAME = "length_controlled_v1"

ALPACA_EVAL_DF_GAMED = "alpaca_eval/df_gamed.csv"
GAMED_MODELS = ("gpt4_1106_preview_verbose", "gpt4_1106_preview_concise")
HUB_REPO_FOLDER = "datasets--tatsu-lab--alpaca_eval"
DF_GAMED_FILENAME = "df_gamed.csv"
DF_GAMED_COLUMNS = (
    "index",
    "preference",
    "std_delta_len",
    "instruction_difficulty",
    "not_gamed_baseline",
    "model",
)
GAMED_SOURCE_FILE = "df_gamed.csv"
GAMED_SOURCE_RECONSTRUCTED = "reconstructed"
# Bump when reconstruct_df_gamed changes its output, so that old cache entries are not reused.
RECONSTRUCTION_VERSION = 1

CACHE_ENV_VAR = "RSPO_BENCH_CACHE"
DEFAULT_CACHE_ROOT = Path("~/.cache/rspo-bench")
HUB_CACHE_SUBDIR = "alpaca_eval_hub"

WEIGHT_LENGTH = "np.tanh(std_delta_len)"
WEIGHT_DIFFICULTY = "instruction_difficulty"
WEIGHT_NOT_GAMED = "not_gamed_baseline.astype(float)"

_MAX_LISTED = 10


def _import_alpaca_eval() -> tuple[Any, Any]:
    """Import alpaca_eval lazily (1.4 s) and without its pkg_resources deprecation warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        import alpaca_eval.constants
        from alpaca_eval.metrics import glm_winrate
    return alpaca_eval.constants, glm_winrate


# Alignment with the canonical instructions


def _listed(values: Sequence[Any]) -> str:
    text = ", ".join(str(value) for value in values[:_MAX_LISTED])
    if len(values) > _MAX_LISTED:
        text += f" and {len(values) - _MAX_LISTED} more"
    return text


def _check_indices(indices: Sequence[Any]) -> list[int]:
    problems = []
    checked = []
    for position, value in enumerate(indices):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            problems.append(f"position {position}: {value!r} is not an integer")
            continue
        value = int(value)
        if not 0 <= value < NUM_INSTRUCTIONS:
            problems.append(f"position {position}: {value} is outside 0..{NUM_INSTRUCTIONS - 1}")
        elif checked and value <= checked[-1]:
            problems.append(f"position {position}: {value} is not above the previous index {checked[-1]}")
        checked.append(value)
    if problems:
        raise ValueError(
            "invalid AlpacaEval subset indices (expected distinct canonical indices in increasing order): "
            + "; ".join(problems[:_MAX_LISTED])
        )
    return checked


def check_alignment(
    instructions: Sequence[str],
    *,
    indices: Sequence[int] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[int]:
    """Check that row r contains the canonical instruction ``indices[r]`` and return the indices.

    Without ``indices`` the rows must be all 805 AlpacaEval instructions in canonical order.
    Raises ValueError that names the unknown, duplicated, missing and misplaced rows.
    """
    canonical_records = load_alpaca_eval_instructions(data_dir)
    canonical = [record["instruction"] for record in canonical_records]
    if len(canonical) != NUM_INSTRUCTIONS or len(set(canonical)) != NUM_INSTRUCTIONS:
        raise ValueError(
            f"invalid canonical instruction file: expected {NUM_INSTRUCTIONS} distinct instructions, got "
            f"{len(canonical)} with {len(set(canonical))} distinct. Replace it with the AlpacaEval 2.0 "
            f"instruction set."
        )
    expected_indices = list(range(NUM_INSTRUCTIONS)) if indices is None else _check_indices(indices)
    expected = set(expected_indices)
    canonical_position = {instruction: index for index, instruction in enumerate(canonical)}

    unknown, outside_subset, duplicated = [], [], []
    first_row: dict[int, int] = {}
    for row, instruction in enumerate(instructions):
        index = canonical_position.get(instruction)
        if index is None:
            unknown.append(row)
        elif index in first_row:
            duplicated.append(f"{row} (same as row {first_row[index]}, canonical index {index})")
        else:
            first_row[index] = row
            if index not in expected:
                outside_subset.append(f"{row} (canonical index {index})")
    missing = [index for index in expected_indices if index not in first_row]

    problems = []
    if unknown:
        problems.append(f"rows not among the AlpacaEval instructions: {_listed(unknown)}")
    if duplicated:
        problems.append(f"duplicated rows: {_listed(duplicated)}")
    if outside_subset:
        problems.append(f"rows outside the declared subset: {_listed(outside_subset)}")
    if missing:
        problems.append(f"missing canonical indices: {_listed(missing)}")
    if not problems:
        misplaced = [
            f"{row} (canonical index {canonical_position[instruction]}, expected {expected_index})"
            for row, (instruction, expected_index) in enumerate(zip(instructions, expected_indices))
            if canonical_position[instruction] != expected_index
        ]
        if misplaced:
            problems.append(f"rows out of canonical order: {_listed(misplaced)}")
    if problems:
        raise ValueError(
            f"{len(instructions)} rows do not match the {len(expected_indices)} expected AlpacaEval "
            f"instructions: {'; '.join(problems)}. Pass the instructions in canonical order "
            f"(load_alpaca_eval_instructions) and declare a subset with its canonical indices."
        )
    return expected_indices


def _check_preferences(preferences: np.ndarray, *, allow_nan: bool) -> None:
    valid = (preferences == 0) | ((preferences >= 1) & (preferences <= 2))
    if allow_nan:
        valid |= np.isnan(preferences)
    invalid_rows = np.flatnonzero(~valid).tolist()
    if invalid_rows:
        raise ValueError(
            f"invalid preferences: expected values in [1, 2] (1 = baseline wins, 2 = model wins) or 0 for a "
            f"draw. Invalid rows: {_listed([f'{row} ({preferences[row]!r})' for row in invalid_rows])}"
        )


def annotations_frame(
    instructions: Sequence[str],
    model_outputs: Sequence[str],
    baseline_outputs: Sequence[str],
    preferences: Sequence[float] | np.ndarray,
    *,
    generator: str,
    annotator: str,
    baseline_generator: str = BASELINE_GENERATOR,
    indices: Sequence[int] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Build annotations in alpaca_eval's format: output_1 is the baseline, output_2 the model.

    ``preferences`` lie in [1, 2] (1 = baseline wins, 2 = model wins, soft values allowed)
    or are 0 for a draw. ``indices`` declares a subset of canonical indices in increasing
    order. Raises ValueError naming the rows when the inputs are misaligned.
    """
    lengths = {
        "instructions": len(instructions),
        "model_outputs": len(model_outputs),
        "baseline_outputs": len(baseline_outputs),
        "preferences": len(preferences),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have one entry per instruction, got lengths {lengths}")
    row_indices = check_alignment(instructions, indices=indices, data_dir=data_dir)
    preference_values = np.asarray(preferences, dtype=np.float64)
    _check_preferences(preference_values, allow_nan=False)

    datasets = [record["dataset"] for record in load_alpaca_eval_instructions(data_dir)]
    return pd.DataFrame(
        {
            "index": row_indices,
            "dataset": [datasets[index] for index in row_indices],
            "instruction": list(instructions),
            "output_1": list(baseline_outputs),
            "output_2": list(model_outputs),
            "generator_1": baseline_generator,
            "generator_2": generator,
            "annotator": annotator,
            "preference": preference_values,
        }
    )


def judge_outputs(
    judge: OfflineJudge,
    instructions: Sequence[str],
    model_outputs: Sequence[str],
    baseline_outputs: Sequence[str],
) -> np.ndarray:
    """Return alpaca_eval preferences ``1 + P(model output preferred over baseline output)`` from a judge."""
    return 1.0 + judge.batch_preferences(instructions, model_outputs, baseline_outputs)


# df_gamed.csv: the length-gamed baselines' annotations


def _logistic(x: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -x))


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as handle:
            return handle.read()
    return path.read_bytes()


def _load_difficulty(data_dir: str | os.PathLike[str] | None) -> pd.Series:
    path = data_file(ALPACA_EVAL_DIFFICULTY, data_dir)
    frame = pd.read_csv(path)
    if "index" not in frame or "instruction_difficulty" not in frame:
        raise ValueError(
            f"{path}: expected columns 'index' and 'instruction_difficulty', got {list(frame.columns)}"
        )
    if frame["index"].tolist() != list(range(NUM_INSTRUCTIONS)):
        raise ValueError(f"{path}: the 'index' column must be 0..{NUM_INSTRUCTIONS - 1} in order")
    return frame["instruction_difficulty"].astype(float).reset_index(drop=True)


def reconstruct_df_gamed(data_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Rebuild alpaca_eval's ``df_gamed.csv`` from the data folder, since its annotations are Hub-only.

    The two length-gamed baselines g are GPT-4 Turbo prompted to be verbose or concise.
    Their features are computed as alpaca_eval computes them for any model. For instruction i,
    ``std_delta_len_i = d_i / std(d)`` with ``d_i = len(baseline_i) - len(g_i)`` in characters
    and the sample standard deviation over the 805 rows. The instruction difficulty gamma_i
    comes from ``instruction_difficulty.csv``. In place of the judge's annotation, the preference is
    the prediction of g's own published GLM for its own outputs::

        preference_i = sigmoid(w_len * tanh(std_delta_len_i) + w_difficulty * gamma_i + w_not_gamed)

    with the coefficients of ``glm_weights_gamed_baselines.csv``. The constant w_not_gamed is
    included because g's own rows carried ``not_gamed_baseline = True`` when those coefficients
    were fitted. The rows are flagged ``not_gamed_baseline = False`` as in the upstream file.
    Rows of the verbose model come first, so the first 805 rows contain indices 0..804 in order,
    which is where ``get_length_controlled_winrate`` looks up each index's difficulty.

    NOTE: GLM predictions replace the real judge annotations, so LC win rates are approximate.
    With alpaca-eval 0.6.6 they exceed the published ones by 0.059 (alpaca-7b), 0.045
    (OpenHermes-2.5-Mistral-7B) and 0.022 (FuseChat-Llama-3.1-8B-Instruct) points.
    """
    instructions = [record["instruction"] for record in load_alpaca_eval_instructions(data_dir)]
    baseline = read_json(data_file(ALPACA_EVAL_BASELINE, data_dir))
    check_alignment([record["instruction"] for record in baseline], data_dir=data_dir)
    baseline_lengths = np.array([len(record["output"]) for record in baseline], dtype=np.float64)
    difficulty = _load_difficulty(data_dir).to_numpy()

    weights_path = data_file(ALPACA_EVAL_GAMED_WEIGHTS, data_dir)
    weights = pd.read_csv(weights_path, index_col=0)
    for column in (WEIGHT_LENGTH, WEIGHT_DIFFICULTY, WEIGHT_NOT_GAMED):
        if column not in weights.columns:
            raise ValueError(f"{weights_path}: missing GLM coefficient column {column!r}")

    frames = []
    for model in GAMED_MODELS:
        if model not in weights.index:
            raise ValueError(f"{weights_path}: no GLM coefficients for the gamed baseline {model!r}")
        outputs = read_json(data_file(ALPACA_EVAL_GAMED_OUTPUTS.format(name=model), data_dir))
        check_alignment([record["instruction"] for record in outputs], data_dir=data_dir)
        gamed_lengths = np.array([len(record["output"]) for record in outputs], dtype=np.float64)
        delta_length = baseline_lengths - gamed_lengths
        std_delta_len = delta_length / np.std(delta_length, ddof=1)
        coefficients = weights.loc[model]
        logits = (
            coefficients[WEIGHT_LENGTH] * np.tanh(std_delta_len)
            + coefficients[WEIGHT_DIFFICULTY] * difficulty
            + coefficients[WEIGHT_NOT_GAMED]
        )
        frames.append(
            pd.DataFrame(
                {
                    "index": np.arange(len(instructions)),
                    "preference": _logistic(logits),
                    "std_delta_len": std_delta_len,
                    "instruction_difficulty": difficulty,
                    "not_gamed_baseline": False,
                    "model": model,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _validate_df_gamed(content: bytes, origin: Path, data_dir: str | os.PathLike[str] | None) -> None:
    frame = pd.read_csv(io.BytesIO(content))
    missing = [column for column in DF_GAMED_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"{origin}: df_gamed.csv lacks the columns {missing} that alpaca_eval's GLM reads")
    first_rows = frame.drop_duplicates("index")
    if first_rows["index"].tolist() != list(range(NUM_INSTRUCTIONS)):
        raise ValueError(
            f"{origin}: the first occurrences of 'index' must be 0..{NUM_INSTRUCTIONS - 1} in order, because "
            f"alpaca_eval looks up each instruction's difficulty by row label"
        )
    try:
        difficulty = _load_difficulty(data_dir).to_numpy()
    except DataFileNotFoundError:
        return
    largest_gap = float(np.max(np.abs(first_rows["instruction_difficulty"].to_numpy() - difficulty)))
    if largest_gap > 1e-6:
        logger.warning(
            "%s: instruction_difficulty differs from the data folder's by up to %.3g, and the GLM uses "
            "df_gamed's values",
            origin,
            largest_gap,
        )


# Private offline Hugging Face cache


@dataclass(frozen=True)
class OfflineHub:
    """Private Hugging Face cache folder that contains one ``df_gamed.csv`` snapshot."""

    cache_dir: Path
    df_gamed_path: Path
    source: str


def resolve_cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the rspo-bench cache folder: the argument, ``$RSPO_BENCH_CACHE`` or ``~/.cache/rspo-bench``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    return DEFAULT_CACHE_ROOT.expanduser()


def _user_hub_df_gamed() -> Path | None:
    """Find a downloaded df_gamed.csv in alpaca_eval's cache folder or the default Hugging Face hub cache."""
    alpaca_constants, _ = _import_alpaca_eval()
    from huggingface_hub import constants as hub_constants

    candidates = [alpaca_constants.DEFAULT_CACHE_DIR, hub_constants.HF_HUB_CACHE]
    for cache in candidates:
        if not cache:
            continue
        repo = Path(cache).expanduser() / HUB_REPO_FOLDER
        ref = repo / "refs" / "main"
        if ref.is_file():
            snapshot = repo / "snapshots" / ref.read_text().strip() / DF_GAMED_FILENAME
            if snapshot.is_file():
                return snapshot
        snapshots = sorted(
            repo.glob(f"snapshots/*/{DF_GAMED_FILENAME}"), key=lambda path: path.stat().st_mtime
        )
        if snapshots:
            return snapshots[-1]
    return None


def _write_atomic(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as handle:
        handle.write(content)
        temporary = Path(handle.name)
    try:
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def _digest_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256(f"reconstruction-v{RECONSTRUCTION_VERSION}".encode())
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def prepare_offline_hub(
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> OfflineHub:
    """Build, or reuse, the private hub cache that serves ``df_gamed.csv`` to alpaca_eval.

    The file comes from the data folder, else the user's hub cache, else
    :func:`reconstruct_df_gamed`. It is stored once per content digest under
    ``<cache root>/alpaca_eval_hub/`` in the hub layout ``datasets--tatsu-lab--alpaca_eval/
    {refs/main, snapshots/<rev>/df_gamed.csv}``, each file written to a temporary name
    and then renamed.
    """
    real_file: Path | None
    try:
        real_file = data_file(ALPACA_EVAL_DF_GAMED, data_dir)
    except DataFileNotFoundError:
        real_file = _user_hub_df_gamed()

    content: bytes | None = None
    if real_file is not None:
        source = GAMED_SOURCE_FILE
        content = _read_bytes(real_file)
        _validate_df_gamed(content, real_file, data_dir)
        key = f"file-{hashlib.sha256(content).hexdigest()[:16]}"
        logger.info("using the published df_gamed.csv at %s", real_file)
    else:
        source = GAMED_SOURCE_RECONSTRUCTED
        inputs = [
            data_file(ALPACA_EVAL_BASELINE, data_dir),
            data_file(ALPACA_EVAL_DIFFICULTY, data_dir),
            data_file(ALPACA_EVAL_GAMED_WEIGHTS, data_dir),
            *(data_file(ALPACA_EVAL_GAMED_OUTPUTS.format(name=model), data_dir) for model in GAMED_MODELS),
        ]
        key = f"reconstructed-{_digest_files(inputs)[:16]}"

    hub_dir = resolve_cache_root(cache_dir) / HUB_CACHE_SUBDIR / key
    repo = hub_dir / HUB_REPO_FOLDER
    ref = repo / "refs" / "main"
    if ref.is_file():
        snapshot = repo / "snapshots" / ref.read_text().strip() / DF_GAMED_FILENAME
        if snapshot.is_file():
            return OfflineHub(cache_dir=hub_dir, df_gamed_path=snapshot, source=source)

    if content is None:
        logger.info("reconstructing df_gamed.csv from the gamed baselines' outputs and GLM coefficients")
        content = reconstruct_df_gamed(data_dir).to_csv(index=False).encode("utf-8")
    # The hub cache names snapshot folders by 40-hex commit hashes, so the SHA-1 of the content serves as one.
    revision = hashlib.sha1(content, usedforsecurity=False).hexdigest()
    snapshot = repo / "snapshots" / revision / DF_GAMED_FILENAME
    _write_atomic(snapshot, content)
    _write_atomic(ref, revision.encode("ascii"))
    logger.info("wrote the offline alpaca_eval hub cache %s (df_gamed source: %s)", hub_dir, source)
    return OfflineHub(cache_dir=hub_dir, df_gamed_path=snapshot, source=source)


@contextmanager
def offline_alpaca_eval_hub(
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Iterator[OfflineHub]:
    """Point alpaca_eval's hub downloads at the private cache, in offline mode, for the ``with`` block.

    Sets ``alpaca_eval.constants.DEFAULT_CACHE_DIR`` to the private cache,
    ``DATASETS_FORCE_DOWNLOAD`` to False, ``huggingface_hub.constants.HF_HUB_OFFLINE`` and
    the ``HF_HUB_OFFLINE`` environment variable, and restores all four on exit. In offline
    mode ``hf_hub_download`` sends no request and returns the snapshot named by ``refs/main``.
    NOTE: these are process-wide settings, so the block is not safe to run from several threads.
    """
    hub = prepare_offline_hub(data_dir, cache_dir)
    alpaca_constants, _ = _import_alpaca_eval()
    from huggingface_hub import constants as hub_constants

    saved_cache_dir = alpaca_constants.DEFAULT_CACHE_DIR
    saved_force_download = alpaca_constants.DATASETS_FORCE_DOWNLOAD
    saved_offline = hub_constants.HF_HUB_OFFLINE
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    alpaca_constants.DEFAULT_CACHE_DIR = str(hub.cache_dir)
    alpaca_constants.DATASETS_FORCE_DOWNLOAD = False
    hub_constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield hub
    finally:
        alpaca_constants.DEFAULT_CACHE_DIR = saved_cache_dir
        alpaca_constants.DATASETS_FORCE_DOWNLOAD = saved_force_download
        hub_constants.HF_HUB_OFFLINE = saved_offline
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


# Metrics

_REQUIRED_COLUMNS = ("instruction", "output_1", "output_2", "generator_1", "generator_2", "preference")


def _prepare_annotations(annotations: pd.DataFrame, data_dir: str | os.PathLike[str] | None) -> pd.DataFrame:
    missing = [column for column in _REQUIRED_COLUMNS if column not in annotations.columns]
    if missing:
        raise ValueError(f"annotations are missing the columns {missing}. Build them with annotations_frame.")
    for column in ("generator_1", "generator_2"):
        names = annotations[column].unique().tolist()
        if len(names) != 1:
            raise ValueError(f"annotations must have one {column} value, got {_listed(names)}")

    frame = annotations.reset_index(drop=True).copy()
    instructions = frame["instruction"].tolist()
    if "index" in frame.columns:
        check_alignment(instructions, indices=frame["index"].tolist(), data_dir=data_dir)
    else:
        # Published annotation files have no index column, so they must contain all 805 rows in order.
        frame["index"] = check_alignment(instructions, data_dir=data_dir)
    frame["index"] = frame["index"].astype(np.int64)
    frame["preference"] = frame["preference"].astype(np.float64)
    _check_preferences(frame["preference"].to_numpy(), allow_nan=True)
    return frame


def compute_metrics(
    annotations: pd.DataFrame,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Compute AlpacaEval 2.0 raw and length-controlled win rates (percent) with alpaca_eval's code.

    ``annotations`` is a frame from :func:`annotations_frame`, or a published annotation file
    with all 805 rows in canonical order (no ``index`` column). Rows with a NaN preference
    are dropped from the raw win rate, as alpaca_eval does. For a subset of the 805
    instructions the GLM is fit on the subset's rows plus all rows of the gamed baselines,
    so its LC win rate is not comparable to the leaderboard's.
    """
    frame = _prepare_annotations(annotations, data_dir)
    _, glm_winrate = _import_alpaca_eval()

    start = time.perf_counter()
    with offline_alpaca_eval_hub(data_dir, cache_dir) as hub, warnings.catch_warnings():
        # alpaca_eval 0.6.6 passes LogisticRegressionCV arguments that scikit-learn 1.9 deprecates,
        # and callers cannot act on those FutureWarnings.
        warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
        raw = glm_winrate.get_length_controlled_winrate(
            frame,
            glm_name=GLM_NAME,
            save_weights_dir=None,
            is_add_glm_preference_inplace=False,
        )
    elapsed = time.perf_counter() - start

    is_subset = len(frame) < NUM_INSTRUCTIONS
    lc_standard_error = raw["lc_standard_error"]
    metrics = {
        "win_rate": float(raw["win_rate"]),
        "standard_error": float(raw["standard_error"]),
        "n_wins": int(raw["n_wins"]),
        "n_wins_base": int(raw["n_wins_base"]),
        "n_draws": int(raw["n_draws"]),
        "n_total": int(raw["n_total"]),
        "discrete_win_rate": float(raw["discrete_win_rate"]),
        # Mean characters of the model outputs. The alpaca_eval leaderboard truncates it to an integer.
        "avg_length": float(frame["output_2"].str.len().mean()),
        "lc_win_rate": float(raw["length_controlled_winrate"]),
        "lc_standard_error": float(lc_standard_error) if not pd.isna(lc_standard_error) else math.nan,
        "lc_gamed_source": hub.source,
        "is_subset": is_subset,
        "generator": str(frame["generator_2"].iloc[0]),
    }
    logger.info(
        "AlpacaEval 2.0 for %s on %d instructions: win rate %.2f, LC win rate %.2f (df_gamed %s, GLM %.2f s)",
        metrics["generator"],
        len(frame),
        metrics["win_rate"],
        metrics["lc_win_rate"],
        hub.source,
        elapsed,
    )
    if is_subset:
        logger.warning(
            "LC win rate of %s computed on %d of %d instructions, so it is not comparable to the leaderboard",
            metrics["generator"],
            len(frame),
            NUM_INSTRUCTIONS,
        )
    return metrics
