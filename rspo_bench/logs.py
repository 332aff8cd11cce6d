"""Project logger and progress bars.

Every module logs through ``logging.getLogger("rspo_bench.<module>")``. The CLI
calls :func:`setup_logging` once; library users keep control of their own
handlers. Progress bars go to stderr through tqdm, and log lines are routed
through tqdm while a bar is open so that the two do not interleave.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

ROOT_LOGGER = "rspo_bench"
T = TypeVar("T")


def get_logger(name: str) -> logging.Logger:
    """Return the logger for a module, under the ``rspo_bench`` root."""
    if not name.startswith(ROOT_LOGGER):
        name = f"{ROOT_LOGGER}.{name}"
    return logging.getLogger(name)


def setup_logging(level: int | str = logging.INFO) -> None:
    """Attach one stderr handler to the ``rspo_bench`` logger (idempotent)."""
    logger = logging.getLogger(ROOT_LOGGER)
    logger.setLevel(level)
    if any(getattr(h, "_rspo_bench", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._rspo_bench = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def progress_disabled() -> bool:
    """Progress bars are off when ``RSPO_BENCH_PROGRESS=0``."""
    return os.environ.get("RSPO_BENCH_PROGRESS", "1") == "0"


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Wrap an iterable in a tqdm bar on stderr."""
    return iter(tqdm(iterable, desc=desc, total=total, unit=unit, disable=progress_disabled(), leave=False))


def progress_bar(*, desc: str, total: int, unit: str = "it") -> tqdm:
    """Open a manually updated tqdm bar; use it as a context manager."""
    return tqdm(desc=desc, total=total, unit=unit, disable=progress_disabled(), leave=False)
