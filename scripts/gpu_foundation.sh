#!/usr/bin/env bash
# The foundation issue's GPU measurements (docs/BENCHMARKS.md), in one device call:
#   prepare medium_mix, GPT-2 small throughput (the nanoGPT yardstick), dense_151m for a few hundred steps,
#   and, on a 2-GPU machine, torchrun vs one GPU at equal global batch.
# Expects .device_carry/medium_mix.jsonl.xz and .device_carry/tiktoken_cache (copies of ../shared).
set -euo pipefail
export PYTHONUNBUFFERED=1 TIKTOKEN_CACHE_DIR=$PWD/.device_carry/tiktoken_cache
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'gpus', torch.cuda.device_count())"
bash scripts/gpu_data.sh
common="--progress=False --log_interval=10"
python train.py config/gpt2_small.py $common --max_iters=150 --eval_interval=1000 --overwrite=True > "$OUT/gpt2_small.log" 2>&1
python scripts/metrics_summary.py out/gpt2_small | tee "$OUT/gpt2_small.json"
python train.py config/dense_151m.py $common --max_iters=300 --eval_interval=100 --overwrite=True > "$OUT/dense_151m.log" 2>&1
python scripts/metrics_summary.py out/dense_151m | tee "$OUT/dense_151m.json"
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  # dropout off: with dropout the ranks draw other masks than the single process, and the runs drift apart
  ddp="$common --max_iters=60 --eval_interval=30 --overwrite=True --log_interval=5 --dropout=0.0"
  python train.py config/dense_151m.py $ddp --grad_accum=2 --out_dir=out/single > "$OUT/single.log" 2>&1
  torchrun --standalone --nproc_per_node=2 train.py config/dense_151m.py $ddp --grad_accum=1 --out_dir=out/ddp > "$OUT/ddp.log" 2>&1
  grep "^rank" "$OUT/ddp.log"
  python scripts/metrics_summary.py out/single --skip=1 | tee "$OUT/single.json"
  python scripts/metrics_summary.py out/ddp --skip=1 | tee "$OUT/ddp.json"
  python - <<'PY'
import json
load = lambda d: [(r["step"], r["loss"]) for r in map(json.loads, open(f"out/{d}/metrics.jsonl")) if "loss" in r]
for (s, a), (_, b) in zip(load("single"), load("ddp")):
    print(f"step {s:3d}  1 GPU x grad_accum 2: {a:.4f}   2 GPUs DDP: {b:.4f}   diff {b - a:+.4f}")
PY
fi
for d in out/*/; do n=$(basename "$d"); [ -f "$d/metrics.jsonl" ] && cp "$d/metrics.jsonl" "$OUT/$n.metrics.jsonl"; done; true
