#!/usr/bin/env bash
# The MoE issue's GPU measurements (docs/BENCHMARKS.md): one MoE-1.6B-2in34 layer decoding 1..512 tokens
# against its bandwidth floor, empty-group reads of torch._grouped_mm, a sync-free training step, and the
# training throughput of config/moe_151m_2in32.py on medium_mix (run after scripts/gpu_foundation.sh).
set -euo pipefail
export PYTHONUNBUFFERED=1 TIKTOKEN_CACHE_DIR=$PWD/.device_carry/tiktoken_cache PYTHONPATH=$PWD
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
python scripts/bench_moe.py --compile 2>&1 | tee "$OUT/bench_moe.log"
python train.py config/moe_151m_2in32.py --progress=False --log_interval=10 --max_iters=100 --eval_interval=1000 \
    --overwrite=True > "$OUT/moe_151m.log" 2>&1 || { tail -30 "$OUT/moe_151m.log"; exit 1; }
python scripts/metrics_summary.py out/moe_151m_2in32 | tee "$OUT/moe_151m.json"
