"""Content-addressed cache of pipeline stages.

A stage's output lives under ``<root>/<stage>/<key[:2]>/<key>/``, where the key
is the SHA-256 of a canonical JSON of everything the output depends on (the
fingerprints of the input policies and data, the parameters and the seed).
Outputs are written into a temporary folder beside the final one and renamed
into place, so a killed process leaves no half-written entry: an entry either
exists completely or not at all. Temporary folders start with a dot and name
their writer (``.<key[:12]>-<pid>@<host>-<random>``), so ``prune`` can tell a
killed writer's leftovers from a live writer's folder. An entry's marker file
is touched on every cache hit, so its modification time is the entry's last use.

:meth:`StageCache.compute` also holds a per-key lock file,
``<stage>/<key[:2]>/.<key>.lock``, while it computes an entry, so concurrent
workers that miss the same key compute it once. The others wait for the lock and
then read the entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .logs import get_logger

logger = get_logger(__name__)

COMPLETE_MARKER = "_complete.json"
# Per sweep, the entries each trial used: <root>/.sweeps/<sweep>/<trial key>.json.
USAGE_FOLDER = ".sweeps"
# The random suffix that tempfile.mkdtemp appends contains no dash, so the last dash ends the host name.
TEMP_NAME = re.compile(r"^\.[0-9a-f]{12}-(?P<pid>\d+)@(?P<host>[A-Za-z0-9.\-]+)-[^-]*$")
DEFAULT_TEMP_MAX_AGE_HOURS = 6.0


def stable_hash(value: Any) -> str:
    """Return the SHA-256 hex digest of a JSON-serialisable value with sorted keys."""
    payload = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _host_name() -> str:
    return re.sub(r"[^A-Za-z0-9.\-]", "-", socket.gethostname()) or "host"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _folder_bytes(folder: Path) -> int:
    return sum(item.stat().st_size for item in folder.rglob("*") if item.is_file())


def _try_lock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(descriptor: int) -> str:
    """Return the holder that a lock file names, or "another process" while it is empty."""
    text = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip()
    return text or "another process"


def _is_same_file(descriptor: int, path: Path) -> bool:
    opened = os.fstat(descriptor)
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    return (opened.st_dev, opened.st_ino) == (current.st_dev, current.st_ino)


@dataclass
class PruneReport:
    """Counts of what :meth:`StageCache.prune` removed (or would remove, in a dry run)."""

    entries: dict[str, int] = field(default_factory=dict)
    temp_folders: int = 0
    bytes_freed: int = 0
    kept_for_sweeps: int = 0
    skipped_live_temp: int = 0


class StageCache:
    """A folder of completed stage outputs, addressed by content keys."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        # (stage, key) of every entry read or written since the last take_usage().
        self._used: set[tuple[str, str]] = set()

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
            self._used.add((stage, key))
            try:
                os.utime(self.path(stage, key) / COMPLETE_MARKER)
            except OSError:  # a read-only cache still serves hits
                pass
            logger.info("cache hit: %s %s", stage, key[:12])
            return self.path(stage, key)
        self.misses += 1
        return None

    def lock_path(self, stage: str, key: str) -> Path:
        return self.root / stage / key[:2] / f".{key}.lock"

    @contextmanager
    def compute_lock(self, stage: str, key: str) -> Iterator[None]:
        """Hold the key's compute lock, waiting while another process or thread holds it.

        The lock is an ``flock`` on the key's lock file, so the OS releases it when
        its holder exits or is killed, even by SIGKILL. The holder deletes the file
        before it unlocks, and a waiter that then locks the deleted file opens the path
        again, so at most one caller per key is inside the block at a time.
        Locks are not reentrant, so a thread must not take the same key's lock twice.

        NOTE: tested only with processes on one host. Across hosts the lock excludes
        only on a shared file system whose ``flock`` reaches the server.
        """
        path = self.lock_path(stage, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        waiting_since: float | None = None
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not _try_lock(descriptor):
                    if waiting_since is None:
                        waiting_since = time.monotonic()
                        holder = _read_holder(descriptor)
                        logger.info("waiting for %s to finish computing %s %s", holder, stage, key[:12])
                    fcntl.flock(descriptor, fcntl.LOCK_EX)
            except BaseException:
                os.close(descriptor)
                raise
            if _is_same_file(descriptor, path):
                break
            # The previous holder deleted this file after finishing, so lock the path's new file.
            os.close(descriptor)
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"pid {os.getpid()} on {_host_name()}\n".encode(), 0)
            if waiting_since is not None:
                waited = time.monotonic() - waiting_since
                logger.info("waited %.1f s for the compute lock of %s %s", waited, stage, key[:12])
            yield
        finally:
            path.unlink(missing_ok=True)
            os.close(descriptor)

    def compute(self, stage: str, key: str, inputs: dict[str, Any], fill: Callable[[Path], None]) -> Path:
        """Return the entry's folder, calling ``fill(staging)`` to create it on a miss.

        ``fill`` writes the output files into the temporary folder it receives, and
        the entry is published as in :meth:`write`. Concurrent callers for the same
        key take turns on its compute lock, so ``fill`` runs in the first one and the
        others wait and then read its entry. When ``fill`` raises, the next waiter
        runs its own ``fill``. A hit takes no lock, so a read-only cache serves hits.
        """
        if self.exists(stage, key) and (path := self.lookup(stage, key)) is not None:
            return path
        with self.compute_lock(stage, key):
            if (path := self.lookup(stage, key)) is not None:
                return path
            with self.write(stage, key, inputs) as staging:
                fill(staging)
        return self.path(stage, key)

    def compute_json(
        self, stage: str, key: str, inputs: dict[str, Any], compute: Callable[[], Any],
        name: str = "output.json",
    ) -> Any:
        """Return the value in the entry's JSON file ``name``, storing ``compute()`` there on a miss.

        Concurrent callers compute the value once, as in :meth:`compute`.
        """

        def fill(staging: Path) -> None:
            (staging / name).write_text(json.dumps(compute(), ensure_ascii=False), encoding="utf-8")

        self.compute(stage, key, inputs, fill)
        return self.load_json(stage, key, name)

    @contextmanager
    def write(self, stage: str, key: str, inputs: dict[str, Any] | None = None) -> Iterator[Path]:
        """Yield a temporary folder to fill; it becomes the entry only if the block succeeds."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{key[:12]}-{os.getpid()}@{_host_name()}-"
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
        try:
            yield staging
            marker = {"stage": stage, "key": key, "inputs": inputs or {}, "created": time.time()}
            (staging / COMPLETE_MARKER).write_text(json.dumps(marker, default=str, indent=1), encoding="utf-8")
            self._publish(staging, final)
            self._used.add((stage, key))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @staticmethod
    def _publish(staging: Path, final: Path) -> None:
        """Rename the filled folder into place; when another worker was first, keep its equivalent entry."""
        if final.exists():
            shutil.rmtree(staging)
            return
        try:
            os.replace(staging, final)
        except OSError:
            # Between the check and the rename another process published the same key:
            # renaming onto a non-empty folder fails, and its output is equivalent.
            if not (final / COMPLETE_MARKER).is_file():
                raise
            shutil.rmtree(staging)

    def load_json(self, stage: str, key: str, name: str = "output.json") -> Any:
        return json.loads((self.path(stage, key) / name).read_text(encoding="utf-8"))

    # Usage records ------------------------------------------------------------

    def take_usage(self) -> set[tuple[str, str]]:
        """Return the entries read or written since the last call, and start a new record."""
        used, self._used = self._used, set()
        return used

    def record_usage(self, sweep: str, trial: str, entries: Iterable[tuple[str, str]]) -> None:
        """Add entries to the list of those a sweep's trial used (read by ``prune --keep-sweep``)."""
        path = self.root / USAGE_FOLDER / sweep / f"{trial}.json"
        known: set[tuple[str, str]] = set()
        if path.is_file():
            known = {tuple(item) for item in json.loads(path.read_text(encoding="utf-8"))}
        merged = known | set(entries)
        if merged != known:
            write_json(path, sorted(merged))

    def sweep_entries(self, sweep: str) -> set[tuple[str, str]]:
        """Return the (stage, key) pairs recorded for a sweep; empty when it never ran with this cache."""
        folder = self.root / USAGE_FOLDER / sweep
        entries: set[tuple[str, str]] = set()
        for path in sorted(folder.glob("*.json")):
            entries |= {tuple(item) for item in json.loads(path.read_text(encoding="utf-8"))}
        return entries

    # Inspection and clean-up -----------------------------------------------------

    def _stage_dirs(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))

    def _entries(self, stage_dir: Path) -> list[Path]:
        # pathlib's "*" also matches names that start with a dot, so the glob finds
        # temporary folders too. Only a folder named exactly like its key is an entry.
        return [
            marker.parent for marker in stage_dir.glob(f"*/*/{COMPLETE_MARKER}")
            if not marker.parent.name.startswith(".")
        ]

    def temp_folders(self) -> list[Path]:
        """Return the temporary folders of writers that are running or were killed."""
        return [
            path for stage_dir in self._stage_dirs() for path in stage_dir.glob("*/.*") if path.is_dir()
        ]

    def size_report(self) -> dict[str, dict[str, int]]:
        """Return, per stage, the number of complete entries and their size in bytes."""
        report: dict[str, dict[str, int]] = {}
        for stage_dir in self._stage_dirs():
            entries = self._entries(stage_dir)
            size = sum(_folder_bytes(entry) for entry in entries)
            report[stage_dir.name] = {"entries": len(entries), "bytes": size}
        return report

    def _is_orphan(self, folder: Path, now: float, temp_max_age: float) -> bool:
        match = TEMP_NAME.match(folder.name)
        if match and match["host"] == _host_name():
            return not _process_alive(int(match["pid"]))
        # Another host's writer, or a folder without a writer in its name: judge by age.
        return now - folder.stat().st_mtime > temp_max_age

    def prune(
        self,
        *,
        older_than_days: float | None = None,
        stage: str | None = None,
        keep_sweeps: Iterable[str] = (),
        temp_max_age_hours: float = DEFAULT_TEMP_MAX_AGE_HOURS,
        dry_run: bool = False,
    ) -> PruneReport:
        """Remove killed writers' temporary folders and, with ``older_than_days``, entries unused that long.

        An entry is removed by renaming it to a temporary name first, so a reader
        never sees a half-deleted entry. Entries recorded for ``keep_sweeps`` stay.
        """
        report = PruneReport()
        now = time.time()
        keep = set().union(*(self.sweep_entries(name) for name in keep_sweeps))
        stage_dirs = [d for d in self._stage_dirs() if stage is None or d.name == stage]
        for stage_dir in stage_dirs:
            for folder in (p for p in stage_dir.glob("*/.*") if p.is_dir()):
                if not self._is_orphan(folder, now, temp_max_age_hours * 3600):
                    report.skipped_live_temp += 1
                    continue
                report.temp_folders += 1
                report.bytes_freed += _folder_bytes(folder)
                if not dry_run:
                    shutil.rmtree(folder, ignore_errors=True)
            if older_than_days is None:
                continue
            for entry in self._entries(stage_dir):
                last_use = (entry / COMPLETE_MARKER).stat().st_mtime
                if now - last_use <= older_than_days * 86400:
                    continue
                if (stage_dir.name, entry.name) in keep:
                    report.kept_for_sweeps += 1
                    continue
                report.entries[stage_dir.name] = report.entries.get(stage_dir.name, 0) + 1
                report.bytes_freed += _folder_bytes(entry)
                if not dry_run:
                    self._remove_entry(entry)
        logger.info(
            "cache prune%s: %d entries and %d temporary folders, %.1f MiB",
            " (dry run)" if dry_run else "", sum(report.entries.values()), report.temp_folders,
            report.bytes_freed / 2**20,
        )
        return report

    @staticmethod
    def _remove_entry(entry: Path) -> None:
        doomed = entry.parent / f".{entry.name[:12]}-{os.getpid()}@{_host_name()}-deleting{time.time_ns()}"
        os.replace(entry, doomed)
        shutil.rmtree(doomed)


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
