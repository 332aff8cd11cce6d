"""Synthetic sweeps in an MLflow store, for the report's screenshot and benchmark.

The runs follow the layout of the sweep runner: a parent run with the
flattened config as params, and one child run per trial with ``rspo.*`` tags,
per-iteration metrics at ``step = iteration`` and final ``alpaca_eval2/*``
metrics. Every number is made up by a smooth formula plus seeded noise, and
nothing here trains or evaluates a model.

Run ``python -m rspo_bench.reporting.synthetic OUTPUT_DIR`` to write the demo
sweep's report and, with ``--screenshot PNG``, a Chromium screenshot of it.
docs/report-screenshot.png comes from ``--screenshot docs/report-screenshot.png
--height 2076 --colors 256``, which ends below the first coefficient figure.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag

# MLflow's log_batch accepts at most 1000 metrics, 100 params and 100 tags per call.
_BATCH_METRICS = 1000
_BATCH_PARAMS = 100
_BATCH_TAGS = 100
START_MS = 1_735_689_600_000  # 2025-01-01 00:00:00 UTC
PROXY_JUDGE = "offline-proxy-judge"
PROXY_JUDGE_DESCRIPTION = "Offline proxy judge: a reward model trained on synthetic preferences (not GPT-4)."
DATA_TAG = "AlpacaEval 2.0: 805 of 805 instructions; baseline gpt4_1106_preview"
CODE_VERSION = "rspo-bench 0.1.0 (synthetic demo data)"


@dataclass(frozen=True)
class VariantShape:
    """A variant of a synthetic sweep: its regularizer terms and how its final metrics respond to λ."""

    name: str
    regularizers: tuple[tuple[str, float], ...]
    # Win rate gain in points at the best λ, the log10 of that λ, and how fast it falls off around it.
    peak_gain: float
    peak_log_coef: float
    width: float
    # Extra characters of mean length per unit of log10(λ) above 0.01.
    length_slope: float


@dataclass
class SyntheticTrial:
    """One made-up trial: its key, variant, λ, how it ended and its final and per-iteration metrics."""

    key: str
    variant: str
    coef: float | None
    regularizers: tuple[tuple[str, float], ...] = ()
    status: str = "FINISHED"
    state: str = "complete"
    final: dict[str, float] = field(default_factory=dict)
    iterations: list[dict[str, float]] = field(default_factory=list)


DEMO_SHAPES = (
    VariantShape("reverse_kl", (("reverse_kl", 1.0),), 6.0, math.log10(0.5), 1.1, 260.0),
    VariantShape("is_forward_kl", (("is_forward_kl", 1.0),), 2.5, -1.0, 0.9, -90.0),
    VariantShape("is_forward_reverse", (("is_forward_kl", 1.0), ("reverse_kl", 5.0)), 8.0, -1.0, 0.8, 150.0),
    VariantShape("chi_squared", (("chi_squared", 1.0),), 3.0, -1.0, 1.0, 200.0),
    VariantShape("forward_kl", (("forward_kl", 1.0),), 1.5, -0.5, 1.2, -40.0),
)


def demo_trials(iterations: int = 3, seed: int = 0) -> list[SyntheticTrial]:
    """Return the demo sweep: base, SPPO, reverse KL and IS-forward KL at 3 λ each, and the headline mix."""
    rng = random.Random(seed)
    shapes = {shape.name: shape for shape in DEMO_SHAPES}
    trials = [_base_trial(), _selfplay_trial("sppo", None, 0.0, iterations, rng)]
    for coef in (0.1, 0.5, 1.0):
        trials.append(_selfplay_trial("reverse_kl", shapes["reverse_kl"], coef, iterations, rng))
    for coef in (0.01, 0.1, 0.5):
        trials.append(_selfplay_trial("is_forward_kl", shapes["is_forward_kl"], coef, iterations, rng))
    trials.append(_selfplay_trial("is_forward_reverse", shapes["is_forward_reverse"], 0.1, iterations, rng))
    return trials


def benchmark_trials(count: int = 500, iterations: int = 3, seed: int = 0) -> list[SyntheticTrial]:
    """Return ``count`` trials: base, SPPO, then variants at log-uniform λ in [1e-3, 10].

    About one regularized trial in 37 is pruned and one in 101 failed (14 and 5 of 500).
    """
    rng = random.Random(seed)
    trials = [_base_trial(), _selfplay_trial("sppo", None, 0.0, iterations, rng)]
    index = 0
    while len(trials) < count:
        shape = DEMO_SHAPES[index % len(DEMO_SHAPES)]
        coef = float(f"{10 ** rng.uniform(-3, 1):.4g}")
        trial = _selfplay_trial(shape.name, shape, coef, iterations, rng, key_suffix=f"-{index}")
        if index % 37 == 5:
            _prune(trial, rng)
        elif index % 101 == 7:
            _fail(trial)
        trials.append(trial)
        index += 1
    return trials


def log_sweep(
    tracking_uri: str,
    sweep: str,
    trials: Sequence[SyntheticTrial],
    *,
    world: str = "tiny",
    hf_model: str = "",
    iterations: int = 3,
) -> str:
    """Log ``trials`` as sweep ``sweep`` into ``tracking_uri`` with log_batch and return the parent run id."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(sweep)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(sweep)
    parent = client.create_run(
        experiment_id, start_time=START_MS, run_name=sweep, tags={"rspo.role": "sweep", "rspo.sweep": sweep}
    )
    parent_id = parent.info.run_id
    config = _config_params(sweep, trials, world=world, hf_model=hf_model, iterations=iterations)
    _log_batches(client, parent_id, params=[Param(key, value) for key, value in config.items()])

    for trial in trials:
        tags = {
            "mlflow.parentRunId": parent_id,
            "rspo.role": "trial",
            "rspo.sweep": sweep,
            "rspo.trial": trial.key,
            "rspo.variant": trial.variant,
            "rspo.coef": "" if trial.coef is None else f"{trial.coef:g}",
            "rspo.judge": PROXY_JUDGE,
            "rspo.judge_is_proxy": "true",
            "rspo.judge_description": PROXY_JUDGE_DESCRIPTION,
            "rspo.data": DATA_TAG,
            "rspo.code_version": CODE_VERSION,
            "rspo.world": world,
            "rspo.state": trial.state,
        }
        run = client.create_run(experiment_id, start_time=START_MS, run_name=trial.key, tags=tags)
        params = {key: value for key, value in config.items() if not key.startswith("sweep.variants")}
        params["trial.key"] = trial.key
        params["trial.variant"] = trial.variant
        params["trial.coef"] = str(trial.coef or 0.0)
        metrics = [
            Metric(name, value, START_MS + step * 60_000, step)
            for step, values in enumerate(trial.iterations, start=1)
            for name, value in values.items()
        ]
        last_step = len(trial.iterations)
        metrics += [
            Metric(f"alpaca_eval2/{name}", value, START_MS + (last_step + 1) * 60_000, last_step)
            for name, value in trial.final.items()
        ]
        run_params = [Param(key, str(value)) for key, value in params.items()]
        _log_batches(client, run.info.run_id, metrics=metrics, params=run_params)
        client.set_terminated(run.info.run_id, status=trial.status, end_time=START_MS + 3_600_000)
    client.set_terminated(parent_id, status="FINISHED", end_time=START_MS + 3_600_000)
    return parent_id


