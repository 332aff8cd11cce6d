"""Environment report for ``rspo-bench doctor`` and an end-to-end iteration check.

:func:`run_checks` collects package versions, devices, free memory, optional
extras, the data folder's expected files and whether the MLflow tracking store
and the Optuna storage are reachable. :func:`render_checks` puts them in one rich table.

:func:`run_iteration_check` runs one self-play iteration of the ``hf`` world on a
Llama-style model built from a config (about 0.47 B parameters, or a tiny one),
offline: sampling, scoring with a random PairRM, log-probabilities and training,
and reports tokens per second for generation and training. ``benchmarks/gpu_check.sh``
runs it on one CUDA GPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from rich.markup import escape
from rich.table import Table

from . import data as data_module
from .logs import get_logger

logger = get_logger(__name__)

OK = "ok"
INFO = "info"
MISSING = "missing"
ERROR = "error"
STATUS_STYLES = {OK: "green", INFO: "cyan", MISSING: "yellow", ERROR: "red"}

KEY_PACKAGES = (
    "rspo-bench",
    "torch",
    "transformers",
    "tokenizers",
    "accelerate",
    "trl",
    "mlflow",
    "optuna",
    "alpaca-eval",
    "pydantic",
    "numpy",
)
OPTIONAL_EXTRAS = {
    "vllm": "vLLM generation (world.hf.generation_backend: vllm); pip install 'rspo-bench[vllm]'",
    "deepspeed": "ZeRO-3 training (experiments/accelerate/zero3.yaml); pip install 'rspo-bench[deepspeed]'",
    "peft": "LoRA adapters (world.hf.lora_rank); pip install peft",
}
EXPECTED_DATA_FILES = (
    data_module.ULTRAFEEDBACK_TRAIN,
    data_module.ULTRAFEEDBACK_EVAL,
    data_module.ALPACA_EVAL_INSTRUCTIONS,
    data_module.ALPACA_EVAL_BASELINE,
    data_module.ALPACA_EVAL_DIFFICULTY,
    data_module.ALPACA_EVAL_GAMED_WEIGHTS,
)
SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql", "oracle")


@dataclass(frozen=True)
class Check:
    """One line of the report: its section, subject, status (ok, info, missing, error) and detail."""

    section: str
    name: str
    status: str
    detail: str


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


# ---------------------------------------------------------------------------
# Packages, devices and memory
# ---------------------------------------------------------------------------


def package_checks() -> list[Check]:
    """Return the installed version of each key package; a missing one is an error."""
    checks = []
    for package in KEY_PACKAGES:
        try:
            checks.append(Check("packages", package, OK, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            checks.append(
                Check("packages", package, ERROR, "not installed; reinstall rspo-bench with pip install -e .")
            )
    return checks


def extra_checks() -> list[Check]:
    """Return whether each optional extra is importable, with its version or what installing it enables."""
    checks = []
    for package, purpose in OPTIONAL_EXTRAS.items():
        if importlib.util.find_spec(package) is None:
            checks.append(Check("extras", package, MISSING, f"not installed; needed for {purpose}"))
            continue
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            version = "version unknown"
        checks.append(Check("extras", package, OK, version))
    return checks


def device_checks() -> list[Check]:
    """Return the CUDA devices with their free and total memory, or the CPU when there is none."""
    import torch

    if not torch.cuda.is_available():
        threads = torch.get_num_threads()
        return [
            Check(
                "devices",
                "cpu",
                INFO,
                f"no CUDA device; {os.cpu_count()} CPU cores, torch uses {threads} threads",
            )
        ]
    checks = [
        Check("devices", "cuda", OK, f"{torch.cuda.device_count()} device(s), CUDA {torch.version.cuda}")
    ]
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        bf16 = "bf16" if torch.cuda.is_bf16_supported() else "no bf16"
        checks.append(
            Check(
                "devices",
                f"cuda:{index}",
                OK,
                f"{properties.name}, compute capability {properties.major}.{properties.minor}, {bf16}, "
                f"{_gib(free)} free of {_gib(total)}",
            )
        )
    return checks


def memory_checks(paths: dict[str, Path]) -> list[Check]:
    """Return the available RAM and the free disk space under each folder in ``paths``."""
    import psutil

    memory = psutil.virtual_memory()
    checks = [Check("memory", "RAM", OK, f"{_gib(memory.available)} available of {_gib(memory.total)}")]
    for label, path in paths.items():
        existing = path
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        usage = shutil.disk_usage(existing)
        checks.append(Check("memory", f"disk ({label})", OK, f"{_gib(usage.free)} free at {existing}"))
    return checks


# ---------------------------------------------------------------------------
# Data folder
# ---------------------------------------------------------------------------


def data_checks(data_dir: str | Path | None) -> list[Check]:
    """Return, per file the sweeps read, whether the data folder contains it (plain or gzip-compressed)."""
    root = data_module.resolve_data_dir(data_dir)
    if not root.is_dir():
        return [
            Check(
                "data",
                str(root),
                MISSING,
                f"data folder not found; pass --data-dir or set {data_module.ENV_VAR}",
            )
        ]
    checks = [Check("data", "folder", OK, str(root))]
    for relative in EXPECTED_DATA_FILES:
        try:
            path = data_module.data_file(relative, root)
        except data_module.DataFileNotFoundError:
            checks.append(Check("data", relative, MISSING, "not found"))
            continue
        checks.append(Check("data", relative, OK, f"{path.stat().st_size / 2**20:.1f} MiB"))
    return checks


# ---------------------------------------------------------------------------
# Tracking store and storage
# ---------------------------------------------------------------------------


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
    return urlunparse(parsed._replace(netloc=netloc))


def _sqlite_file(url: str) -> Path | None:
    """Return the database file of a ``sqlite:///`` URL, or None for an in-memory database."""
    location = url.split(":///", 1)[1] if ":///" in url else ""
    if location in ("", ":memory:"):
        return None
    return Path(location)


