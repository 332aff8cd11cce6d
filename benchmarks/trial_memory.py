"""Peak memory of one self-play training iteration: precomputed frozen log-probs vs three models.

    python benchmarks/trial_memory.py [--hidden 512 --layers 8 --pairs 64]

rspo-bench computes the log-probabilities under the previous iterate π_t and the
base policy μ once, before training, so only the trained policy is in memory while
it trains. The official SPPO/RSPO trainers keep π_t and μ loaded next to the policy
and run them on every batch. Each configuration runs in a fresh subprocess and
reports its peak resident set size (``ru_maxrss``), so the numbers include the
Python interpreter and the imported libraries, which are the same in both.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import copy, json, resource, sys, time
import torch
from rspo_bench.config import TinyModelConfig, TrainingConfig
from rspo_bench.methods import RegularizerTerm, RSPOLoss, SoftSPPOLoss, build_regularizer
from rspo_bench.trainer import PairRecord, train_iteration
from rspo_bench.worlds import tiny

mode, hidden, layers, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
texts = [f"Question {i}: explain topic {i % 17} in plain words, with an example." for i in range(pairs)]
tokenizer = tiny.train_tokenizer(texts * 4, vocab_size=1024)
model = tiny.build_tiny_model(
    TinyModelConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=4 * hidden,
                    num_hidden_layers=layers, num_attention_heads=8, max_position_embeddings=512),
    tokenizer, seed=0)
config = TrainingConfig(batch_size=8, max_prompt_tokens=64, max_response_tokens=64, learning_rate=1e-5)
prompts = texts
chosen = [t + " A longer and more helpful answer follows here." * 3 for t in texts]
rejected = [t + " Short." for t in texts]
loss = RSPOLoss(base=SoftSPPOLoss(beta=0.1),
                terms=[RegularizerTerm(build_regularizer("is_forward_kl", {"clip": 10.0}), 1.0),
                       RegularizerTerm(build_regularizer("reverse_kl", {}), 5.0)], coef=0.1)
started = time.perf_counter()
if mode == "precomputed":
    lengths = dict(max_prompt_tokens=64, max_response_tokens=64)
    frozen_chosen = tiny.batched_sequence_logps(model, tokenizer, prompts, chosen, **lengths).tolist()
    frozen_rejected = tiny.batched_sequence_logps(model, tokenizer, prompts, rejected, **lengths).tolist()
    precompute_seconds = time.perf_counter() - started
else:
    # Two frozen copies stay resident beside the policy for the whole training, as in the official
    # trainers. They run once here, not on every batch, because this benchmark measures memory only.
    previous, base = copy.deepcopy(model).eval(), copy.deepcopy(model).eval()
    for frozen in (previous, base):
        frozen.requires_grad_(False)
    tokens_c = tiny.tokenize_pairs(tokenizer, prompts, chosen, max_prompt_tokens=64, max_response_tokens=64)
    tokens_r = tiny.tokenize_pairs(tokenizer, prompts, rejected, max_prompt_tokens=64, max_response_tokens=64)
    with torch.no_grad():
        frozen_chosen = tiny.sequence_logps(previous, **{k: tokens_c[k] for k in ("input_ids", "attention_mask", "response_mask")}).tolist()
        frozen_rejected = tiny.sequence_logps(base, **{k: tokens_r[k] for k in ("input_ids", "attention_mask", "response_mask")}).tolist()
    precompute_seconds = 0.0
records = [PairRecord(p, c, r, 0.7, 0.3, fc, fr, fc, fr) for p, c, r, fc, fr in
           zip(prompts, chosen, rejected, frozen_chosen, frozen_rejected)]
train_iteration(model, tokenizer, records, loss, config, seed=0, iteration=1)
parameters = sum(p.numel() for p in model.parameters())
print(json.dumps({"mode": mode, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "parameters": parameters, "precompute_seconds": precompute_seconds,
                  "seconds": time.perf_counter() - started}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=64)
    args = parser.parse_args()
    results = {}
    for mode in ("precomputed", "three_models"):
        output = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(args.hidden), str(args.layers), str(args.pairs)],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        results[mode] = json.loads(output)
    params = results["precomputed"]["parameters"]
    print(f"model: {params / 1e6:.1f} M parameters (float32), {args.pairs} pairs, batch 8; "
          f"{platform.machine()}, Python {platform.python_version()}")
    print("| configuration | peak RSS (MiB) |")
    print("| --- | ---: |")
    for mode, row in results.items():
        print(f"| {mode} | {row['peak_rss_mib']:.0f} |")
    ratio = results["precomputed"]["peak_rss_mib"] / results["three_models"]["peak_rss_mib"]
    print(f"\nprecomputed / three models = {ratio:.2f} (peak RSS)")


if __name__ == "__main__":
    main()
