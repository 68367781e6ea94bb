#!/usr/bin/env bash
# The memory-layer issue's GPU checks (docs/BENCHMARKS.md, docs/RESULTS.md): a small UltraMem and the dense
# model of the same activated compute (+12%) trained on medium_mix for the same tokens, then a few steps of
# config/ultramem_151m.py for peak memory and step time. Expects .device_carry/ as gpu_foundation.sh.
set -euo pipefail
export PYTHONUNBUFFERED=1 TIKTOKEN_CACHE_DIR=$PWD/.device_carry/tiktoken_cache
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
bash scripts/gpu_data.sh
run() {  # name, then train.py arguments
  local name=$1; shift
  python train.py "$@" --progress=False --overwrite=True > "$OUT/$name.log" 2>&1 || { tail -30 "$OUT/$name.log"; exit 1; }
  python scripts/metrics_summary.py "out/$name" | tee "$OUT/$name.json"
  cp "out/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl"
}
run ultramem_151m config/ultramem_151m.py --max_iters=20 --log_interval=5 --eval_interval=1000 --eval_iters=2
run small_dense config/small/dense.py --max_iters=200 --eval_interval=50
run small_ultramem config/small/ultramem.py --max_iters=200 --eval_interval=50
