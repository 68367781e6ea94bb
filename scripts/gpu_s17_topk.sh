#!/usr/bin/env bash
# Session 17 (docs/BENCHMARKS.md): the top-k filter kernel swept against torch.topk and the register kernel,
# then the UltraMem-151M training step profiled with mem_topk=triton (every selection on the kernel) and with the
# default "auto". OUT collects the logs.   OUT=$OUT bash scripts/gpu_s17_topk.sh [sweep] [profile]
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
quiet() { grep --line-buffered -v "^W[0-9]"; }
for part in ${*:-sweep profile}; do
  case $part in
    sweep) timeout "${SWEEP_LIMIT:-240}" python scripts/sweep_topk.py ${GRID:+"--grid=$GRID"} --shapes=${SHAPES:-all} 2>&1 \
             | quiet | tee "$OUT/topk_sweep.log" ;;
    profile) for topk in ${TOPKS:-triton auto}; do
        timeout "${PROFILE_LIMIT:-170}" python bench.py --mode=train config/ultramem_151m.py --mem_topk=$topk \
          ${LOOKUP:+--lookup_config=$LOOKUP} --warmup=10 --iters=20 --profile=3 --out="$OUT/train_151m_topk_$topk.json" 2>&1 \
          | quiet | tee "$OUT/train_151m_topk_$topk.log"
      done ;;
  esac
done
