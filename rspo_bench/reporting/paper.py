"""AlpacaEval 2 numbers of the RSPO paper, set beside a sweep that reproduces its Mistral-7B setting.

Source of every number here: the figures of the RSPO paper, "Regularized
Self-Play Alignment of Large Language Models", arXiv 2503.00030 v2, for
Mistral-7B-Instruct-v0.2 after self-play iteration 3, judged by GPT-4 Turbo
(AlpacaEval 2 LC win rate and raw win rate in %, mean length in characters).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from rspo_bench.reporting.collect import SweepData, TrialData

PAPER_SOURCE = "RSPO paper (arXiv 2503.00030 v2), figures"
PAPER_MODEL = "Mistral-7B-Instruct-v0.2"
PAPER_ITERATION = 3
EVAL_ITER_PREFIX = "eval_iter/alpaca_eval2/"
# Matches sweep or experiment names of the paper-reproduction configs, e.g. mistral7b-rspo-grid.
_PAPER_NAME = re.compile(r"mistral[-_]?7b", re.IGNORECASE)
_VARIANT_PARAM = re.compile(r"^sweep\.variants\.(\d+)\.(.+)$")
_REGULARIZER_PARAM = re.compile(r"^regularizers\.(\d+)\.(name|weight)$")

# (regularizer name, weight inside the combination), sorted by name.
Regularizers = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class PaperResult:
    """One setting of the RSPO paper and its AlpacaEval 2 numbers at iteration 3 (None: not reported)."""

    setting: str
    regularizers: Regularizers
    # None for unregularized SPPO, where λ does not apply.
    coef: float | None
    # Variant names of the repository's experiment files, used when the sweep did not log its variants.
    variant_names: tuple[str, ...]
    lc_win_rate: float | None
    win_rate: float | None
    avg_length: float | None


PAPER_RESULTS = (
    PaperResult("SPPO, official checkpoint", (), None, ("sppo",), 28.53, 31.02, None),
    PaperResult("SPPO, re-run in the RSPO paper", (), None, ("sppo",), 29.16, None, None),
    PaperResult(
        "0.1 \u00d7 (IS-forward KL + 5 \u00d7 reverse KL), the paper's headline",
        (("is_forward_kl", 1.0), ("reverse_kl", 5.0)),
        0.1,
        ("is_forward_reverse",),
        35.44,
        38.30,
        2286.0,
    ),
    PaperResult(
        "reverse KL, \u03bb = 0.5", (("reverse_kl", 1.0),), 0.5, ("reverse_kl",), None, 36.82, 2290.0
    ),
    PaperResult(
        "IS-forward KL, \u03bb = 0.1", (("is_forward_kl", 1.0),), 0.1, ("is_forward_kl",), None, 30.77, 2067.0
    ),
)


@dataclass(frozen=True)
class PaperMatch:
    """A paper setting and the sweep trial run in the same setting (None when the sweep has none)."""

    paper: PaperResult
    trial: TrialData | None
    # Source of this sweep's numbers: "iteration 3" or "final (after N iterations)".
    source: str

    def ours(self, name: str) -> float | None:
        """Return this sweep's AlpacaEval 2 metric ``name`` at iteration 3, else its final value."""
        if self.trial is None:
            return None
        at_iteration = self.trial.value_at(EVAL_ITER_PREFIX + name, PAPER_ITERATION)
        return at_iteration if at_iteration is not None else self.trial.final(name)


def is_paper_config(sweep: SweepData) -> bool:
    """Check whether the sweep reproduces the RSPO paper's setting: world.kind hf on Mistral-7B-Instruct-v0.2.

    The config params of the parent run decide, else those of a trial. A sweep
    that logged no ``world.kind`` param counts when its sweep or experiment name
    names Mistral-7B (``mistral7b``, ``mistral-7b``).
    """
    params = _config_params(sweep)
    kind = params.get("world.kind")
    if kind is not None:
        model = params.get("world.hf.name_or_path", "")
        return kind == "hf" and PAPER_MODEL.lower() in model.lower()
    return any(_PAPER_NAME.search(name) for name in (sweep.name, sweep.experiment_name) if name)


