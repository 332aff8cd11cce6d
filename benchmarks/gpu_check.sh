#!/usr/bin/env bash
# One offline self-play iteration of the hf world on one CUDA GPU, with tokens/s.
#
#   bash benchmarks/gpu_check.sh                    # ~0.47B Llama-style model on cuda
#   bash benchmarks/gpu_check.sh --device cpu --tiny  # the same pipeline, tiny model, CPU
#
# It builds a random Llama-style policy from a config (24 layers, hidden size 1024,
# about 0.47 B parameters), saves it and loads it back through from_pretrained in
# bfloat16. The policy samples 5 responses for each of 32 prompts (up to 256 new
# tokens), a random PairRM scores every ordered pair, and one epoch of the headline
# RSPO loss trains the policy on the winners and losers. The script prints the
# environment report and a table with generation and training tokens/s. Nothing is downloaded (HF_HUB_OFFLINE=1).
# The whole check stops after 8 minutes (GPU_CHECK_TIMEOUT seconds).
# Extra arguments go to `rspo-bench doctor`, e.g. --device cuda:1 or --data-dir DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
export RSPO_BENCH_PROGRESS="${RSPO_BENCH_PROGRESS:-0}"
PYTHON="${PYTHON:-python3}"
TIMEOUT="${GPU_CHECK_TIMEOUT:-480}"

wants_cpu=false
previous=""
for argument in "$@"; do
  if [[ "$previous" == "--device" && "$argument" == cpu* ]] || [[ "$argument" == --device=cpu* ]]; then
    wants_cpu=true
  fi
  previous="$argument"
done

if [[ "$wants_cpu" == false ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device. Run on a machine with an NVIDIA GPU, or pass --device cpu --tiny" \
       "for the CPU version of the same pipeline." >&2
  exit 2
fi

# --device cuda comes first, so a --device argument given to this script overrides it.
exec timeout "$TIMEOUT" "$PYTHON" -m rspo_bench.cli doctor --iteration-check --device cuda "$@"
