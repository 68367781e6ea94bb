#!/usr/bin/env bash
# Session 19's GPU calls (docs/BENCHMARKS.md, session 19). Expects .device_carry/ as scripts/gpu_text_step.sh.
#   OUT=$OUT bash scripts/gpu_s19.sh ops      the lookup through its ops: eager backward profiled at 4,096 tokens
#                                             (shape (b)), then bench.py's kernel timings
#   OUT=$OUT bash scripts/gpu_s19.sh select   the selection over 200 steps of train.py's schedule on text, and over
#                                             50 of bench.py's warm-up on text
#   OUT=$OUT bash scripts/gpu_s19.sh long     the selection over 1,000 steps of train.py's schedule on text
# Since these runs, lookup_balance.py's steps take the config's betas and clipping (bench.py's), and the 151M config
# reads bf16 values in its lookup (mem_lookup_dtype="autocast"): the "select" part's bench-schedule run and the fp32
# timings would differ on a rerun (docs/BENCHMARKS.md, session 19).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. TIKTOKEN_CACHE_DIR=$PWD/.device_carry/tiktoken_cache
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
quiet() { grep --line-buffered -v "^W[0-9]"; }
for part in "$@"; do
  case $part in
    ops)
      timeout 120 python scripts/profile_lookup_bwd.py --tokens=4096 --shapes=b \
        --configs="bwd_max_slots=2048;bwd_max_slots=0" 2>&1 | quiet | tee "$OUT/profile_bwd_4096.log"
      timeout 240 python bench.py --mode=kernels --tokens=4096,32768 --max_baseline_tokens=0 --sweep=False \
        --out="$OUT/kernels.json" 2>&1 | quiet | tee "$OUT/kernels.log" ;;
    select)
      bash scripts/gpu_data.sh || exit 1
      timeout 200 python scripts/lookup_balance.py --data=dataset --schedule=train --steps=200 \
        --report=0,2,5,10,20,50,100,150,199 --layers=0 2>&1 | quiet | tee "$OUT/select_train_schedule.log"
      timeout 120 python scripts/lookup_balance.py --data=dataset --schedule=bench --steps=50 \
        --report=0,2,5,10,20,30,49 --layers=0 2>&1 | quiet | tee "$OUT/select_bench_schedule.log" ;;
    long)
      bash scripts/gpu_data.sh || exit 1
      timeout 420 python scripts/lookup_balance.py --data=dataset --schedule=train --steps=1000 --max_iters=1000 \
        --report=0,100,200,300,400,500,600,700,800,900,999 --layers=0 2>&1 | quiet | tee "$OUT/select_long.log" ;;
  esac
done
