"""Tests of the environment report, the iteration check and benchmarks/gpu_check.sh."""

from __future__ import annotations

import gzip
import http.server
import importlib.metadata
import importlib.util
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from rspo_bench import data as data_module
from rspo_bench import doctor
from rspo_bench.cli import app

ROOT = Path(__file__).resolve().parent.parent


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rendered(checks: list[doctor.Check]) -> str:
    console = Console(record=True, width=250)
    console.print(doctor.render_checks(checks))
    return console.export_text()


# Packages, extras and devices --------------------------------------------------------------


def test_package_versions_reported():
    checks = {check.name: check for check in doctor.package_checks()}
    assert checks["torch"].status == doctor.OK
    assert checks["torch"].detail == importlib.metadata.version("torch")
    assert checks["transformers"].detail == importlib.metadata.version("transformers")
    assert set(doctor.KEY_PACKAGES) == set(checks)


def test_missing_extra_names_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        doctor.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "vllm" else real_find_spec(name, *args),
    )
    checks = {check.name: check for check in doctor.extra_checks()}
    assert checks["vllm"].status == doctor.MISSING
    assert "pip install 'rspo-bench[vllm]'" in checks["vllm"].detail
    assert set(checks) == {"vllm", "deepspeed", "peft"}


def test_device_checks_describe_cpu_or_cuda():
    checks = doctor.device_checks()
    if torch.cuda.is_available():
        assert checks[0].name == "cuda"
        assert len(checks) == torch.cuda.device_count() + 1
    else:
        assert [check.name for check in checks] == ["cpu"]
        assert "no CUDA device" in checks[0].detail


def test_memory_checks_report_ram_and_disk(tmp_path):
    checks = doctor.memory_checks({"workdir": tmp_path / "not" / "created"})
    assert [check.name for check in checks] == ["RAM", "disk (workdir)"]
    assert "GiB available" in checks[0].detail
    assert not (tmp_path / "not").exists()


# Data folder -------------------------------------------------------------------------------


def test_data_checks_list_present_and_missing(tmp_path):
    (tmp_path / "alpaca_eval").mkdir()
    (tmp_path / data_module.ALPACA_EVAL_INSTRUCTIONS).write_text('{"instruction": "x"}\n', encoding="utf-8")
    (tmp_path / "ultrafeedback").mkdir()
    # Stored uncompressed although the expected name ends in .gz: the data loader accepts both.
    (tmp_path / data_module.ULTRAFEEDBACK_TRAIN.removesuffix(".gz")).write_text("{}\n", encoding="utf-8")
    with gzip.open(tmp_path / (data_module.ULTRAFEEDBACK_EVAL + ".gz"), "wt") as handle:
        handle.write("{}\n")
    checks = {check.name: check for check in doctor.data_checks(tmp_path)}
    assert checks["folder"].status == doctor.OK
    assert checks[data_module.ALPACA_EVAL_INSTRUCTIONS].status == doctor.OK
    assert checks[data_module.ULTRAFEEDBACK_TRAIN].status == doctor.OK
    assert checks[data_module.ULTRAFEEDBACK_EVAL].status == doctor.OK
    assert checks[data_module.ALPACA_EVAL_BASELINE].status == doctor.MISSING
    assert checks[data_module.ALPACA_EVAL_DIFFICULTY].status == doctor.MISSING


def test_data_checks_missing_folder(tmp_path):
    checks = doctor.data_checks(tmp_path / "absent")
    assert len(checks) == 1
    assert checks[0].status == doctor.MISSING
    assert data_module.ENV_VAR in checks[0].detail


# Tracking store and storage ----------------------------------------------------------------


def test_sqlite_store_not_created_yet(tmp_path):
    check = doctor.tracking_check(f"sqlite:///{tmp_path / 'mlruns.db'}")
    assert check.status == doctor.INFO
    assert "created on first use" in check.detail
    assert not (tmp_path / "mlruns.db").exists()


def test_sqlite_store_existing(tmp_path):
    path = tmp_path / "optuna.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE studies (id INTEGER)")
    connection.commit()
    connection.close()
    check = doctor.storage_check(f"sqlite:///{path}")
    assert check.status == doctor.OK
    assert "1 tables" in check.detail


