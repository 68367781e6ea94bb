#!/usr/bin/env bash
# Session 13: the MoE decode layer's one-launch MLP (kernels.MOE_DECODE_CONFIG["mlp"]) swept at 1, 2, 4 tokens, the
# best adopted for the 1-16 token table, both modes' launches timed one by one and checked against the reference.
# About 5 minutes on an H200.
set -euo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
PYTHONPATH=. python scripts/bench_moe.py --compile --impls=fused --decode_only --tune=fused \
  --fused_grid=${GRID:-mlp:1/mlp_block_f:16,32,64/mlp_block_n:64,128/mlp_block_k:64,128/mlp_stages:2,4} 2>&1 \
  | grep --line-buffered -v "^W[0-9]" | tee "$OUT/moe_mlp.log" | grep --line-buffered -v "^  fused"
