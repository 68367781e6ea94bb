#!/usr/bin/env bash
# Session 13, call 3 (docs/BENCHMARKS.md): the lookup backward with the scores in the one-hot operand (bwd_sdot, then
# off by default) with 32 rows per program and the column tiles side by side, the best of that session's first sweep
# on shape (a) (4.53 against 5.21 ms), against the then defaults (bwd_sdot=0), alternated twice at 32,768 tokens.
# bwd_sdot is on by default since (with the side-by-side tiles; the rows per program left to the default rule).
# About 3 minutes on an H200.
set -euo pipefail
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
for i in 1 2; do
  for v in def sdot; do
    cfg=bwd_sdot=0; [ "$v" = sdot ] && cfg=bwd_sdot=1,bwd_rows=32,bwd_cols_inner=1
    python bench.py --mode=kernels --tokens=32768 --max_baseline_tokens=0 --sweep=False --check_compile=False \
      --lookup_config="$cfg" --out="$OUT/lookup_${v}_$i.json" 2>&1 | grep --line-buffered -v "^W[0-9]" \
      | tee "$OUT/lookup_${v}_$i.log" | grep -A3 "^shape\|^correctness"
  done
done
