"""Compare training throughput and peak memory of rspo-bench's trainer with TRL's DPOTrainer.

    python benchmarks/trainer_throughput.py             # the recorded run (docs/benchmarks.md)
    python benchmarks/trainer_throughput.py --quick     # a few steps, one repeat (CI)
    python benchmarks/trainer_throughput.py --ablation  # add rows that turn single optimizations off
    python benchmarks/trainer_throughput.py --compile   # add a row with torch.compile

Every configuration trains the same tiny Llama model (same config, same seed) on the
same preference pairs with the same batch size, sequence limits, optimizer (RMSprop),
learning-rate schedule and gradient clipping, for a fixed number of steps:

(a) ``rspo_bench.trainer.train_iteration`` with the soft SPPO loss;
(b) the same with 0.1 × (IS-forward KL + 5 × reverse KL);
(c) TRL's ``DPOTrainer`` with ``loss_type="sppo_hard"`` and a frozen copy of the
    model as its reference model, in float32 without gradient checkpointing as (a)
    and (b) train. TRL's own defaults are bf16 and gradient checkpointing.

Measured per run, over the steps after the warm-up steps:

- tokens/s: non-padding tokens (prompt and response) of the chosen and rejected
  sequences that the trained policy processed, divided by the wall time between the
  ends of consecutive optimizer steps. That time includes batching, tokenization,
  forward and backward passes (TRL's reference forward too) and the optimizer step.
- tokens per CPU-s: the same tokens divided by the process's CPU time
  (``time.process_time``, all threads). On a shared machine it varies less than
  wall time, most of all with ``--threads 1``.
- setup: rspo-bench computes log π_t and log μ of all pairs once before training, one
  ``batched_sequence_logps`` pass per model, as the self-play loop does. TRL's setup is
  building the trainer and its reference copy. "incl. setup" spreads it over the steps.
- peak RSS: ``ru_maxrss`` of the run's own fresh process, so imports count. "above
  baseline" subtracts the resident size measured after imports, tokenizer, data and
  policy model are loaded, so it is what training added: activations, gradients,
  optimizer state, TRL's reference model, our precomputation.

Runs are repeated and interleaved (the order rotates on every repeat), because the
machine may be shared. Figures are medians over runs. A ratio to (c) is the median over
repeats of the ratio within one repeat. The script prints a Markdown table and the
ratios of (a) and (b) to (c).

The pairs come from UltraFeedback prompt/chosen/rejected texts in the data folder
($RSPO_BENCH_DATA or --data-dir), or from seeded synthetic text when no data folder
is found. Win probabilities are seeded random numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _machine import describe_machine

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "RESULT "

# The configurations in table order: name -> row label.
MAIN_CONFIGURATIONS = {
    "rspo_sppo": "(a) rspo-bench trainer, SPPO",
    "rspo_regularized": "(b) rspo-bench trainer, SPPO + 0.1 × (IS-forward KL + 5 × reverse KL)",
    "trl_sppo_hard": "(c) TRL DPOTrainer, sppo_hard, reference model",
}
ABLATION_CONFIGURATIONS = {
    "rspo_sppo_full_logits": "(a0) as (a), logits of every position, one forward pass (before)",
    "rspo_sppo_one_group": "(a1) as (a), response-only logits, one forward pass",
}
COMPILE_CONFIGURATIONS = {
    "rspo_sppo_compiled": "(a2) as (a), torch.compile on the decoder layers",
}
REFERENCE_CONFIGURATION = "trl_sppo_hard"


@dataclass(frozen=True)
class Settings:
    """Parameters that every configuration of one benchmark run shares."""

    steps: int
    warmup_steps: int
    repeats: int
    batch_size: int = 8
    max_prompt_tokens: int = 96
    max_response_tokens: int = 64
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    learning_rate: float = 1e-5
    lr_warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    beta: float = 0.1
    seed: int = 0
    threads: int | None = None


# ---------------------------------------------------------------------------
# Machine and memory
# ---------------------------------------------------------------------------


def machine_description() -> str:
    """Return the core count, the CPU model, and the Python and torch versions."""
    import torch

    return f"{describe_machine()}, torch {torch.__version__}"


def current_rss_mib() -> float:
    """Return the resident set size of this process now, from /proc/self/statm (Linux)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        # NOTE: without /proc the high-water mark replaces the current size, so the
        # "above baseline" column then reads low.
        return peak_rss_mib()
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """Return the high-water mark of this process's resident set size (ru_maxrss, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------
# Inputs shared by all workers: tokenizer and pre-tokenized pairs
# ---------------------------------------------------------------------------


def synthetic_texts(rng: random.Random, count: int) -> list[dict[str, str]]:
    """Return seeded prompt/chosen/rejected texts of varied length, for runs without a data folder."""
    words = [
        "model", "policy", "reward", "answer", "question", "explain", "the", "a", "of", "and", "to",
        "with", "data", "train", "sample", "preference", "response", "why", "how", "list", "steps",
        "first", "then", "finally", "because", "example", "code", "write", "short", "story", "about",
    ]

    def sentence(min_words: int, max_words: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words))) + "."

    return [
        {"prompt": sentence(4, 70), "chosen": sentence(10, 150), "rejected": sentence(10, 150)}
        for _ in range(count)
    ]


def load_texts(settings: Settings, data_dir: str | None) -> tuple[list[dict[str, str]], list[str], str]:
    """Return (pairs to train on, texts to train the tokenizer on, description of the source)."""
    from rspo_bench.data import DataFileNotFoundError, load_ultrafeedback
    from rspo_bench.worlds.tiny import _response_text

    num_pairs = settings.steps * settings.batch_size
    rng = random.Random(settings.seed)
    try:
        records = load_ultrafeedback("train", data_dir)
    except DataFileNotFoundError:
        records = []
    if len(records) >= num_pairs:
        tokenizer_texts = [str(record["prompt"]) for record in records]
        # _response_text accepts both UltraFeedback layouts: plain strings or chat messages.
        pairs = [
            {
                "prompt": str(record["prompt"]),
                "chosen": _response_text(record["chosen"]),
                "rejected": _response_text(record["rejected"]),
            }
            for record in rng.sample(records, num_pairs)
        ]
        return pairs, tokenizer_texts, f"UltraFeedback train split ({len(records)} records)"
    pairs = synthetic_texts(rng, num_pairs)
    tokenizer_texts = [pair["prompt"] + " " + pair["chosen"] for pair in pairs]
    return pairs, tokenizer_texts, "synthetic text (no UltraFeedback data folder found)"


def prepare_inputs(settings: Settings, data_dir: str | None, folder: Path) -> str:
    """Train the tokenizer, tokenize the pairs and write both to ``folder``; return the data source."""
    from rspo_bench.worlds import tiny

    pairs, tokenizer_texts, source = load_texts(settings, data_dir)
    tokenizer = tiny.train_tokenizer(tokenizer_texts, vocab_size=settings.vocab_size)
    tokenizer.save_pretrained(folder / "tokenizer")

    rng = random.Random(settings.seed + 1)
    rows = []
    for pair in pairs:
        tokens = tiny.tokenize_pairs(
            tokenizer,
            [pair["prompt"], pair["prompt"]],
            [pair["chosen"], pair["rejected"]],
            max_prompt_tokens=settings.max_prompt_tokens,
            max_response_tokens=settings.max_response_tokens,
        )
        prompt_length = int((tokens["attention_mask"][0] - tokens["response_mask"][0]).sum())
        chosen_ids, rejected_ids = (
            tokens["input_ids"][row][tokens["response_mask"][row].bool()].tolist() for row in range(2)
        )
        rows.append(
            {
                **pair,
                "prompt_ids": tokens["input_ids"][0][:prompt_length].tolist(),
                "chosen_ids": chosen_ids,
                "rejected_ids": rejected_ids,
                "chosen_win_prob": rng.uniform(0.5, 0.9),
                "rejected_win_prob": rng.uniform(0.1, 0.5),
            }
        )
    (folder / "pairs.json").write_text(json.dumps(rows), encoding="utf-8")
    return source


def sequence_tokens(row: dict[str, Any]) -> int:
    """Return the non-padding tokens of one pair's chosen and rejected sequences, prompts included."""
    return 2 * len(row["prompt_ids"]) + len(row["chosen_ids"]) + len(row["rejected_ids"])


