"""Stage cache: atomic entries, killed writers' leftovers, usage records and prune."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rspo_bench.cache import COMPLETE_MARKER, StageCache

REPO = Path(__file__).resolve().parent.parent
KEY_A = "a" * 64
KEY_B = "b" * 64


def write_entry(cache: StageCache, stage: str, key: str, text: str = "x") -> Path:
    with cache.write(stage, key, {"text": text}) as staging:
        (staging / "output.json").write_text(json.dumps(text), encoding="utf-8")
    return cache.path(stage, key)


def age(path: Path, days: float) -> None:
    stamp = time.time() - days * 86400
    os.utime(path / COMPLETE_MARKER, (stamp, stamp))


def kill_inside_write(root: str) -> None:
    cache = StageCache(root)
    with cache.write("policy", KEY_A) as staging:
        (staging / "model.safetensors").write_bytes(b"\0" * 1000)
        (staging / COMPLETE_MARKER).write_text("{}", encoding="utf-8")
        os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def killed_writer_cache(tmp_path: Path) -> StageCache:
    """A cache whose only 'policy' folder was left by a writer killed inside write()."""
    process = multiprocessing.get_context("fork").Process(target=kill_inside_write, args=(str(tmp_path),))
    process.start()
    process.join(timeout=60)
    assert process.exitcode == -signal.SIGKILL
    return StageCache(tmp_path)


def test_write_publishes_complete_entry(tmp_path):
    cache = StageCache(tmp_path)
    path = write_entry(cache, "samples", KEY_A, "hello")
    assert cache.exists("samples", KEY_A)
    assert cache.load_json("samples", KEY_A) == "hello"
    assert cache.temp_folders() == []
    assert path.name == KEY_A


def test_failed_write_leaves_nothing(tmp_path):
    cache = StageCache(tmp_path)
    with pytest.raises(RuntimeError):
        with cache.write("samples", KEY_A) as staging:
            (staging / "partial").write_text("half", encoding="utf-8")
            raise RuntimeError("stage failed")
    assert not cache.exists("samples", KEY_A)
    assert cache.temp_folders() == []


def test_second_writer_keeps_first_entry(tmp_path):
    cache = StageCache(tmp_path)
    write_entry(cache, "samples", KEY_A, "first")
    write_entry(cache, "samples", KEY_A, "second")
    assert cache.load_json("samples", KEY_A) == "first"
    assert cache.temp_folders() == []


def test_publish_race_keeps_entry(tmp_path, monkeypatch):
    """A writer that loses the race between its existence check and its rename keeps the winner's entry."""
    cache = StageCache(tmp_path)
    other = StageCache(tmp_path)
    original_exists = Path.exists
    raced = []

    def exists_after_other_writer(path: Path) -> bool:
        if path == cache.path("samples", KEY_A) and not raced:
            raced.append(path)
            write_entry(other, "samples", KEY_A, "winner")
            return False
        return original_exists(path)

    monkeypatch.setattr(Path, "exists", exists_after_other_writer)
    write_entry(cache, "samples", KEY_A, "loser")
    monkeypatch.undo()
    assert raced
    assert cache.load_json("samples", KEY_A) == "winner"
    assert cache.temp_folders() == []


def test_killed_writer_folder_is_no_entry(killed_writer_cache):
    cache = killed_writer_cache
    assert not cache.exists("policy", KEY_A)
    assert cache.lookup("policy", KEY_A) is None
    assert cache.size_report() == {"policy": {"entries": 0, "bytes": 0}}
    leftovers = cache.temp_folders()
    assert len(leftovers) == 1
    assert leftovers[0].name.startswith(f".{KEY_A[:12]}-")


def test_prune_removes_dead_writer_folder(killed_writer_cache):
    cache = killed_writer_cache
    report = cache.prune()
    assert report.temp_folders == 1
    assert report.bytes_freed >= 1000
    assert cache.temp_folders() == []


