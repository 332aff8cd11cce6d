"""Content-addressed cache of pipeline stages.

A stage's output lives under ``<root>/<stage>/<key[:2]>/<key>/``, where the key
is the SHA-256 of a canonical JSON of everything the output depends on (the
fingerprints of the input policies and data, the parameters and the seed).
Outputs are written into a temporary folder beside the final one and renamed
into place, so a killed process leaves no half-written entry: an entry either
exists completely or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .logs import get_logger

logger = get_logger(__name__)

COMPLETE_MARKER = "_complete.json"


def stable_hash(value: Any) -> str:
    """Return the SHA-256 hex digest of a JSON-serialisable value with sorted keys."""
    payload = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class StageCache:
    """A folder of completed stage outputs, addressed by content keys."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def key(self, stage: str, inputs: dict[str, Any]) -> str:
        """Return the key of a stage output from everything it depends on."""
        return stable_hash({"stage": stage, "inputs": inputs})

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / key

    def exists(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / COMPLETE_MARKER).is_file()

    def lookup(self, stage: str, key: str) -> Path | None:
        """Return the output folder when the stage is complete, counting the hit or miss."""
        if self.exists(stage, key):
            self.hits += 1
            logger.info("cache hit: %s %s", stage, key[:12])
            return self.path(stage, key)
        self.misses += 1
        return None

    @contextmanager
    def write(self, stage: str, key: str, inputs: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a temporary folder to fill; it becomes the entry only if the block succeeds."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=final.parent))
        try:
            yield staging
            marker = {"stage": stage, "key": key, "inputs": inputs or {}, "created": time.time()}
            (staging / COMPLETE_MARKER).write_text(json.dumps(marker, default=str, indent=1), encoding="utf-8")
            if final.exists():
                # Another worker finished the same stage first; its output is equivalent.
                shutil.rmtree(staging)
            else:
                os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def load_json(self, stage: str, key: str, name: str = "output.json") -> Any:
        return json.loads((self.path(stage, key) / name).read_text(encoding="utf-8"))

    def size_report(self) -> dict[str, dict[str, int]]:
        """Return, per stage, the number of complete entries and their size in bytes."""
        report: dict[str, dict[str, int]] = {}
        if not self.root.is_dir():
            return report
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            entries = [m.parent for m in stage_dir.glob(f"*/*/{COMPLETE_MARKER}")]
            size = sum(f.stat().st_size for entry in entries for f in entry.rglob("*") if f.is_file())
            report[stage_dir.name] = {"entries": len(entries), "bytes": size}
        return report


def write_json(path: Path, value: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(value, stream, ensure_ascii=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
