#!/usr/bin/env bash
# Where a training step's time goes (issues 2 and 4): bench.py's train mode (random tokens, compiled, bf16
# autocast, fused AdamW, clip, as train.py) times each config, then profiles a few more steps with
# torch.profiler and prints the device time per kernel category and the top kernels. No data needed.
#   bash scripts/gpu_profile.sh [CONFIG ...]     # default: gpt2_small ultramem_151m; OUT (default out/gpu)
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
CONFIGS=${*:-config/gpt2_small.py config/ultramem_151m.py}
for c in $CONFIGS; do
  n=$(basename "$c" .py)
  python bench.py --mode=train "$c" --warmup=10 --iters=20 --profile=3 --out="$OUT/train_$n.json" 2>&1 \
    | grep --line-buffered -v "^W[0-9]" | tee "$OUT/train_$n.log"
done