def check_database(url: str, *, timeout: float) -> tuple[str, str]:
    """Return (status, detail) for an SQLAlchemy database URL, without creating a SQLite file."""
    if url.startswith("sqlite"):
        path = _sqlite_file(url)
        if path is None:
            return INFO, "in-memory SQLite database; nothing persists"
        if path.is_file():
            try:
                connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
                try:
                    (tables,) = connection.execute(
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                    ).fetchone()
                finally:
                    connection.close()
            except sqlite3.Error as error:
                return ERROR, f"cannot read the database file: {error}"
            return OK, f"database file with {tables} tables"
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if os.access(folder, os.W_OK):
            return INFO, "the database file does not exist yet; it is created on first use"
        return ERROR, f"the database file does not exist and {folder} is not writable"

    import sqlalchemy

    connect_args = {}
    if url.startswith(("postgresql", "postgres", "mysql")):
        connect_args["connect_timeout"] = max(1, int(math.ceil(timeout)))
    try:
        engine = sqlalchemy.create_engine(url, connect_args=connect_args)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as error:  # noqa: BLE001 - any driver error means the database is unreachable
        return ERROR, f"connection failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return OK, "connected"


def tracking_check(uri: str, *, timeout: float = 5.0) -> Check:
    """Check that an MLflow tracking store is reachable: an HTTP server's /health, a database, or a folder."""
    scheme = urlparse(uri).scheme
    label = redact(uri)
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                return Check("services", "MLflow tracking", OK, f"{label} answered HTTP {response.status}")
        except (urllib.error.URLError, OSError) as error:
            return Check("services", "MLflow tracking", ERROR, f"{label}: no answer from /health ({error})")
    if scheme.split("+")[0] in SQL_SCHEMES:
        status, detail = check_database(uri, timeout=timeout)
        return Check("services", "MLflow tracking", status, f"{label}: {detail}")
    if scheme in ("", "file"):
        path = Path(urlparse(uri).path if scheme == "file" else uri)
        if path.is_dir():
            return Check("services", "MLflow tracking", OK, f"file store {path}")
        return Check("services", "MLflow tracking", INFO, f"file store {path} does not exist yet")
    return Check("services", "MLflow tracking", INFO, f"{label}: scheme {scheme!r} is not checked")


