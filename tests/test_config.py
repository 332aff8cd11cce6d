"""Config validation through ``rspo-bench validate`` and the data folder errors."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rspo_bench.cli import app
from rspo_bench.config import ConfigError, load_config

runner = CliRunner()
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_experiments_validate():
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        result = runner.invoke(app, ["validate", str(path)])
        assert result.exit_code == 0, f"{path.name}: {result.output}"


def test_misspelled_key_names_field(tmp_path):
    path = write(tmp_path, "name: x\nsweep:\n  varaints: []\n  variants: [{name: a}]\nselfplay: {iteratons: 2}\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "sweep.varaints: unknown field 'varaints'; did you mean 'variants'?" in result.output
    assert "selfplay.iteratons" in result.output
    assert "did you mean 'iterations'?" in result.output


def test_negative_coefficient_names_value(tmp_path):
    path = write(tmp_path, "name: x\nsweep:\n  variants: [{name: a, regularizers: [{name: reverse_kl}], coefs: [0.1, -0.5]}]\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "sweep.variants[0].coefs[1]: coefficient λ must be >= 0" in result.output
    assert "(received: -0.5)" in result.output
    assert result.output.count("-0.5") == 1


def test_unknown_regularizer_lists_choices(tmp_path):
    path = write(tmp_path, "name: x\nsweep:\n  variants: [{name: a, regularizers: [{name: revrse_kl}]}]\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "sweep.variants[0].regularizers[0].name" in result.output
    assert "'revrse_kl'" in result.output
    assert "reverse_kl" in result.output


def test_every_error_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        "name: x\nseeed: 1\ntraining: {learning_rate: -1}\n"
        "sweep:\n  variants: [{name: a, regularizers: [{name: nope}], coefs: [-1]}]\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    locations = sorted(location for location, _, _ in info.value.errors)
    expected = ["seeed", "sweep.variants[0].coefs[0]", "sweep.variants[0].regularizers[0].name", "training.learning_rate"]
    assert locations == expected


def test_reserved_and_duplicate_variant_names(tmp_path):
    path = write(tmp_path, "name: x\nsweep:\n  variants: [{name: a}, {name: a}, {name: base}]\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "repeated: ['a']" in result.output


def test_missing_config_file(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "config file not found" in result.output


def test_missing_data_folder_names_file_and_fix(tmp_path, mini_config, monkeypatch):
    monkeypatch.delenv("RSPO_BENCH_DATA", raising=False)
    empty = tmp_path / "empty-data"
    empty.mkdir()
    result = runner.invoke(
        app, ["sweep", str(mini_config()), "--workdir", str(tmp_path / "runs"), "--data-dir", str(empty)]
    )
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "ultrafeedback/train_clean.jsonl.gz" in output
    assert "--data-dir" in output
    assert "RSPO_BENCH_DATA" in output