def _base_trial() -> SyntheticTrial:
    final = {"win_rate": 14.7, "standard_error": 1.1, "lc_win_rate": 17.1, "lc_standard_error": 0.8}
    final.update({"avg_length": 1676.0, "n_instructions": 805.0})
    return SyntheticTrial("base", "base", 0.0, final=final)


def _selfplay_trial(
    variant: str,
    shape: VariantShape | None,
    coef: float,
    iterations: int,
    rng: random.Random,
    key_suffix: str = "",
) -> SyntheticTrial:
    """Make one self-play trial whose metrics improve over iterations towards a λ-dependent final value."""
    gain = 0.0
    length_shift = 0.0
    if shape is not None and coef > 0:
        distance = (math.log10(coef) - shape.peak_log_coef) / shape.width
        gain = shape.peak_gain * math.exp(-0.5 * distance**2)
        length_shift = shape.length_slope * (math.log10(coef) + 2.0)
    win_rate = 29.7 + gain + rng.gauss(0, 0.6)
    lc_win_rate = 29.2 + 0.8 * gain + rng.gauss(0, 0.5)
    length = 2050.0 + length_shift + rng.gauss(0, 25)
    kl_scale = 0.35 / (1.0 + 4.0 * coef)

    history = []
    for step in range(1, iterations + 1):
        progress = step / iterations
        values = {
            "train/loss": 0.52 - 0.09 * step + rng.gauss(0, 0.005),
            "train/sppo": 0.49 - 0.10 * step + rng.gauss(0, 0.005),
            "train/reg_total": coef * kl_scale * step * 0.8,
            "train/grad_norm": 1.4 / (1.0 + 0.3 * step) * (1.0 + 0.5 * coef) + rng.gauss(0, 0.02),
            "selfplay/kl_to_base": kl_scale * step,
            "selfplay/response_length": 1676.0 + (length - 1676.0) * progress,
            "selfplay/win_prob_gap": 0.18 + (0.03 + 0.02 * rng.random()) * step,
            "selfplay/win_prob_std": 0.11,
            "selfplay/chosen_win_prob": 0.61 + 0.02 * step,
            "selfplay/rejected_win_prob": 0.42 - 0.02 * step,
            "eval_iter/alpaca_eval2/win_rate": 14.7 + (win_rate - 14.7) * progress,
            "eval_iter/alpaca_eval2/lc_win_rate": 17.1 + (lc_win_rate - 17.1) * progress,
            "eval_iter/alpaca_eval2/avg_length": 1676.0 + (length - 1676.0) * progress,
        }
        for name, _weight in shape.regularizers if shape is not None else ():
            # train/reg/<name> is the term before its weight and λ, as the loss logs it.
            values[f"train/reg/{name}"] = kl_scale * step * (0.9 if name == "reverse_kl" else 1.3)
        history.append(values)

    final = {
        "win_rate": win_rate,
        "standard_error": 1.3,
        "lc_win_rate": lc_win_rate,
        "lc_standard_error": 0.9,
        "avg_length": length,
        "n_instructions": 805.0,
    }
    key = f"{variant}-{coef:g}{key_suffix}"
    regularizers = shape.regularizers if shape is not None else ()
    return SyntheticTrial(key, variant, coef, regularizers, final=final, iterations=history)


