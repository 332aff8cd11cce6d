"""End-to-end run of benchmarks/trainer_throughput.py in --quick mode (1 to 3 minutes on 2 cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROW_LABELS = ("| (a) rspo-bench trainer", "| (b) rspo-bench trainer", "| (c) TRL DPOTrainer")


@pytest.mark.slow
def test_quick_benchmark_prints_table() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "trainer_throughput.py"), "--quick"],
        cwd=REPO,
        env={**os.environ, "RSPO_BENCH_PROGRESS": "0"},
        capture_output=True,
        text=True,
        timeout=850,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    assert any(line.startswith("| configuration | tokens/s |") for line in lines), completed.stdout
    rows = [line for line in lines if line.startswith("| (")]
    assert len(rows) == 3, completed.stdout
    for label, row in zip(ROW_LABELS, rows, strict=True):
        assert row.startswith(label), row
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        tokens_per_second = float(cells[1])
        assert tokens_per_second > 0, row
    assert any(line.startswith("(a)/(c):") for line in lines), completed.stdout
    assert any(line.startswith("(b)/(c):") for line in lines), completed.stdout
    assert "Command: `python benchmarks/trainer_throughput.py --quick`" in completed.stdout