# ---------------------------------------------------------------------------
# Worker: one configuration in one fresh process
# ---------------------------------------------------------------------------


class StepClock:
    """Wall-clock and CPU time stamps at the end of every optimizer step, with that step's tokens."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[int] = []
        # Tokens of the step in progress, for trainers that see the batch before the step ends.
        self.pending_tokens = 0

    def begin(self) -> None:
        """Mark the start of training, so that the first step's time (warm-up included) is known."""
        self.start = time.perf_counter()

    def stamp(self, tokens: int) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.tokens.append(tokens)

    def summary(self, warmup_steps: int) -> dict[str, Any]:
        """Return the intervals between consecutive step ends, leaving out the first ``warmup_steps`` steps."""
        first = max(warmup_steps, 1)
        if len(self.wall) <= first:
            raise RuntimeError(
                f"only {len(self.wall)} steps ran, which leaves no step after the {warmup_steps} warm-up steps; "
                f"raise --steps"
            )
        wall = [self.wall[i] - self.wall[i - 1] for i in range(first, len(self.wall))]
        cpu = [self.cpu[i] - self.cpu[i - 1] for i in range(first, len(self.cpu))]
        return {
            "step_seconds": wall,
            "step_cpu_seconds": cpu,
            "step_tokens": self.tokens[first:],
            "first_step_seconds": self.wall[0] - self.start,
            "total_tokens": sum(self.tokens),
            "steps": len(self.wall),
        }