def _prune(trial: SyntheticTrial, rng: random.Random) -> None:
    completed = rng.randint(1, max(1, len(trial.iterations) - 1))
    trial.iterations = trial.iterations[:completed]
    trial.final = {}
    trial.status, trial.state = "KILLED", "pruned"


def _fail(trial: SyntheticTrial) -> None:
    trial.iterations = trial.iterations[:1]
    trial.final = {}
    trial.status, trial.state = "FAILED", "failed"


def _config_params(
    sweep: str, trials: Sequence[SyntheticTrial], *, world: str, hf_model: str, iterations: int
) -> dict[str, str]:
    """Return flattened config params like those the sweep runner logs on the parent run."""
    params = {
        "name": sweep,
        "seed": "0",
        "world.kind": world,
        "judge.kind": "offline",
        "selfplay.iterations": str(iterations),
        "selfplay.sampling.num_samples": "5",
        "selfplay.sampling.temperature": "0.7",
        "selfplay.sampling.top_p": "0.9",
        "training.optimizer": "rmsprop",
        "training.learning_rate": "5e-07",
        "training.batch_size": "64",
        "training.max_grad_norm": "1.0",
        "evaluation.alpaca_eval2.every_iteration": "True",
        "sweep.kind": "grid",
        "sweep.beta": "0.001",
        "sweep.include_base": "True",
    }
    if hf_model:
        params["world.hf.name_or_path"] = hf_model
    variants: dict[str, tuple[tuple[str, float], ...]] = {}
    for trial in trials:
        if not trial.variant or trial.variant == "base":
            continue
        variants.setdefault(trial.variant, trial.regularizers)
    for index, (name, regularizers) in enumerate(variants.items()):
        params[f"sweep.variants.{index}.name"] = name
        params[f"sweep.variants.{index}.loss"] = "sppo"
        for term, (regularizer, weight) in enumerate(regularizers):
            params[f"sweep.variants.{index}.regularizers.{term}.name"] = regularizer
            params[f"sweep.variants.{index}.regularizers.{term}.weight"] = f"{weight:g}"
        if not regularizers:
            params[f"sweep.variants.{index}.regularizers"] = "[]"
    return params