def storage_check(url: str, *, timeout: float = 5.0) -> Check:
    """Check that an Optuna RDB storage URL (SQLite, PostgreSQL, MySQL) accepts a connection."""
    scheme = urlparse(url).scheme.split("+")[0]
    if scheme not in SQL_SCHEMES:
        return Check("services", "Optuna storage", INFO, f"{redact(url)}: only SQLAlchemy URLs are checked")
    status, detail = check_database(url, timeout=timeout)
    return Check("services", "Optuna storage", status, f"{redact(url)}: {detail}")


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def default_store_urls(workdir: str | Path) -> tuple[str, str]:
    """Return the tracking URI and Optuna storage URL that ``rspo-bench sweep`` uses under ``workdir``."""
    root = Path(workdir).resolve()
    return f"sqlite:///{root / 'mlruns.db'}", f"sqlite:///{root / 'optuna.db'}"


def run_checks(
    *,
    data_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    workdir: str | Path = "runs",
    timeout: float = 5.0,
) -> list[Check]:
    """Run every check; the tracking store and storage default to the sweep defaults under ``workdir``."""
    default_tracking, default_storage = default_store_urls(workdir)
    hf_cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    checks = package_checks()
    checks += device_checks()
    checks += memory_checks({"workdir": Path(workdir).resolve(), "Hugging Face cache": hf_cache})
    checks += extra_checks()
    checks += data_checks(data_dir)
    checks.append(tracking_check(tracking_uri or default_tracking, timeout=timeout))
    checks.append(storage_check(storage or default_storage, timeout=timeout))
    return checks


def render_checks(checks: list[Check], *, title: str = "rspo-bench doctor") -> Table:
    """Return a rich table with one row per check, the status coloured."""
    table = Table(title=title)
    table.add_column("section")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for check in checks:
        style = STATUS_STYLES.get(check.status, "")
        table.add_row(
            escape(check.section),
            escape(check.name),
            f"[{style}]{check.status}[/{style}]",
            escape(check.detail),
        )
    return table


