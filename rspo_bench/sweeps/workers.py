"""Running one trial: in the sweep process, or in a subprocess of its own.

The sweep worker claims a trial, fixes its parameters and creates its MLflow
run. Then a launcher runs the trial body (:func:`execute_trial`) and returns
its outcome. :class:`InProcessLauncher` calls the body directly and keeps the
world (data, base policy, judge) loaded between trials.
:class:`SubprocessLauncher` starts ``python -m rspo_bench.sweeps.workers
LAUNCH_FILE`` for each trial, pinned to a device with ``CUDA_VISIBLE_DEVICES``,
so the memory of a trial goes back to the system when it ends.

Protocol between a worker and its trial process: the launch file (JSON)
contains the config, the trial spec with its parameters, the MLflow run id and
the paths. The trial process writes one JSON object per line to the events pipe
(``--events-fd``): ``intermediate`` after each self-play iteration, then one
``result``. After an ``intermediate`` event it reads ``continue`` or ``prune``
from stdin. When stdin reaches end of file the worker has died, and the trial
process exits at once, like the worker, leaving its MLflow run RUNNING for
the next sweep run to reconcile.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from ..config import ExperimentConfig, flatten
from ..logs import get_logger, setup_logging
from ..tracking import SweepTracker, SystemMonitor
from .executors import TrialExecutor, TrialReporter
from .grid import TrialSpec
from .optuna_search import objective_metric

logger = get_logger(__name__)

EXIT_PARENT_GONE = 3


@dataclass
class TrialOutcome:
    """Outcome of a trial: ``complete``, ``pruned`` or ``failed``, with its final metrics or the error."""

    status: str
    value: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0


@dataclass
class TrialLaunch:
    """Everything a trial process needs; every rank of a multi-process trial would read the same file."""

    config: dict[str, Any]
    spec: dict[str, Any]
    run_id: str
    parent_run_id: str
    tracking_uri: str
    cache_dir: str
    data_dir: str | None
    code_version: str
    report_intermediate: bool
    system_metrics_interval: float


class OptunaReporter:
    """Reports a trial's intermediate objective to Optuna and raises TrialPruned when the pruner stops it.

    Optuna prunes single-objective studies only. With several objectives the
    values still reach MLflow, but nothing is reported to the study.
    """

    def __init__(self, trial: optuna.Trial, objective: str, single_objective: bool) -> None:
        self.trial = trial
        self.objective = objective_metric(objective)
        self.single_objective = single_objective

    def report(self, step: int, metrics: dict[str, float]) -> None:
        if not self.single_objective:
            return
        self.trial.report(metrics[self.objective], step)
        if self.trial.should_prune():
            logger.info("trial #%d pruned after iteration %d (%s = %.2f)",
                        self.trial.number, step, self.objective, metrics[self.objective])
            raise optuna.TrialPruned(f"pruned after iteration {step}")


def execute_trial(
    executor: TrialExecutor,
    tracker: SweepTracker,
    spec: TrialSpec,
    config: ExperimentConfig,
    run_id: str,
    *,
    version: str,
    reporter: TrialReporter | None,
    monitor_interval: float,
) -> TrialOutcome:
    """Run the trial body: tags, params and config into the run, then the executor.

    Raises ``optuna.TrialPruned`` when the reporter prunes the trial, and the executor's errors.

    The ``trial/seconds`` metric covers the whole body, from the tags to the executor's return.
    """
    started = time.perf_counter()
    tracker.set_tags(run_id, {
        "rspo.variant": spec.variant_name,
        "rspo.coef": f"{spec.coef:g}",
        "rspo.world": config.world.kind,
        "rspo.code_version": version,
        **executor.tags(spec),
    })
    trial_config = config.model_dump(mode="json")
    trial_config["trial"] = {"key": spec.key, "variant": spec.variant_name, "coef": spec.coef}
    if spec.variant is not None:
        trial_config["trial"]["variant_config"] = spec.variant.model_dump(mode="json")
    params = {key: value for key, value in flatten(trial_config).items()
              if not key.startswith(("sweep.variants", "sweep.search", "trial.variant_config"))}
    params.update({f"optuna.{name}": value for name, value in spec.params.items()})
    tracker.log_params(run_id, params)
    tracker.log_text(run_id, "config/resolved.yaml", yaml.safe_dump(trial_config, sort_keys=False))

    monitor = SystemMonitor(monitor_interval)
    try:
        with monitor:
            if reporter is None:
                value = executor.run(spec, tracker, run_id)
            else:
                value = executor.run(spec, tracker, run_id, reporter)
    finally:
        seconds = time.perf_counter() - started
        tracker.log_metrics(run_id, {"trial/seconds": seconds, "system/peak_rss_mib": monitor.peak_rss_mib})
        tracker.log_system_samples(run_id, monitor.samples)
    metrics = dict(tracker.client.get_run(run_id).data.metrics) if tracker.enabled else {}
    return TrialOutcome("complete", value=float(value), metrics=metrics, seconds=seconds)


class InProcessLauncher:
    """Runs trials in the sweep process with one executor, so the world stays loaded between trials."""

    def __init__(self, executor: TrialExecutor, tracker: SweepTracker, config: ExperimentConfig, *,
                 version: str, monitor_interval: float, cache: Any, record_usage: Callable) -> None:
        self.executor = executor
        self.tracker = tracker
        self.config = config
        self.version = version
        self.monitor_interval = monitor_interval
        self.cache = cache
        self.record_usage = record_usage

    def run(self, spec: TrialSpec, run_id: str, reporter: TrialReporter | None) -> TrialOutcome:
        hits, misses = self.cache.hits, self.cache.misses
        started = time.perf_counter()
        try:
            outcome = execute_trial(
                self.executor, self.tracker, spec, self.config, run_id, version=self.version,
                reporter=reporter, monitor_interval=self.monitor_interval,
            )
        except optuna.TrialPruned:
            outcome = TrialOutcome("pruned", seconds=time.perf_counter() - started)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - reported as the trial's failure
            outcome = TrialOutcome("failed", error=f"{type(error).__name__}: {error}",
                                   seconds=time.perf_counter() - started)
        finally:
            self.record_usage(spec.key, self.cache.take_usage())
        outcome.cache_hits = self.cache.hits - hits
        outcome.cache_misses = self.cache.misses - misses
        return outcome


class SubprocessLauncher:
    """Runs each trial in a fresh Python process, optionally pinned to one device."""

    # NOTE: the trial process is a single process. Starting it through `accelerate launch`
    # for multi-GPU trials is not wired yet; every rank would read the same launch file.

    def __init__(self, launch_defaults: dict[str, Any], *, device: str | None = None) -> None:
        self.launch_defaults = launch_defaults
        self.device = device
        self._process: subprocess.Popen | None = None

    def run(self, spec: TrialSpec, run_id: str, reporter: TrialReporter | None) -> TrialOutcome:
        launch = TrialLaunch(spec=spec.to_json(), run_id=run_id, **self.launch_defaults)
        env = dict(os.environ)
        if self.device is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.device
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="rspo-trial-") as folder:
            launch_path = Path(folder) / "launch.json"
            launch_path.write_text(json.dumps(launch.__dict__), encoding="utf-8")
            read_fd, write_fd = os.pipe()
            command = [sys.executable, "-m", "rspo_bench.sweeps.workers", str(launch_path),
                       "--events-fd", str(write_fd)]
            try:
                self._process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, pass_fds=(write_fd,), env=env
                )
            finally:
                os.close(write_fd)
            try:
                outcome = self._follow(spec, read_fd, reporter)
            finally:
                # Close stdin only after the exit, because end of file signals that the worker died.
                returncode = self._process.wait()
                self._process.stdin.close()
                self._process = None
        outcome.seconds = time.perf_counter() - started
        if outcome.status == "complete" and returncode != 0:
            outcome = TrialOutcome(
                "failed", error=f"trial process exited with code {returncode} after its result"
            )
        return outcome

    def _follow(self, spec: TrialSpec, read_fd: int, reporter: TrialReporter | None) -> TrialOutcome:
        """Read the trial's events until its result, and reply to each intermediate report."""
        process = self._process
        assert process is not None and process.stdin is not None
        with os.fdopen(read_fd, "r", encoding="utf-8") as events:
            for line in events:
                event = json.loads(line)
                if event["event"] == "intermediate":
                    answer = "continue"
                    if reporter is not None:
                        try:
                            reporter.report(int(event["step"]), event["metrics"])
                        except optuna.TrialPruned:
                            answer = "prune"
                    process.stdin.write(f"{answer}\n".encode())
                    process.stdin.flush()
                elif event["event"] == "result":
                    return TrialOutcome(
                        event["status"], value=event.get("value"), metrics=event.get("metrics", {}),
                        error=event.get("error", ""), cache_hits=event.get("cache_hits", 0),
                        cache_misses=event.get("cache_misses", 0),
                    )
        code = process.wait()
        return TrialOutcome(
            "failed", error=f"trial process of {spec.key} ended without a result (exit code {code})"
        )

    def terminate(self) -> None:
        """Stop the running trial process, if any (on Ctrl-C of the worker)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()


# The trial process -------------------------------------------------------------------


class _EventChannel:
    """The trial process's side of the protocol: events out through a pipe, replies in through stdin."""

    def __init__(self, events_fd: int) -> None:
        os.set_inheritable(events_fd, False)
        self._events = os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)
        self._answers: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read_answers, name="worker-watch", daemon=True).start()

    def _read_answers(self) -> None:
        for line in sys.stdin:
            self._answers.put(line.strip())
        # End of file: the worker that started this process is gone, so its trial is abandoned.
        logger.error("the sweep worker exited; stopping this trial process")
        os._exit(EXIT_PARENT_GONE)

    def send(self, event: dict[str, Any]) -> None:
        self._events.write(json.dumps(event) + "\n")

    def ask(self, event: dict[str, Any]) -> str:
        self.send(event)
        return self._answers.get()


