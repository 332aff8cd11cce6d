"""Machine description that the benchmark scripts print beside their timings.

The scripts run as ``python benchmarks/NAME.py``, which puts this folder on
``sys.path``, so they import it as ``from _machine import describe_machine``.
The leading underscore keeps ``nox -s benchmarks`` from running it as a benchmark.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def describe_machine() -> str:
    """Return the core count, the CPU model and the Python version, e.g. "2 cores, <model>, Python 3.12.3".

    The CPU model is the first "model name" line of /proc/cpuinfo. Without that
    line or file it falls back to the platform's processor string, or else to its
    architecture.
    """
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"