def test_prune_keeps_live_writer_folder(tmp_path):
    cache = StageCache(tmp_path)
    with cache.write("policy", KEY_A) as staging:
        (staging / "weights").write_text("w", encoding="utf-8")
        report = StageCache(tmp_path).prune()
        assert report.temp_folders == 0
        assert report.skipped_live_temp == 1
        assert staging.is_dir()
    assert cache.exists("policy", KEY_A)


def test_prune_unknown_writer_by_age(tmp_path):
    cache = StageCache(tmp_path)
    write_entry(cache, "policy", KEY_A)
    stray = cache.path("policy", KEY_A).parent / ".aaaaaaaaaaaa-12@other-host-x1y2z3"
    stray.mkdir()
    assert cache.prune(temp_max_age_hours=1).temp_folders == 0
    stamp = time.time() - 2 * 3600
    os.utime(stray, (stamp, stamp))
    assert cache.prune(temp_max_age_hours=1).temp_folders == 1
    assert not stray.exists()


def test_prune_older_than_and_stage(tmp_path):
    cache = StageCache(tmp_path)
    old_policy = write_entry(cache, "policy", KEY_A)
    old_samples = write_entry(cache, "samples", KEY_A)
    write_entry(cache, "policy", KEY_B)
    age(old_policy, 10)
    age(old_samples, 10)

    report = cache.prune(older_than_days=5, stage="policy")
    assert report.entries == {"policy": 1}
    assert not cache.exists("policy", KEY_A)
    assert cache.exists("policy", KEY_B)
    assert cache.exists("samples", KEY_A)
    assert not any(path.name.startswith(".") for path in old_policy.parent.iterdir())


def test_lookup_refreshes_last_use(tmp_path):
    cache = StageCache(tmp_path)
    entry = write_entry(cache, "policy", KEY_A)
    age(entry, 10)
    assert cache.lookup("policy", KEY_A) == entry
    assert cache.prune(older_than_days=5).entries == {}


def test_prune_dry_run_removes_nothing(tmp_path):
    cache = StageCache(tmp_path)
    entry = write_entry(cache, "policy", KEY_A)
    age(entry, 10)
    report = cache.prune(older_than_days=5, dry_run=True)
    assert report.entries == {"policy": 1}
    assert cache.exists("policy", KEY_A)


def test_prune_keeps_recorded_sweep(tmp_path):
    cache = StageCache(tmp_path)
    kept = write_entry(cache, "policy", KEY_A)
    dropped = write_entry(cache, "policy", KEY_B)
    cache.record_usage("paper", "sppo-0", cache.take_usage() - {("policy", KEY_B)})
    age(kept, 30)
    age(dropped, 30)
    report = cache.prune(older_than_days=7, keep_sweeps=["paper"])
    assert report.kept_for_sweeps == 1
    assert cache.exists("policy", KEY_A)
    assert not cache.exists("policy", KEY_B)


def test_usage_records_merge(tmp_path):
    cache = StageCache(tmp_path)
    cache.record_usage("s", "t", {("policy", KEY_A)})
    cache.record_usage("s", "t", {("samples", KEY_B)})
    assert cache.sweep_entries("s") == {("policy", KEY_A), ("samples", KEY_B)}
    assert "s" not in cache.size_report()
    assert ".sweeps" not in cache.size_report()


def test_cli_prune_and_info(killed_writer_cache):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    root = str(killed_writer_cache.root)
    info = subprocess.run([sys.executable, "-m", "rspo_bench.cli", "cache", "info", "--cache-dir", root],
                          capture_output=True, text=True, env=env, timeout=300)
    assert info.returncode == 0, info.stderr[-2000:]
    assert "(temporary folders)" in info.stdout
    pruned = subprocess.run([sys.executable, "-m", "rspo_bench.cli", "cache", "prune", "--cache-dir", root],
                            capture_output=True, text=True, env=env, timeout=300)
    assert pruned.returncode == 0, pruned.stderr[-2000:]
    assert "removed no entries and 1 temporary folders" in pruned.stdout
    assert killed_writer_cache.temp_folders() == []


# Compute locks --------------------------------------------------------------------

