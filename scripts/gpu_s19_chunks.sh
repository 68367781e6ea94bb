#!/usr/bin/env bash
# Session 19, call 5: the sorted backward's pieces placed without a scan (kernels._bwd_work) checked and timed:
# the GPU check with many split tiles and with the defaults, bench.py's kernel timings, the lookup on the 151M's
# recorded (collapsed) selection, and the 151M training step with its profile. OUT collects the logs.
#   OUT=$OUT bash scripts/gpu_s19_chunks.sh
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
quiet() { grep --line-buffered -v "^W[0-9]\|UserWarning\|_warn_once"; }
timeout 150 python scripts/check_lookup_gpu.py --cases=30 --seed=20261204 --lookup_config=bwd_max_slots=32 2>&1 \
  | quiet | tail -4 | tee "$OUT/check_split32.log"
timeout 100 python scripts/check_lookup_gpu.py --cases=12 --seed=20261205 2>&1 | quiet | tail -3 | tee "$OUT/check_default.log"
timeout 240 python bench.py --mode=kernels --tokens=4096,32768 --max_baseline_tokens=0 --sweep=False \
  --out="$OUT/kernels.json" 2>&1 | quiet | grep -v "^\s*sweep\|^topk" | tee "$OUT/kernels.log" | tail -8
timeout 120 python scripts/lookup_balance.py --steps=10 --layers=0 --grid=bwd_max_slots:0 2>&1 | quiet \
  | tee "$OUT/lookup_balance.log" | grep -v "^layer [123]"
timeout 200 python bench.py --mode=train config/ultramem_151m.py --warmup=10 --iters=20 --profile=3 \
  --out="$OUT/train_151m.json" 2>&1 | quiet | tee "$OUT/train_151m.log" | grep -E "step [0-9.]+ ms|lookup|_bwd_|^  [a-z]"
