#!/usr/bin/env bash
# Branch exp/lookup-core-tile (session 12, not yet run on a GPU), two experiments against the defaults:
# - the lookup forward with one program per MCS core (CONFIG["fwd_core_tile"]; shape (b)'s cores of 192 columns
#   padded to 256): in the kernels mode's GPU check (fwd_core_tile) and sweep (16/32/64 slots per step, both grid
#   orders, 4/8 warps);
# - the sorted backward with the scores in the one-hot operand (CONFIG["bwd_sdot"]; 128-column tiles on (a), 64 on
#   (b)): in the GPU check (gv_bwd_sdot, gs_bwd_sdot) and sweep (R 16/32 x 16/32 slots x both grid orders).
# About 5 minutes on an H200 (session 12's sweep call took 282 s).
set -euo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
python bench.py --mode=kernels --tokens=32768 --max_baseline_tokens=0 --check_compile=False \
  --out="$OUT/kernels_core_tile.json" 2>&1 | grep --line-buffered -v "^W[0-9]" | tee "$OUT/kernels_core_tile.log" \
  | grep -v "^time\|^topk\|^check"