# ---------------------------------------------------------------------------
# Iteration check
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IterationCheckSize:
    """Model and workload sizes of the iteration check."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    vocab_size: int
    num_prompts: int
    num_samples: int
    max_new_tokens: int
    batch_size: int


# About 0.47 B parameters: 24 layers of 16.8 M plus two 32000 × 1024 embedding matrices.
FULL_SIZE = IterationCheckSize(
    1024, 4096, 24, 16, 32000, num_prompts=32, num_samples=5, max_new_tokens=256, batch_size=8
)
TINY_SIZE = IterationCheckSize(
    32, 64, 2, 2, 512, num_prompts=4, num_samples=3, max_new_tokens=8, batch_size=2
)

TOPICS = (
    "the sea",
    "photosynthesis",
    "prime numbers",
    "the French revolution",
    "sourdough bread",
    "black holes",
    "the water cycle",
    "chess openings",
)
TASKS = (
    "Explain {topic} to a child.",
    "Write a short poem about {topic}.",
    "List three facts about {topic}.",
    "Summarise what is known about {topic}.",
)


@dataclass(frozen=True)
class IterationCheckResult:
    """Sizes, timings and throughputs of one iteration check."""

    device: str
    parameters: int
    generation_tokens: int
    generation_seconds: float
    scored_pairs: int
    scoring_seconds: float
    logp_seconds: float
    training_tokens: int
    training_seconds: float
    training_loss: float
    peak_memory_bytes: int | None

    @property
    def generation_tokens_per_second(self) -> float:
        return self.generation_tokens / self.generation_seconds if self.generation_seconds > 0 else math.nan

    @property
    def training_tokens_per_second(self) -> float:
        return self.training_tokens / self.training_seconds if self.training_seconds > 0 else math.nan

    def rows(self) -> list[tuple[str, str]]:
        """Return (quantity, value) rows for a table."""
        rows = [
            ("device", self.device),
            ("policy parameters", f"{self.parameters / 1e6:.1f} M"),
            ("generation", f"{self.generation_tokens} tokens in {self.generation_seconds:.1f} s"),
            ("generation tokens/s", f"{self.generation_tokens_per_second:.0f}"),
            ("PairRM scoring", f"{self.scored_pairs} pairs in {self.scoring_seconds:.1f} s"),
            ("log-probabilities", f"{self.logp_seconds:.1f} s"),
            (
                "training",
                f"{self.training_tokens} tokens in {self.training_seconds:.1f} s, "
                f"loss {self.training_loss:.4g}",
            ),
            ("training tokens/s", f"{self.training_tokens_per_second:.0f}"),
        ]
        if self.peak_memory_bytes is not None:
            rows.append(("peak GPU memory", _gib(self.peak_memory_bytes)))
        return rows


def _check_prompts(count: int) -> list[str]:
    prompts = [task.format(topic=topic) for topic in TOPICS for task in TASKS]
    return [
        prompts[index % len(prompts)] + ("" if index < len(prompts) else f" Version {index}.")
        for index in range(count)
    ]


def _build_check_policy(size: IterationCheckSize, folder: Path, *, seed: int) -> int:
    """Save a random Llama-style policy with the tiny world's chat template in ``folder``; return its size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .worlds import tiny

    texts = _check_prompts(64) + [f"{topic} is a topic with many facts and stories." for topic in TOPICS]
    tokenizer = tiny.train_tokenizer(texts, vocab_size=min(size.vocab_size, 2048))
    config = LlamaConfig(
        vocab_size=max(size.vocab_size, len(tokenizer)),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers,
        num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return parameters


def run_iteration_check(
    *, device: str | None = None, tiny: bool = False, seed: int = 0
) -> IterationCheckResult:
    """Run one self-play iteration of the hf world end to end and time each stage.

    A random Llama-style policy is built from a config, saved and loaded back through
    ``from_pretrained`` (bfloat16 on CUDA, float32 on a CPU). It samples K responses per
    prompt, and a random PairRM scores every ordered pair. The winner and loser of each
    prompt get their log-probabilities. One epoch of the headline RSPO loss
    (0.1 × (IS-forward KL + 5 × reverse KL), RMSprop, lr 5e-7) then trains the policy.
    Training tokens count the prompt and response tokens of the chosen and rejected
    sequences. Nothing is downloaded.
    """
    import numpy as np
    import torch
    from accelerate import Accelerator

    from .config import HFModelConfig, SamplingConfig, TrainingConfig
    from .methods import RegularizerTerm, RSPOLoss, SoftSPPOLoss, build_regularizer
    from .preference.pairrm import PairRMJudge, build_random_pairrm
    from .trainer import PairRecord, train_iteration
    from .worlds import hf

    size = TINY_SIZE if tiny else FULL_SIZE
    target = hf.resolve_device(device)
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    prompts = _check_prompts(size.num_prompts)
    sampling = SamplingConfig(
        num_samples=size.num_samples,
        temperature=0.7,
        top_p=0.9,
        max_new_tokens=size.max_new_tokens,
        batch_size=size.num_prompts,
    )
    training = TrainingConfig(
        optimizer="rmsprop",
        learning_rate=5e-7,
        epochs=1,
        batch_size=size.batch_size,
        max_prompt_tokens=128,
        max_response_tokens=max(size.max_new_tokens, 8),
    )

    with tempfile.TemporaryDirectory(prefix="rspo-iteration-check-") as folder:
        logger.info(
            "iteration check: building the policy (%s size) on %s", "tiny" if tiny else "full", target
        )
        parameters = _build_check_policy(size, Path(folder), seed=seed)
        model_config = HFModelConfig(name_or_path=folder, dtype="bfloat16", gradient_checkpointing=not tiny)

        policy, tokenizer = hf.load_policy(model_config, device=target, local_files_only=True)
        generation_stats: dict[str, float] = {}
        responses = hf.generate(
            policy,
            tokenizer,
            prompts,
            sampling,
            seed=seed,
            max_prompt_tokens=training.max_prompt_tokens,
            stats=generation_stats,
        )

        pairrm_model, pairrm_tokenizer = build_random_pairrm(
            prompts + [text for group in responses for text in group]
        )
        judge = PairRMJudge(pairrm_model.to(target), pairrm_tokenizer, name_or_path="random", batch_size=32)
        start = time.perf_counter()
        matrices = judge.preference_matrices(prompts, responses)
        scoring_seconds = time.perf_counter() - start

        win_probs = [matrix.mean(axis=1) for matrix in matrices]
        chosen = [int(np.argmax(values)) for values in win_probs]
        rejected = [len(values) - 1 - int(np.argmin(values[::-1])) for values in win_probs]
        pair_prompts = prompts + prompts
        chosen_texts = [group[index] for group, index in zip(responses, chosen, strict=True)]
        rejected_texts = [group[index] for group, index in zip(responses, rejected, strict=True)]
        pair_responses = chosen_texts + rejected_texts
        start = time.perf_counter()
        logps = hf.batched_sequence_logps(
            policy,
            tokenizer,
            pair_prompts,
            pair_responses,
            max_prompt_tokens=training.max_prompt_tokens,
            max_response_tokens=training.max_response_tokens,
        ).tolist()
        logp_seconds = time.perf_counter() - start
        del policy

        count = len(prompts)
        records = [
            PairRecord(
                prompt=prompts[row],
                chosen=pair_responses[row],
                rejected=pair_responses[count + row],
                chosen_win_prob=float(win_probs[row][chosen[row]]),
                rejected_win_prob=float(win_probs[row][rejected[row]]),
                # Iteration 1: the previous iterate is the base policy.
                chosen_prev_logp=logps[row],
                rejected_prev_logp=logps[count + row],
                chosen_ref_logp=logps[row],
                rejected_ref_logp=logps[count + row],
            )
            for row in range(count)
        ]
        tokens = hf.tokenize_pairs(
            tokenizer,
            pair_prompts,
            pair_responses,
            max_prompt_tokens=training.max_prompt_tokens,
            max_response_tokens=training.max_response_tokens,
        )
        training_tokens = int(tokens["attention_mask"].sum())

        trainable, tokenizer = hf.load_policy(
            model_config, device=target, training=True, local_files_only=True
        )
        loss = RSPOLoss(
            base=SoftSPPOLoss(beta=0.001),
            terms=[
                RegularizerTerm(build_regularizer("is_forward_kl", {"clip": 10.0}), 1.0),
                RegularizerTerm(build_regularizer("reverse_kl", {}), 5.0),
            ],
            coef=0.1,
        )
        start = time.perf_counter()
        metrics = train_iteration(
            trainable,
            tokenizer,
            records,
            loss,
            training,
            seed=seed,
            iteration=1,
            accelerator=Accelerator(cpu=target.type == "cpu"),
        )
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        training_seconds = time.perf_counter() - start

    return IterationCheckResult(
        device=str(target),
        parameters=parameters,
        generation_tokens=int(generation_stats["new_tokens"]),
        generation_seconds=generation_stats["seconds"],
        scored_pairs=sum(len(group) * (len(group) - 1) for group in responses),
        scoring_seconds=scoring_seconds,
        logp_seconds=logp_seconds,
        training_tokens=training_tokens,
        training_seconds=training_seconds,
        training_loss=float(metrics["loss"]),
        peak_memory_bytes=int(torch.cuda.max_memory_allocated(target)) if target.type == "cuda" else None,
    )


def render_iteration_check(result: IterationCheckResult) -> Table:
    """Return a rich table of an iteration check's timings and throughputs."""
    table = Table(title="self-play iteration check")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name, value in result.rows():
        table.add_row(escape(name), escape(value))
    return table