def compute_slowly(root: Path, computed: Path, result: Path) -> None:
    """Compute 'samples' KEY_A through the cache, appending the pid to ``computed`` on a miss."""
    cache = StageCache(root)

    def slow_value() -> str:
        with open(computed, "a", encoding="utf-8") as stream:
            stream.write(f"{os.getpid()}\n")
        time.sleep(2)
        return "value"

    value = cache.compute_json("samples", KEY_A, {}, slow_value)
    summary = {"value": value, "hits": cache.hits, "misses": cache.misses}
    result.write_text(json.dumps(summary), encoding="utf-8")


def compute_until_killed(root: Path, started: Path) -> None:
    cache = StageCache(root)

    def endless_value() -> str:
        started.write_text(str(os.getpid()), encoding="utf-8")
        time.sleep(600)
        return "never"

    cache.compute_json("samples", KEY_A, {}, endless_value)


def wait_for_file(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def test_concurrent_compute_runs_once(tmp_path):
    """The second process misses while the first computes, waits for the lock and reads the entry."""
    context = multiprocessing.get_context("fork")
    computed = tmp_path / "computed.txt"
    root = tmp_path / "cache"
    first = context.Process(target=compute_slowly, args=(root, computed, tmp_path / "first.json"))
    second = context.Process(target=compute_slowly, args=(root, computed, tmp_path / "second.json"))

    first.start()
    wait_for_file(computed)
    second.start()
    first.join(timeout=60)
    second.join(timeout=60)

    assert first.exitcode == 0
    assert second.exitcode == 0
    assert computed.read_text(encoding="utf-8").splitlines() == [str(first.pid)]
    first_result = json.loads((tmp_path / "first.json").read_text(encoding="utf-8"))
    second_result = json.loads((tmp_path / "second.json").read_text(encoding="utf-8"))
    assert first_result == {"value": "value", "hits": 0, "misses": 1}
    assert second_result == {"value": "value", "hits": 1, "misses": 0}
    cache = StageCache(root)
    assert not cache.lock_path("samples", KEY_A).exists()
    assert cache.temp_folders() == []


def test_killed_lock_holder_releases_key(tmp_path):
    """SIGKILL ends the holder's flock, so the waiting process computes the entry itself."""
    context = multiprocessing.get_context("fork")
    started = tmp_path / "started.txt"
    computed = tmp_path / "computed.txt"
    root = tmp_path / "cache"
    holder = context.Process(target=compute_until_killed, args=(root, started))
    waiter = context.Process(target=compute_slowly, args=(root, computed, tmp_path / "waiter.json"))

    holder.start()
    try:
        wait_for_file(started)
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive()
        assert not computed.exists(), "the waiter computed while the holder was alive"
    finally:
        # The holder sleeps for 10 minutes, so end it even when a check above fails.
        os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=60)
    waiter.join(timeout=60)

    assert holder.exitcode == -signal.SIGKILL
    assert waiter.exitcode == 0
    assert computed.read_text(encoding="utf-8").splitlines() == [str(waiter.pid)]
    result = json.loads((tmp_path / "waiter.json").read_text(encoding="utf-8"))
    assert result["value"] == "value"
    cache = StageCache(root)
    assert cache.load_json("samples", KEY_A) == "value"
    assert not cache.lock_path("samples", KEY_A).exists()
    # The killed holder's temporary folder stays until prune removes it.
    assert len(cache.temp_folders()) == 1


def test_failed_compute_leaves_key_unlocked(tmp_path):
    cache = StageCache(tmp_path)

    def failing_value() -> str:
        raise RuntimeError("stage failed")

    with pytest.raises(RuntimeError, match="stage failed"):
        cache.compute_json("samples", KEY_A, {}, failing_value)

    assert not cache.exists("samples", KEY_A)
    assert not cache.lock_path("samples", KEY_A).exists()
    assert cache.compute_json("samples", KEY_A, {}, lambda: "value") == "value"
    assert cache.compute_json("samples", KEY_A, {}, failing_value) == "value"