def _log_batches(
    client: mlflow.MlflowClient,
    run_id: str,
    *,
    metrics: Sequence[Metric] = (),
    params: Sequence[Param] = (),
    tags: Sequence[RunTag] = (),
) -> None:
    for start in range(0, len(params), _BATCH_PARAMS):
        client.log_batch(run_id, params=list(params[start : start + _BATCH_PARAMS]))
    for start in range(0, len(tags), _BATCH_TAGS):
        client.log_batch(run_id, tags=list(tags[start : start + _BATCH_TAGS]))
    for start in range(0, len(metrics), _BATCH_METRICS):
        client.log_batch(run_id, metrics=list(metrics[start : start + _BATCH_METRICS]))


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 2000) -> None:
    """Save a headless-Chromium screenshot of ``html``, ``width`` × ``height`` CSS pixels, to ``png``."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise FileNotFoundError("chromium not found on PATH; install it to take the report screenshot")
    with tempfile.TemporaryDirectory(prefix="rspo-screenshot-") as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}", html.resolve().as_uri(),
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=120)


def main(argv: Sequence[str] | None = None) -> None:
    """Write the demo sweep's report into OUTPUT_DIR, and a screenshot of it when asked."""
    from rspo_bench.reporting.collect import collect_sweep
    from rspo_bench.reporting.html import write_report

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("output_dir", type=Path, help="Folder for report.html and the MLflow store.")
    parser.add_argument("--iterations", type=int, default=3, help="Self-play iterations per trial.")
    parser.add_argument(
        "--screenshot", type=Path, help="Also save a 1280-pixel-wide Chromium screenshot (PNG) here."
    )
    parser.add_argument("--height", type=int, default=2000, help="Screenshot height in CSS pixels.")
    parser.add_argument(
        "--colors", type=int, default=0, help="Palette size of the screenshot (at most 256). 0 keeps RGB."
    )
    args = parser.parse_args(argv)

    args.output_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{args.output_dir.resolve()}/mlruns.db"
    sweep = "demo-rspo-sweep"
    log_sweep(tracking_uri, sweep, demo_trials(args.iterations), iterations=args.iterations)
    written = write_report([collect_sweep(tracking_uri, sweep)], args.output_dir, formats=("html",))
    if args.screenshot is not None:
        screenshot(written["html"], args.screenshot, height=args.height)
        if args.colors:
            reduce_colors(args.screenshot, args.colors)


def reduce_colors(png: Path, colors: int) -> None:
    """Rewrite ``png`` as a palette image of at most ``colors`` colors (no dithering) to shrink the file."""
    from PIL import Image

    with Image.open(png) as image:
        # Octree keeps the saturated plot colors apart. Median cut merged orange into red in a test.
        palette = image.convert("RGB").quantize(
            colors=colors, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE
        )
    palette.save(png, optimize=True)


if __name__ == "__main__":
    main()
