#!/usr/bin/env bash
# The UltraMem-151M training step and its memory layers' selection on medium_mix text against bench.py's one batch of
# random tokens (session 18 found that after 10 steps on that batch every token selects the same value rows:
# docs/BENCHMARKS.md, "UltraMem-151M-x12 training step", session 18). Expects .device_carry/ as scripts/gpu_memory.sh
# (medium_mix.jsonl.xz and tiktoken_cache, copies of ../shared). OUT collects the logs.
#   OUT=$OUT bash scripts/gpu_text_step.sh [balance] [step] [cast]
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. TIKTOKEN_CACHE_DIR=$PWD/.device_carry/tiktoken_cache
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
quiet() { grep --line-buffered -v "^W[0-9]"; }
bash scripts/gpu_data.sh || exit 1
for part in ${*:-balance step}; do
  case $part in
    balance) for data in dataset random; do  # the selection after 10 eager steps, and the lookup timed on it
        timeout "${BALANCE_LIMIT:-150}" python scripts/lookup_balance.py --steps=10 --layers=0,3 --data=$data \
          --grid=bwd_max_slots:0 2>&1 | quiet | tee "$OUT/lookup_balance_$data.log"
      done ;;
    step) for data in dataset random; do
        timeout "${PROFILE_LIMIT:-200}" python bench.py --mode=train config/ultramem_151m.py --train_data=$data \
          --mem_lookup_dtype=param --warmup=10 --iters=20 --profile=3 --out="$OUT/train_151m_$data.json" 2>&1 \
          | quiet | tee "$OUT/train_151m_$data.log"
      done ;;
    cast) # mem_lookup_dtype=autocast (the config's since session 19; "step" runs "param", the default before): the
      # lookup on the table cast to bf16 (memory.py), on text
      timeout "${PROFILE_LIMIT:-200}" python bench.py --mode=train config/ultramem_151m.py --train_data=dataset \
        --mem_lookup_dtype=autocast --warmup=10 --iters=20 --profile=3 --out="$OUT/train_151m_dataset_cast.json" 2>&1 \
        | quiet | tee "$OUT/train_151m_dataset_cast.log" ;;
  esac
done
