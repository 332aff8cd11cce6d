"""Tests of the offline AlpacaEval 2.0 metrics against alpaca_eval's published leaderboard."""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rspo_bench.data import (
    data_file,
    load_alpaca_eval_baseline,
    load_alpaca_eval_instructions,
    read_json,
)
from rspo_bench.evals.alpaca_eval2 import (
    ALPACA_EVAL_DF_GAMED,
    CACHE_ENV_VAR,
    GAMED_SOURCE_FILE,
    GAMED_SOURCE_RECONSTRUCTED,
    HUB_CACHE_SUBDIR,
    annotations_frame,
    check_alignment,
    compute_metrics,
    judge_outputs,
    offline_alpaca_eval_hub,
    prepare_offline_hub,
    reconstruct_df_gamed,
)
from rspo_bench.preference.offline_judge import OfflineJudge

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    import alpaca_eval
    import alpaca_eval.constants
    from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate
from huggingface_hub import constants as hub_constants

PACKAGE_DIR = Path(alpaca_eval.__file__).parent
LEADERBOARD = PACKAGE_DIR / "leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
MODELS = ("alpaca-7b", "OpenHermes-2.5-Mistral-7B", "FuseChat-Llama-3.1-8B-Instruct")

# LC win rate with the reconstructed df_gamed.csv minus the published length_controlled_winrate,
# in points, measured with alpaca-eval 0.6.6, scikit-learn 1.9.1 and pandas 3.1.1. The raw win
# rates match the leaderboard to within 1e-14.
MEASURED_LC_ERROR = {
    "alpaca-7b": 0.0591,
    "OpenHermes-2.5-Mistral-7B": 0.0447,
    "FuseChat-Llama-3.1-8B-Instruct": 0.0215,
}
LC_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Private rspo-bench cache. The user's Hugging Face caches are hidden to force a reconstruction."""
    empty_hub = tmp_path_factory.mktemp("empty_hf_hub")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_constants, "HF_HUB_CACHE", str(empty_hub))
        patch.setattr(alpaca_eval.constants, "DEFAULT_CACHE_DIR", None)
        yield tmp_path_factory.mktemp("rspo_bench_cache")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test on any DNS lookup or socket connection, with Hugging Face offline mode off."""
    # The test configuration enables offline mode for the whole session. Turning it off here
    # checks that offline_alpaca_eval_hub enables it for alpaca_eval's download.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def reject_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", reject_connection)
    monkeypatch.setattr(socket.socket, "connect_ex", reject_connection)
    monkeypatch.setattr(socket, "create_connection", reject_connection)
    monkeypatch.setattr(socket, "getaddrinfo", reject_connection)


def published_annotations(data_dir: Path, model: str) -> pd.DataFrame:
    relative = f"alpaca_eval/models/{model}/weighted_alpaca_eval_gpt4_turbo/annotations.json.gz"
    path = data_file(relative, data_dir)
    return pd.DataFrame(read_json(path))


def package_listing() -> dict[str, tuple[int, int]]:
    listing = {}
    for path in sorted(PACKAGE_DIR.rglob("*")):
        status = path.stat()
        listing[str(path.relative_to(PACKAGE_DIR))] = (status.st_mtime_ns, status.st_size)
    return listing


@pytest.fixture(scope="module")
def canonical(data_dir: Path) -> tuple[list[str], list[str]]:
    instructions = [record["instruction"] for record in load_alpaca_eval_instructions(data_dir)]
    baseline = [record["output"] for record in load_alpaca_eval_baseline(data_dir)]
    return instructions, baseline


# Published leaderboard


@pytest.mark.parametrize("model", MODELS)
def test_published_metrics_reproduced(model: str, data_dir: Path, cache_dir: Path, no_network: None) -> None:
    published = pd.read_csv(LEADERBOARD, index_col=0).loc[model]
    metrics = compute_metrics(published_annotations(data_dir, model), data_dir=data_dir, cache_dir=cache_dir)

    assert metrics["lc_gamed_source"] == GAMED_SOURCE_RECONSTRUCTED
    assert metrics["is_subset"] is False
    assert metrics["generator"] == model
    assert metrics["win_rate"] == pytest.approx(published["win_rate"], abs=1e-9)
    assert metrics["standard_error"] == pytest.approx(published["standard_error"], abs=1e-9)
    assert metrics["discrete_win_rate"] == pytest.approx(published["discrete_win_rate"], abs=1e-9)
    assert metrics["n_wins"] == published["n_wins"]
    assert metrics["n_wins_base"] == published["n_wins_base"]
    assert metrics["n_draws"] == published["n_draws"]
    assert metrics["n_total"] == published["n_total"]
    assert int(metrics["avg_length"]) == published["avg_length"]
    lc_error = metrics["lc_win_rate"] - published["length_controlled_winrate"]
    assert abs(lc_error) < LC_TOLERANCE
    # Catches a change of the reconstruction or of alpaca_eval's GLM fit.
    assert lc_error == pytest.approx(MEASURED_LC_ERROR[model], abs=1e-3)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lc_equals_direct_call(
    data_dir: Path, cache_dir: Path, canonical: tuple[list[str], list[str]]
) -> None:
    instructions, baseline = canonical
    published = published_annotations(data_dir, "OpenHermes-2.5-Mistral-7B")
    frame = annotations_frame(
        instructions,
        published["output_2"].tolist(),
        baseline,
        published["preference"].to_numpy(),
        generator="OpenHermes-2.5-Mistral-7B",
        annotator="weighted_alpaca_eval_gpt4_turbo",
        data_dir=data_dir,
    )
    metrics = compute_metrics(frame, data_dir=data_dir, cache_dir=cache_dir)
    with offline_alpaca_eval_hub(data_dir, cache_dir):
        direct = get_length_controlled_winrate(
            frame.copy(), glm_name="length_controlled_v1", save_weights_dir=None
        )

    assert metrics["lc_win_rate"] == pytest.approx(direct["length_controlled_winrate"], abs=1e-9)
    assert metrics["lc_standard_error"] == pytest.approx(direct["lc_standard_error"], abs=1e-9)
    assert metrics["win_rate"] == pytest.approx(direct["win_rate"], abs=1e-9)


def test_package_folder_unchanged(data_dir: Path, cache_dir: Path, no_network: None) -> None:
    before = package_listing()
    compute_metrics(published_annotations(data_dir, "alpaca-7b"), data_dir=data_dir, cache_dir=cache_dir)
    after = package_listing()

    assert sorted(set(after) - set(before)) == []
    assert sorted(set(before) - set(after)) == []
    assert [name for name in before if before[name] != after[name]] == []


def test_offline_hub_restores_settings(data_dir: Path, cache_dir: Path, no_network: None) -> None:
    saved = (
        alpaca_eval.constants.DEFAULT_CACHE_DIR,
        alpaca_eval.constants.DATASETS_FORCE_DOWNLOAD,
        hub_constants.HF_HUB_OFFLINE,
        os.environ.get("HF_HUB_OFFLINE"),
    )
    with offline_alpaca_eval_hub(data_dir, cache_dir) as hub:
        assert alpaca_eval.constants.DEFAULT_CACHE_DIR == str(hub.cache_dir)
        assert hub_constants.HF_HUB_OFFLINE is True
        assert os.environ["HF_HUB_OFFLINE"] == "1"

    restored = (
        alpaca_eval.constants.DEFAULT_CACHE_DIR,
        alpaca_eval.constants.DATASETS_FORCE_DOWNLOAD,
        hub_constants.HF_HUB_OFFLINE,
        os.environ.get("HF_HUB_OFFLINE"),
    )
    assert restored == saved
    assert hub_constants.HF_HUB_OFFLINE is False
    assert "HF_HUB_OFFLINE" not in os.environ


# Offline hub cache and df_gamed.csv


def test_hub_cache_layout_and_reuse(data_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    first = prepare_offline_hub(data_dir, tmp_path)
    repo = first.cache_dir / "datasets--tatsu-lab--alpaca_eval"
    revision = (repo / "refs" / "main").read_text()
    modified = first.df_gamed_path.stat().st_mtime_ns
    second = prepare_offline_hub(data_dir, tmp_path)

    assert first.source == GAMED_SOURCE_RECONSTRUCTED
    assert first.cache_dir.parent == tmp_path / HUB_CACHE_SUBDIR
    assert first.df_gamed_path == repo / "snapshots" / revision / "df_gamed.csv"
    assert len(revision) == 40
    assert second == first
    assert second.df_gamed_path.stat().st_mtime_ns == modified
    assert [path.name for path in tmp_path.rglob("*.tmp")] == []


def test_cache_env_var(
    data_dir: Path, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    hub = prepare_offline_hub(data_dir)

    assert hub.cache_dir.parent == tmp_path / HUB_CACHE_SUBDIR
    assert hub.df_gamed_path.is_file()


def test_reconstructed_df_gamed_columns(data_dir: Path) -> None:
    frame = reconstruct_df_gamed(data_dir)
    difficulty = pd.read_csv(data_file("alpaca_eval/instruction_difficulty.csv", data_dir))

    assert len(frame) == 2 * 805
    assert list(frame.columns) == [
        "index",
        "preference",
        "std_delta_len",
        "instruction_difficulty",
        "not_gamed_baseline",
        "model",
    ]
    assert frame["index"].iloc[:805].tolist() == list(range(805))
    assert frame["model"].unique().tolist() == ["gpt4_1106_preview_verbose", "gpt4_1106_preview_concise"]
    assert not frame["not_gamed_baseline"].any()
    assert frame["preference"].between(0, 1).all()
    np.testing.assert_array_equal(
        frame["instruction_difficulty"].iloc[:805], difficulty["instruction_difficulty"]
    )
    for _, rows in frame.groupby("model"):
        assert rows["std_delta_len"].std() == pytest.approx(1.0)
    # The verbose baseline writes longer outputs than the baseline, so its length gap is mostly negative.
    verbose = frame[frame["model"] == "gpt4_1106_preview_verbose"]
    assert verbose["std_delta_len"].mean() < 0


def test_df_gamed_from_data_folder(data_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    """A df_gamed.csv in the data folder is used as published instead of the reconstruction."""
    local_data = tmp_path / "data"
    for relative in [
        "alpaca_eval/alpaca_eval_instructions.jsonl",
        "alpaca_eval/instruction_difficulty.csv",
        "alpaca_eval/baseline/gpt4_1106_preview/model_outputs.json.gz",
    ]:
        target = local_data / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(data_file(relative, data_dir))
    reconstructed = reconstruct_df_gamed(data_dir)
    reconstructed.to_csv(local_data / ALPACA_EVAL_DF_GAMED, index=False)

    annotations = published_annotations(data_dir, "OpenHermes-2.5-Mistral-7B")
    from_file = compute_metrics(annotations, data_dir=local_data, cache_dir=tmp_path / "cache")
    rebuilt = compute_metrics(annotations, data_dir=data_dir, cache_dir=cache_dir)

    assert from_file["lc_gamed_source"] == GAMED_SOURCE_FILE
    assert rebuilt["lc_gamed_source"] == GAMED_SOURCE_RECONSTRUCTED
    assert from_file["lc_win_rate"] == pytest.approx(rebuilt["lc_win_rate"], abs=1e-12)


def test_df_gamed_from_user_hub_cache(
    data_dir: Path, cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_hub = tmp_path / "hf_hub"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = user_hub / "datasets--tatsu-lab--alpaca_eval" / "snapshots" / revision / "df_gamed.csv"
    snapshot.parent.mkdir(parents=True)
    reconstruct_df_gamed(data_dir).to_csv(snapshot, index=False)
    (user_hub / "datasets--tatsu-lab--alpaca_eval" / "refs").mkdir()
    (user_hub / "datasets--tatsu-lab--alpaca_eval" / "refs" / "main").write_text(revision)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(user_hub))
    hub = prepare_offline_hub(data_dir, tmp_path / "cache")

    assert hub.source == GAMED_SOURCE_FILE
    assert hub.df_gamed_path.read_bytes() == snapshot.read_bytes()


def test_df_gamed_missing_columns_raise(data_dir: Path, tmp_path: Path) -> None:
    local_data = tmp_path / "data"
    (local_data / "alpaca_eval").mkdir(parents=True)
    (local_data / "alpaca_eval/alpaca_eval_instructions.jsonl").symlink_to(
        data_file("alpaca_eval/alpaca_eval_instructions.jsonl", data_dir)
    )
    reconstruct_df_gamed(data_dir).drop(columns=["std_delta_len"]).to_csv(
        local_data / ALPACA_EVAL_DF_GAMED, index=False
    )

    with pytest.raises(ValueError, match="std_delta_len"):
        prepare_offline_hub(local_data, tmp_path / "cache")


# Offline judge and subsets


def test_judge_outputs_metrics(
    data_dir: Path, cache_dir: Path, canonical: tuple[list[str], list[str]], no_network: None
) -> None:
    instructions, baseline = canonical
    records = read_json(data_file("alpaca_eval/models/alpaca-7b/model_outputs.json.gz", data_dir))
    outputs = [record["output"] for record in records]
    judge = OfflineJudge.fit_ultrafeedback(data_dir)
    preferences = judge_outputs(judge, instructions, outputs, baseline)
    frame = annotations_frame(
        instructions,
        outputs,
        baseline,
        preferences,
        generator="alpaca-7b",
        annotator=judge.name,
        data_dir=data_dir,
    )
    metrics = compute_metrics(frame, data_dir=data_dir, cache_dir=cache_dir)

    assert preferences.shape == (805,)
    assert np.all((preferences > 1) & (preferences < 2))
    assert frame["annotator"].unique().tolist() == [judge.name]
    assert metrics["win_rate"] == pytest.approx(100 * (preferences.mean() - 1), abs=1e-9)
    assert metrics["n_total"] == 805
    assert 0 < metrics["lc_win_rate"] < 100


def test_subset_metrics(
    data_dir: Path, cache_dir: Path, canonical: tuple[list[str], list[str]], no_network: None
) -> None:
    instructions, baseline = canonical
    published = published_annotations(data_dir, "FuseChat-Llama-3.1-8B-Instruct")
    subset = list(range(0, 805, 8))
    frame = annotations_frame(
        [instructions[index] for index in subset],
        [published["output_2"].iloc[index] for index in subset],
        [baseline[index] for index in subset],
        published["preference"].to_numpy()[subset],
        generator="FuseChat-Llama-3.1-8B-Instruct",
        annotator="weighted_alpaca_eval_gpt4_turbo",
        indices=subset,
        data_dir=data_dir,
    )
    metrics = compute_metrics(frame, data_dir=data_dir, cache_dir=cache_dir)

    assert frame["index"].tolist() == subset
    assert metrics["is_subset"] is True
    assert metrics["n_total"] == len(subset)
    subset_preferences = published["preference"].to_numpy()[subset]
    assert metrics["win_rate"] == pytest.approx(100 * (subset_preferences.mean() - 1), abs=1e-9)
    assert np.isfinite(metrics["lc_win_rate"])
    assert 0 < metrics["lc_win_rate"] < 100


# Misaligned inputs


def _full_frame_inputs(
    data_dir: Path, canonical: tuple[list[str], list[str]]
) -> tuple[list[str], list[str], list[str], np.ndarray]:
    instructions, baseline = canonical
    published = published_annotations(data_dir, "alpaca-7b")
    outputs = published["output_2"].tolist()
    return list(instructions), outputs, list(baseline), published["preference"].to_numpy()


def _drop(values: list, row: int) -> list:
    return values[:row] + values[row + 1 :]


def test_dropped_row_raises(data_dir: Path, canonical: tuple[list[str], list[str]]) -> None:
    instructions, outputs, baseline, preferences = _full_frame_inputs(data_dir, canonical)

    with pytest.raises(ValueError, match=r"missing canonical indices: 10\b"):
        annotations_frame(
            _drop(instructions, 10),
            _drop(outputs, 10),
            _drop(baseline, 10),
            np.delete(preferences, 10),
            generator="alpaca-7b",
            annotator="test",
            data_dir=data_dir,
        )


def test_duplicated_row_raises(data_dir: Path, canonical: tuple[list[str], list[str]]) -> None:
    instructions, outputs, baseline, preferences = _full_frame_inputs(data_dir, canonical)
    # Row 5 is repeated in place of row 6.
    instructions[6], outputs[6], baseline[6] = instructions[5], outputs[5], baseline[5]

    expected = r"duplicated rows: 6 \(same as row 5, canonical index 5\)"
    with pytest.raises(ValueError, match=expected) as raised:
        annotations_frame(
            instructions,
            outputs,
            baseline,
            preferences,
            generator="alpaca-7b",
            annotator="test",
            data_dir=data_dir,
        )
    assert "missing canonical indices: 6" in str(raised.value)


def test_changed_instruction_raises(data_dir: Path, canonical: tuple[list[str], list[str]]) -> None:
    instructions, outputs, baseline, preferences = _full_frame_inputs(data_dir, canonical)
    instructions[7] = instructions[7] + " Answer briefly."

    with pytest.raises(ValueError, match=r"rows not among the AlpacaEval instructions: 7\b"):
        annotations_frame(
            instructions,
            outputs,
            baseline,
            preferences,
            generator="alpaca-7b",
            annotator="test",
            data_dir=data_dir,
        )


def test_swapped_rows_raise(data_dir: Path) -> None:
    instructions = [record["instruction"] for record in load_alpaca_eval_instructions(data_dir)]
    instructions[3], instructions[4] = instructions[4], instructions[3]

    expected = r"rows out of canonical order: 3 \(canonical index 4, expected 3\), 4"
    with pytest.raises(ValueError, match=expected):
        check_alignment(instructions, data_dir=data_dir)


def test_compute_metrics_misaligned_raise(data_dir: Path, cache_dir: Path) -> None:
    published = published_annotations(data_dir, "alpaca-7b")
    dropped = published.drop(index=100)
    duplicated = pd.concat([published.iloc[:21], published.iloc[20:]], ignore_index=True)
    changed = published.copy()
    changed.loc[300, "instruction"] = "Write a haiku about rain."
    indexed = published.assign(index=range(805))
    wrong_index = indexed.copy()
    wrong_index.loc[50, "index"] = 49

    with pytest.raises(ValueError, match=r"missing canonical indices: 100\b"):
        compute_metrics(dropped, data_dir=data_dir, cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"duplicated rows: 21 \(same as row 20"):
        compute_metrics(duplicated, data_dir=data_dir, cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"rows not among the AlpacaEval instructions: 300\b"):
        compute_metrics(changed, data_dir=data_dir, cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"position 50: 49 is not above"):
        compute_metrics(wrong_index, data_dir=data_dir, cache_dir=cache_dir)


def test_subset_mismatch_raises(data_dir: Path, canonical: tuple[list[str], list[str]]) -> None:
    instructions, _ = canonical

    with pytest.raises(ValueError, match=r"rows outside the declared subset: 1 \(canonical index 3\)"):
        check_alignment([instructions[2], instructions[3]], indices=[2, 4], data_dir=data_dir)
    with pytest.raises(ValueError, match=r"position 1: 2 is not above"):
        check_alignment([instructions[2], instructions[2]], indices=[2, 2], data_dir=data_dir)
    with pytest.raises(ValueError, match=r"outside 0..804"):
        check_alignment([instructions[0]], indices=[805], data_dir=data_dir)


def test_invalid_inputs_raise(data_dir: Path, canonical: tuple[list[str], list[str]]) -> None:
    instructions, baseline = canonical
    preferences = np.full(805, 1.5)
    preferences[[4, 9]] = [0.5, np.nan]

    with pytest.raises(ValueError, match=r"Invalid rows: 4 \(.*0\.5.*\), 9 \(.*nan"):
        annotations_frame(
            instructions, baseline, baseline, preferences, generator="m", annotator="test", data_dir=data_dir
        )
    with pytest.raises(ValueError, match="one entry per instruction"):
        annotations_frame(
            instructions,
            baseline[:-1],
            baseline,
            np.full(805, 1.5),
            generator="m",
            annotator="test",
            data_dir=data_dir,
        )