def match_paper_results(sweep: SweepData) -> list[PaperMatch]:
    """Pair every paper setting with the sweep trial that ran it, preferring trials with final metrics."""
    compositions = variant_regularizers(sweep.parent_params)
    iterations = _config_params(sweep).get("selfplay.iterations", "")
    matches: list[PaperMatch] = []
    for paper in PAPER_RESULTS:
        candidates = [trial for trial in sweep.trials if _same_setting(trial, paper, compositions)]
        candidates.sort(key=lambda trial: trial.final("lc_win_rate") is None)
        trial = candidates[0] if candidates else None
        matches.append(PaperMatch(paper, trial, _source(trial, iterations)))
    return matches


def variant_regularizers(parent_params: dict[str, str]) -> dict[str, Regularizers] | None:
    """Read each variant's regularizer combination from the flattened ``sweep.variants.*`` params.

    Returns None when the params list no variants, for example for a sweep
    logged by a tool other than the sweep runner.
    """
    variants: dict[int, dict[str, str]] = {}
    for key, value in parent_params.items():
        match = _VARIANT_PARAM.match(key)
        if match:
            variants.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if not variants:
        return None

    compositions: dict[str, Regularizers] = {}
    for fields in variants.values():
        if fields.get("loss", "sppo") != "sppo":
            continue
        terms: dict[int, dict[str, str]] = {}
        for key, value in fields.items():
            match = _REGULARIZER_PARAM.match(key)
            if match:
                terms.setdefault(int(match.group(1)), {})[match.group(2)] = value
        compositions[fields.get("name", "")] = tuple(
            sorted((term.get("name", ""), _to_float(term.get("weight"), 1.0)) for term in terms.values())
        )
    return compositions


def _same_setting(trial: TrialData, paper: PaperResult, compositions: dict[str, Regularizers] | None) -> bool:
    if trial.is_base:
        return False
    if compositions is None:
        same_variant = trial.variant in paper.variant_names
    else:
        regularizers = compositions.get(trial.variant)
        same_variant = regularizers is not None and _same_regularizers(regularizers, paper.regularizers)
    if not same_variant:
        return False
    if paper.coef is None:
        return True
    return trial.coef is not None and math.isclose(trial.coef, paper.coef, rel_tol=1e-9)


def _same_regularizers(first: Regularizers, second: Regularizers) -> bool:
    return len(first) == len(second) and all(
        name_a == name_b and math.isclose(weight_a, weight_b, rel_tol=1e-9)
        for (name_a, weight_a), (name_b, weight_b) in zip(first, second, strict=True)
    )


def _source(trial: TrialData | None, iterations: str) -> str:
    if trial is None:
        return ""
    names = ("lc_win_rate", "win_rate", "avg_length")
    if any(trial.value_at(EVAL_ITER_PREFIX + name, PAPER_ITERATION) is not None for name in names):
        return f"iteration {PAPER_ITERATION}"
    if not iterations:
        return "final"
    return f"final (after {iterations} iteration{'' if iterations == '1' else 's'})"


def _config_params(sweep: SweepData) -> dict[str, str]:
    if "world.kind" in sweep.parent_params:
        return sweep.parent_params
    for trial in sweep.trials:
        if "world.kind" in trial.params:
            return trial.params
    return sweep.parent_params


def _to_float(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:
        return default


def difference(ours: float | None, paper: float | None) -> float | None:
    """Return ``ours - paper``, or None when either is missing."""
    if ours is None or paper is None or not (math.isfinite(ours) and math.isfinite(paper)):
        return None
    return ours - paper


def paper_iterations_note(matches: Sequence[PaperMatch]) -> str:
    """Return a note when some numbers of this sweep are not from iteration 3, else ''."""
    off = sorted(
        {
            match.source
            for match in matches
            if match.trial is not None and not match.source.startswith("iteration")
        }
    )
    if not off:
        return ""
    return (
        f"The paper's numbers are at iteration {PAPER_ITERATION}; this sweep logged no per-iteration "
        f"evaluation there, so its column shows {', '.join(off)} values."
    )
