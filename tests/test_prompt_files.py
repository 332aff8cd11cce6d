"""Per-iteration prompt files (prompts.source: files): validation, reading and cache keys."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rspo_bench.cache import StageCache
from rspo_bench.config import ConfigError, SamplingConfig, parse_config
from rspo_bench.data import DataFileNotFoundError, DataFormatError, read_prompt_file
from rspo_bench.selfplay import PolicyRef, TinyWorld

SWEEP = {"variants": [{"name": "sppo"}]}


def experiment(prompts: dict, iterations: int = 2):
    return parse_config(
        {"name": "files", "prompts": prompts, "selfplay": {"iterations": iterations}, "sweep": SWEEP}
    )


def write_jsonl(path: Path, records: list, *, compress: bool = False) -> Path:
    text = "\n".join(json.dumps(record) for record in records) + "\n"
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path) -> Path:
    folder = tmp_path / "data"
    (folder / "prompts").mkdir(parents=True)
    write_jsonl(folder / "prompts" / "iter1.jsonl", [{"prompt": f"first set {i}"} for i in range(5)])
    write_jsonl(
        folder / "prompts" / "iter2.jsonl.gz",
        [{"instruction": f"second set {i}", "extra": i} for i in range(3)],
        compress=True,
    )
    return folder


FILES = ["prompts/iter1.jsonl", "prompts/iter2.jsonl.gz"]


# Validation ------------------------------------------------------------------------------


def test_files_source_needs_files():
    with pytest.raises(ConfigError) as error:
        experiment({"source": "files"})
    assert error.value.errors[0][0] == "prompts"
    assert "needs prompts.files" in error.value.errors[0][1]


def test_files_without_files_source():
    with pytest.raises(ConfigError) as error:
        experiment({"files": FILES})
    assert "set source: files" in error.value.errors[0][1]


def test_fewer_files_than_iterations():
    with pytest.raises(ConfigError) as error:
        experiment({"source": "files", "files": FILES}, iterations=3)
    location, message, value = error.value.errors[0]
    assert location == "prompts.files"
    assert "2 file(s)" in message
    assert "selfplay.iterations is 3" in message
    assert value == FILES


def test_ultrafeedback_needs_per_iteration():
    with pytest.raises(ConfigError) as error:
        experiment({"per_iteration": None})
    assert "needs per_iteration" in error.value.errors[0][1]


def test_more_files_than_iterations_valid():
    config = experiment({"source": "files", "files": FILES, "per_iteration": None}, iterations=1)
    assert config.prompts.files == FILES


# Reading ---------------------------------------------------------------------------------


def test_prompts_per_iteration_from_files(tmp_path, data_dir):
    config = experiment({"source": "files", "files": FILES, "per_iteration": 4})
    world = TinyWorld(config, StageCache(tmp_path / "cache"), data_dir=data_dir)
    assert world.selfplay_prompts(1) == [f"first set {i}" for i in range(4)]
    # The second file has 3 prompts, fewer than the cap of 4, so all of them are used.
    assert world.selfplay_prompts(2) == [f"second set {i}" for i in range(3)]


def test_null_per_iteration_takes_all(tmp_path, data_dir):
    config = experiment({"source": "files", "files": FILES, "per_iteration": None})
    world = TinyWorld(config, StageCache(tmp_path / "cache"), data_dir=data_dir)
    assert len(world.selfplay_prompts(1)) == 5


def test_absolute_path_used_as_given(tmp_path, data_dir):
    absolute = str(data_dir / "prompts" / "iter1.jsonl")
    config = experiment({"source": "files", "files": [absolute, absolute], "per_iteration": None})
    world = TinyWorld(config, StageCache(tmp_path / "cache"), data_dir=tmp_path / "elsewhere")
    assert world.selfplay_prompts(2)[0] == "first set 0"


def test_missing_file_names_path_tried(tmp_path, data_dir):
    config = experiment({"source": "files", "files": ["prompts/missing.jsonl", FILES[1]]})
    world = TinyWorld(config, StageCache(tmp_path / "cache"), data_dir=data_dir)
    with pytest.raises(DataFileNotFoundError) as error:
        world.selfplay_prompts(1)
    assert str(data_dir / "prompts" / "missing.jsonl") in str(error.value)
    assert "--data-dir" in str(error.value)


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n\n{"prompt": "broken"\n', encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"bad\.jsonl:3: invalid JSON"):
        read_prompt_file(path)


def test_missing_prompt_field_names_line(tmp_path):
    path = write_jsonl(tmp_path / "keys.jsonl", [{"prompt": "fine"}, {"question": "no prompt here"}])
    with pytest.raises(DataFormatError, match=r"keys\.jsonl:2: missing field 'prompt'"):
        read_prompt_file(path)


def test_non_string_prompt_rejected(tmp_path):
    path = write_jsonl(tmp_path / "number.jsonl", [{"prompt": 7}])
    with pytest.raises(DataFormatError, match=r"number\.jsonl:1: field 'prompt' must be a non-empty string"):
        read_prompt_file(path)


def test_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match="contains no records"):
        read_prompt_file(path)


def test_line_separator_inside_prompt(tmp_path):
    """Records split on LF only, so U+2028 inside a prompt keeps the record whole."""
    path = write_jsonl(tmp_path / "separator.jsonl", [{"prompt": "one\u2028two"}, {"prompt": "three"}])
    assert read_prompt_file(path) == ["one\u2028two", "three"]


# Cache keys ------------------------------------------------------------------------------


def first_samples_key(config, cache: StageCache, data_dir: Path, policy: PolicyRef) -> str:
    """Return the key of iteration 1's sampling stage, read through a fresh world as a new run would."""
    world = TinyWorld(config, cache, data_dir=data_dir)
    key, _ = world.samples_key(policy, world.selfplay_prompts(1), SamplingConfig(), seed=1)
    return key


def test_changed_file_changes_samples_key(tmp_path, data_dir):
    config = experiment({"source": "files", "files": FILES, "per_iteration": None})
    cache = StageCache(tmp_path / "cache")
    policy = PolicyRef("base-policy-key", tmp_path / "policy")

    before = first_samples_key(config, cache, data_dir, policy)
    unchanged = first_samples_key(config, cache, data_dir, policy)
    write_jsonl(data_dir / "prompts" / "iter1.jsonl", [{"prompt": f"edited set {i}"} for i in range(5)])
    after = first_samples_key(config, cache, data_dir, policy)

    assert unchanged == before
    assert after != before