def full_logits_sequence_logps(model, input_ids, attention_mask, response_mask, *, average=False):
    """Score every position with the full-vocabulary logits: ``tiny.sequence_logps`` before its optimization."""
    import torch

    from rspo_bench.worlds import tiny

    per_token = tiny.token_logps(model, input_ids, attention_mask)
    mask = response_mask[:, 1:].bool()
    totals = torch.where(mask, per_token, torch.zeros_like(per_token)).sum(-1)
    if average:
        return totals / mask.sum(-1).clamp(min=1)
    return totals


def build_model(settings: Settings, tokenizer):
    from rspo_bench.config import TinyModelConfig
    from rspo_bench.worlds import tiny

    config = TinyModelConfig(
        vocab_size=settings.vocab_size,
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        max_position_embeddings=512,
    )
    return tiny.build_tiny_model(config, tokenizer, seed=settings.seed)


def run_rspo(name: str, settings: Settings, tokenizer, model, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Precompute the frozen log-probs, then train with ``train_iteration`` and time every step."""
    from rspo_bench import trainer
    from rspo_bench.config import TrainingConfig
    from rspo_bench.methods.base_losses import SoftSPPOLoss
    from rspo_bench.methods.loss import RegularizerTerm, RSPOLoss
    from rspo_bench.methods.regularizers import ImportanceForwardKL, ReverseKL
    from rspo_bench.worlds import tiny

    if name == "rspo_sppo_full_logits":
        tiny.sequence_logps = full_logits_sequence_logps
    elif name == "rspo_sppo_one_group":
        tiny.MAX_LENGTH_GROUPS = 1
    elif name == "rspo_sppo_compiled":
        # Compiling each decoder layer keeps the Python-level length grouping outside the graph.
        for layer in model.model.layers:
            layer.compile(dynamic=True)

    lengths = {"max_prompt_tokens": settings.max_prompt_tokens, "max_response_tokens": settings.max_response_tokens}
    prompts = [row["prompt"] for row in rows] * 2
    responses = [row["chosen"] for row in rows] + [row["rejected"] for row in rows]

    # The self-play loop computes log π_t and log μ once per iteration, each with its model
    # loaded in turn. Here a frozen copy of the model plays the base policy μ.
    setup_start = time.perf_counter()
    prev_logps = tiny.batched_sequence_logps(model, tokenizer, prompts, responses, **lengths)
    base_model = copy.deepcopy(model)
    base_logps = tiny.batched_sequence_logps(base_model, tokenizer, prompts, responses, **lengths)
    del base_model
    setup_seconds = time.perf_counter() - setup_start

    num_pairs = len(rows)
    records = [
        trainer.PairRecord(
            prompt=row["prompt"],
            chosen=row["chosen"],
            rejected=row["rejected"],
            chosen_win_prob=row["chosen_win_prob"],
            rejected_win_prob=row["rejected_win_prob"],
            chosen_prev_logp=float(prev_logps[i]),
            rejected_prev_logp=float(prev_logps[num_pairs + i]),
            chosen_ref_logp=float(base_logps[i]),
            rejected_ref_logp=float(base_logps[num_pairs + i]),
        )
        for i, row in enumerate(rows)
    ]
    tokens_of_record = {id(record): sequence_tokens(row) for record, row in zip(records, rows, strict=True)}

    base_loss = SoftSPPOLoss(beta=settings.beta)
    if name == "rspo_regularized":
        terms = [RegularizerTerm(ImportanceForwardKL(clip=10.0), 1.0), RegularizerTerm(ReverseKL(), 5.0)]
        loss_fn = RSPOLoss(base=base_loss, terms=terms, coef=0.1)
    else:
        loss_fn = RSPOLoss(base=base_loss)
    config = TrainingConfig(
        optimizer="rmsprop",
        learning_rate=settings.learning_rate,
        lr_warmup_ratio=settings.lr_warmup_ratio,
        epochs=1,
        batch_size=settings.batch_size,
        max_grad_norm=settings.max_grad_norm,
        max_prompt_tokens=settings.max_prompt_tokens,
        max_response_tokens=settings.max_response_tokens,
    )

    clock = StepClock()
    original_train_step = trainer._train_step

    def timed_train_step(model, tokenizer, records, *args, **kwargs):
        metrics = original_train_step(model, tokenizer, records, *args, **kwargs)
        clock.stamp(sum(tokens_of_record[id(record)] for record in records))
        return metrics

    trainer._train_step = timed_train_step
    clock.begin()
    metrics = trainer.train_iteration(model, tokenizer, records, loss_fn, config, seed=settings.seed, iteration=1)
    return {**clock.summary(settings.warmup_steps), "setup_seconds": setup_seconds, "mean_loss": metrics["loss"]}


def run_trl(settings: Settings, tokenizer, model, rows: list[dict[str, Any]], output_dir: Path) -> dict[str, Any]:
    """Train with TRL's DPOTrainer (sppo_hard) against a frozen reference copy and time every step."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer on pairs that are already tokenized exactly as rspo-bench tokenizes them.

        TRL cannot truncate prompts from the left while keeping ``<s>``, so the ids come
        from ``tiny.tokenize_pairs`` and TRL's own tokenization, a one-off cost, is skipped.
        """

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def training_step(self, model, inputs, num_items_in_batch=None):
            clock.pending_tokens = int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    class StepEndCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.stamp(clock.pending_tokens)

    clock = StepClock()
    dataset = Dataset.from_dict(
        {key: [row[key] for row in rows] for key in ("prompt_ids", "chosen_ids", "rejected_ids")}
    )
    args = DPOConfig(
        output_dir=str(output_dir),
        loss_type=["sppo_hard"],
        beta=settings.beta,
        optim="rmsprop",
        learning_rate=settings.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=int(settings.lr_warmup_ratio * settings.steps),
        max_grad_norm=settings.max_grad_norm,
        per_device_train_batch_size=settings.batch_size,
        max_steps=settings.steps,
        max_length=None,
        precompute_ref_log_probs=False,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=settings.seed,
    )
    setup_start = time.perf_counter()
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    dpo_trainer = PretokenizedDPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[StepEndCallback()],
    )
    setup_seconds = time.perf_counter() - setup_start
    clock.begin()
    output = dpo_trainer.train()
    return {**clock.summary(settings.warmup_steps), "setup_seconds": setup_seconds, "mean_loss": output.training_loss}


def worker(name: str, inputs: Path, settings: Settings) -> dict[str, Any]:
    """Run one configuration and return its timings and memory; meant for a fresh process."""
    import torch
    from transformers import AutoTokenizer

    if name == REFERENCE_CONFIGURATION:
        import trl  # noqa: F401  (imported before the baseline, as rspo_bench is for the other rows)
    from rspo_bench import trainer  # noqa: F401

    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    tokenizer = AutoTokenizer.from_pretrained(inputs / "tokenizer", local_files_only=True)
    rows = json.loads((inputs / "pairs.json").read_text(encoding="utf-8"))
    model = build_model(settings, tokenizer)
    baseline_rss = current_rss_mib()

    if name == REFERENCE_CONFIGURATION:
        with tempfile.TemporaryDirectory(prefix="trl-output-") as output_dir:
            result = run_trl(settings, tokenizer, model, rows, Path(output_dir))
    else:
        result = run_rspo(name, settings, tokenizer, model, rows)
    result.update(
        name=name,
        baseline_rss_mib=baseline_rss,
        peak_rss_mib=peak_rss_mib(),
        threads=torch.get_num_threads(),
        parameters=sum(parameter.numel() for parameter in model.parameters()),
        vocabulary=model.config.vocab_size,
    )
    return result


# ---------------------------------------------------------------------------
# Parent: run the workers, aggregate, print
# ---------------------------------------------------------------------------


def run_worker(name: str, inputs: Path, settings: Settings) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--inputs", str(inputs),
               "--settings", json.dumps(asdict(settings))]
    env = {**os.environ, "RSPO_BENCH_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode != 0 or not lines:
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(f"benchmark worker {name!r} failed with exit status {completed.returncode}; its stderr is above")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


FIGURES = (
    "tokens_per_second",
    "tokens_per_cpu_second",
    "step_seconds",
    "setup_seconds",
    "tokens_per_second_with_setup",
    "peak_rss_mib",
    "training_rss_mib",
)


def run_figures(run: dict[str, Any], settings: Settings) -> dict[str, float]:
    """Return the figures of one run: throughput over the timed steps, setup and memory."""
    timed_tokens = sum(run["step_tokens"])
    timed_seconds = sum(run["step_seconds"])
    mean_step = timed_seconds / len(run["step_seconds"])
    # The one-off setup spread over the steps it serves, for a throughput that includes it.
    mean_step_with_setup = mean_step + run["setup_seconds"] / settings.steps
    return {
        "tokens_per_second": timed_tokens / timed_seconds,
        "tokens_per_cpu_second": timed_tokens / sum(run["step_cpu_seconds"]),
        "step_seconds": statistics.median(run["step_seconds"]),
        "setup_seconds": run["setup_seconds"],
        "tokens_per_second_with_setup": timed_tokens / len(run["step_tokens"]) / mean_step_with_setup,
        "peak_rss_mib": run["peak_rss_mib"],
        "training_rss_mib": run["peak_rss_mib"] - run["baseline_rss_mib"],
    }


def summarize(
    runs: dict[str, list[dict[str, Any]]], settings: Settings
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Return (median of each figure over runs, median over repeats of each figure's ratio to (c)) per configuration.

    A ratio pairs runs of the same repeat, which ran minutes apart at most, so a change of
    the machine's load between repeats affects both sides of it.
    """
    figures = {name: [run_figures(run, settings) for run in name_runs] for name, name_runs in runs.items()}
    reference = figures[REFERENCE_CONFIGURATION]
    medians = {}
    ratios = {}
    for name, name_figures in figures.items():
        medians[name] = {key: statistics.median(f[key] for f in name_figures) for key in FIGURES}
        ratios[name] = {
            key: statistics.median(f[key] / r[key] for f, r in zip(name_figures, reference, strict=True))
            for key in FIGURES
        }
    return medians, ratios


def markdown_table(
    labels: dict[str, str], medians: dict[str, dict[str, float]], ratios: dict[str, dict[str, float]]
) -> str:
    lines = [
        "| configuration | tokens/s | tokens per CPU-s | median step (s) | setup (s) | tokens/s incl. setup "
        "| peak RSS (MiB) | RSS above baseline (MiB) | tokens/s ÷ (c) | tokens per CPU-s ÷ (c) "
        "| incl. setup ÷ (c) | peak RSS ÷ (c) | above baseline ÷ (c) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in labels.items():
        m = medians[name]
        r = ratios[name]
        lines.append(
            f"| {label} | {m['tokens_per_second']:.0f} | {m['tokens_per_cpu_second']:.0f} "
            f"| {m['step_seconds']:.3f} | {m['setup_seconds']:.2f} | {m['tokens_per_second_with_setup']:.0f} "
            f"| {m['peak_rss_mib']:.0f} | {m['training_rss_mib']:.0f} "
            f"| {r['tokens_per_second']:.2f} | {r['tokens_per_cpu_second']:.2f} "
            f"| {r['tokens_per_second_with_setup']:.2f} | {r['peak_rss_mib']:.2f} | {r['training_rss_mib']:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 warm-up step, 1 repeat: a smoke run for CI.")
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps per run (default 24; 4 with --quick).")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="Leading steps left out of the step times, at least 1 (default 2; 1 with --quick).")
    parser.add_argument("--repeats", type=int, default=None, help="Runs per configuration (default 3; 1 with --quick).")
    parser.add_argument("--batch-size", type=int, default=8, help="Preference pairs per optimizer step.")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads; default: torch's choice.")
    parser.add_argument("--data-dir", default=None, help="Data folder with ultrafeedback/; default: $RSPO_BENCH_DATA.")
    parser.add_argument("--ablation", action="store_true",
                        help="Also run (a) with single optimizations turned off: full logits, one forward pass.")
    parser.add_argument("--compile", action="store_true",
                        help="Also run (a) with torch.compile on the decoder layers (slow to compile on a CPU).")
    parser.add_argument("--json", default=None, help="Also write every run's raw timings to this JSON file.")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--settings", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        settings = Settings(**json.loads(args.settings))
        result = worker(args.worker, Path(args.inputs), settings)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    if args.quick:
        steps, warmup_steps, repeats = 4, 1, 1
    else:
        steps, warmup_steps, repeats = 24, 2, 3
    if args.warmup_steps is not None:
        warmup_steps = args.warmup_steps
    settings = Settings(
        steps=args.steps or steps,
        warmup_steps=warmup_steps,
        repeats=args.repeats or repeats,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    if settings.steps <= settings.warmup_steps:
        raise SystemExit(f"--steps ({settings.steps}) must exceed --warmup-steps ({settings.warmup_steps})")
    labels = dict(MAIN_CONFIGURATIONS)
    if args.ablation:
        labels.update(ABLATION_CONFIGURATIONS)
    if args.compile:
        labels.update(COMPILE_CONFIGURATIONS)

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in labels}
    with tempfile.TemporaryDirectory(prefix="rspo-trainer-benchmark-") as folder:
        inputs = Path(folder)
        source = prepare_inputs(settings, args.data_dir, inputs)
        names = list(labels)
        for repeat in range(settings.repeats):
            # Rotate the order on every repeat so that no configuration always runs first or last.
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                result = run_worker(name, inputs, settings)
                runs[name].append(result)
                print(f"repeat {repeat + 1}/{settings.repeats} {name}: "
                      f"median step {statistics.median(result['step_seconds']):.3f} s, "
                      f"peak RSS {result['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)

    medians, ratios = summarize(runs, settings)
    token_totals = {name: name_runs[0]["total_tokens"] for name, name_runs in runs.items()}
    if len(set(token_totals.values())) != 1:
        print(f"WARNING: the configurations processed different token totals, so they did not train on the same "
              f"data: {token_totals}", file=sys.stderr)

    first = runs[names[0]][0]
    command = " ".join(["python", "benchmarks/trainer_throughput.py", *map(shlex.quote, sys.argv[1:])])
    print(f"Machine: {machine_description()}; torch threads {first['threads']}")
    print(f"Command: `{command}`")
    print(
        f"Model: tiny Llama, {first['parameters']:,} parameters (hidden {settings.hidden_size}, "
        f"{settings.num_hidden_layers} layers, vocabulary {first['vocabulary']}), float32. "
        f"Data: {source}; {settings.steps} steps of {settings.batch_size} pairs, prompts ≤ "
        f"{settings.max_prompt_tokens} and responses ≤ {settings.max_response_tokens} tokens, "
        f"{token_totals[names[0]]} non-padding tokens per run. "
        f"Runs per configuration: {settings.repeats}; warm-up steps left out of each: {settings.warmup_steps}."
    )
    print()
    print(markdown_table(labels, medians, ratios))
    print()
    for name in ("rspo_sppo", "rspo_regularized"):
        r = ratios[name]
        print(
            f"{labels[name].split()[0]}/(c): tokens/s × {r['tokens_per_second']:.2f}, "
            f"tokens per CPU-s × {r['tokens_per_cpu_second']:.2f}, "
            f"incl. setup × {r['tokens_per_second_with_setup']:.2f}, "
            f"peak RSS × {r['peak_rss_mib']:.2f}, RSS above baseline × {r['training_rss_mib']:.2f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"settings": asdict(settings), "runs": runs, "medians": medians, "ratios": ratios}, indent=2),
            encoding="utf-8",
        )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