def test_sqlite_store_unreadable(tmp_path):
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a sqlite database" * 100)
    check = doctor.storage_check(f"sqlite:///{path}")
    assert check.status == doctor.ERROR


def test_http_tracking_server_reachable():
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check = doctor.tracking_check(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert check.status == doctor.OK
    assert "HTTP 200" in check.detail


def test_http_tracking_server_unreachable():
    check = doctor.tracking_check(f"http://127.0.0.1:{closed_port()}", timeout=2)
    assert check.status == doctor.ERROR
    assert "no answer" in check.detail


def test_postgres_storage_unreachable_redacts_password():
    url = f"postgresql://rspo:secret@127.0.0.1:{closed_port()}/optuna"
    check = doctor.storage_check(url, timeout=2)
    assert check.status == doctor.ERROR
    assert "secret" not in check.detail
    assert "rspo:***@" in check.detail


def test_file_tracking_store(tmp_path):
    assert doctor.tracking_check(str(tmp_path)).status == doctor.OK
    assert doctor.tracking_check(str(tmp_path / "mlruns")).status == doctor.INFO


def test_render_keeps_brackets():
    text = rendered([doctor.Check("extras", "vllm", doctor.MISSING, "pip install 'rspo-bench[vllm]'")])
    assert "pip install 'rspo-bench[vllm]'" in text


def test_run_checks_covers_every_section(tmp_path):
    checks = doctor.run_checks(data_dir=tmp_path, workdir=tmp_path / "runs")
    sections = {check.section for check in checks}
    assert sections == {"packages", "devices", "memory", "extras", "data", "services"}
    services = {check.name: check for check in checks if check.section == "services"}
    assert str(tmp_path / "runs" / "mlruns.db") in services["MLflow tracking"].detail
    assert str(tmp_path / "runs" / "optuna.db") in services["Optuna storage"].detail
    assert not (tmp_path / "runs").exists()


# Command line ------------------------------------------------------------------------------


def test_cli_doctor_prints_table(tmp_path):
    result = CliRunner().invoke(app, ["doctor", "--workdir", str(tmp_path), "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "MLflow tracking" in result.output
    assert "Optuna storage" in result.output
    assert "transformers" in result.output


def test_cli_doctor_fails_on_unreachable_store(tmp_path):
    arguments = [
        "doctor",
        "--workdir",
        str(tmp_path),
        "--tracking-uri",
        f"http://127.0.0.1:{closed_port()}",
        "--timeout",
        "2",
    ]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 1


# Iteration check ---------------------------------------------------------------------------


def test_iteration_check_tiny_cpu():
    result = doctor.run_iteration_check(device="cpu", tiny=True)
    size = doctor.TINY_SIZE
    assert result.device == "cpu"
    assert result.scored_pairs == size.num_prompts * size.num_samples * (size.num_samples - 1)
    assert 0 < result.generation_tokens <= size.num_prompts * size.num_samples * size.max_new_tokens
    assert result.training_tokens > 0
    assert result.generation_tokens_per_second > 0
    assert result.training_tokens_per_second > 0
    assert result.peak_memory_bytes is None
    assert torch.isfinite(torch.tensor(result.training_loss))
    names = [name for name, _ in result.rows()]
    assert "generation tokens/s" in names
    assert "training tokens/s" in names


def test_full_size_is_about_half_a_billion():
    size = doctor.FULL_SIZE
    per_layer = 4 * size.hidden_size**2 + 3 * size.hidden_size * size.intermediate_size
    parameters = size.num_hidden_layers * per_layer + 2 * size.vocab_size * size.hidden_size
    assert 0.4e9 < parameters < 0.6e9


def test_gpu_check_script_tiny_cpu(tmp_path):
    environment = {**os.environ, "PYTHON": sys.executable, "RSPO_BENCH_PROGRESS": "0"}
    result = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks" / "gpu_check.sh"),
            "--device",
            "cpu",
            "--tiny",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generation tokens/s" in result.stdout
    assert "training tokens/s" in result.stdout


def test_gpu_check_script_requires_cuda_without_cpu_flag():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present, so the script would run the full check")
    environment = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert result.returncode == 2
    assert "--device cpu --tiny" in result.stderr