class _PipeReporter:
    """Sends intermediate metrics to the worker and raises TrialPruned when it replies ``prune``."""

    def __init__(self, channel: _EventChannel) -> None:
        self.channel = channel

    def report(self, step: int, metrics: dict[str, float]) -> None:
        answer = self.channel.ask({"event": "intermediate", "step": step, "metrics": metrics})
        if answer == "prune":
            raise optuna.TrialPruned(f"pruned after iteration {step}")


def _trial_main(launch: TrialLaunch, channel: _EventChannel) -> int:
    from ..cache import StageCache
    from .executors import build_executor

    config = ExperimentConfig.model_validate(launch.config)
    spec = TrialSpec.from_json(launch.spec)
    cache = StageCache(launch.cache_dir)
    tracker = SweepTracker.attach(launch.tracking_uri, config.name, launch.parent_run_id)
    reporter = _PipeReporter(channel) if launch.report_intermediate else None
    result: dict[str, Any] = {"event": "result"}
    code = 0
    try:
        executor = build_executor(config, cache, launch.data_dir)
        outcome = execute_trial(executor, tracker, spec, config, launch.run_id, version=launch.code_version,
                                reporter=reporter, monitor_interval=launch.system_metrics_interval)
        result.update(status="complete", value=outcome.value, metrics=outcome.metrics)
    except optuna.TrialPruned:
        result.update(status="pruned")
    except Exception as error:  # noqa: BLE001 - sent to the worker, which fails the trial
        logger.exception("trial %s failed", spec.key)
        result.update(status="failed", error=f"{type(error).__name__}: {error}")
        code = 1
    cache.record_usage(config.name, spec.key, cache.take_usage())
    result.update(cache_hits=cache.hits, cache_misses=cache.misses)
    channel.send(result)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run one sweep trial (started by `rspo-bench sweep --workers`)."
    )
    parser.add_argument("launch", type=Path, help="Launch file (JSON) written by the sweep worker.")
    parser.add_argument("--events-fd", type=int, required=True, help="File descriptor of the events pipe.")
    args = parser.parse_args(argv)
    setup_logging()
    channel = _EventChannel(args.events_fd)
    launch = TrialLaunch(**json.loads(args.launch.read_text(encoding="utf-8")))
    return _trial_main(launch, channel)


if __name__ == "__main__":
    sys.exit(main())
