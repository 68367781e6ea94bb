#!/usr/bin/env bash
# Does CUDA MPS make a set part's concurrent trainings faster (issue 7, docs/RESULTS.md "The whole set's GPU time")?
# COPIES (default 4) copies of one small model's training step (python bench.py --mode=train CONFIG) run at once
# on this job's GPU, first as plain processes (they take turns in time slices), then under an MPS daemon started
# for this GPU (their kernels may overlap). Each copy reports its median step time; the summary line gives the
# copies' summed tokens/s in each mode (the copies compile alike, so their timed steps mostly overlap; the
# logs show when each started timing). No data needed (bench.py's train mode uses random tokens).
#   CUDA_VISIBLE_DEVICES=1 OUT=out/gpu bash scripts/gpu_mps_ab.sh [CONFIG]     (default config/small/ultramem.py)
# DRY=1 prints the commands. The daemon is stopped at exit; device settings are not touched.
set -uo pipefail
export PYTHONUNBUFFERED=1
CONFIG=${1:-config/small/ultramem.py}; COPIES=${COPIES:-4}; OUT=${OUT:-out/gpu}; LIMIT=${MPS_AB_LIMIT:-150}
name=$(basename "$CONFIG" .py)
mkdir -p "$OUT"
mps=$(mktemp -d)/mps
source scripts/mps.sh
for mode in plain mps; do
  if [ $mode = mps ]; then
    trap 'mps_quit "$mps"' EXIT
    mps_start "$mps" "${CUDA_VISIBLE_DEVICES:-0}" || { echo "gpu_mps_ab.sh: no working MPS daemon" >&2; exit 2; }
  fi
  pids=()
  for i in $(seq "$COPIES"); do
    cmd=(python bench.py --mode=train "$CONFIG" --warmup=15 --iters=40 --out="$OUT/mps_ab_${name}_${mode}_$i.json")
    if [ -n "${DRY:-}" ]; then echo "$mode: ${cmd[*]}"; continue; fi
    if [ $mode = mps ]; then  # MPS clients see the daemon's one GPU as device 0 (scripts/mps.sh)
      CUDA_VISIBLE_DEVICES=0 CUDA_MPS_PIPE_DIRECTORY="$mps/pipe" timeout "$LIMIT" "${cmd[@]}" > "$OUT/mps_ab_${name}_${mode}_$i.log" 2>&1 &
    else
      timeout "$LIMIT" "${cmd[@]}" > "$OUT/mps_ab_${name}_${mode}_$i.log" 2>&1 &
    fi
    pids+=($!)
  done
  [ -n "${DRY:-}" ] || wait "${pids[@]}"
done
[ -n "${DRY:-}" ] || python - "$OUT" "$name" "$COPIES" <<'PY'
import glob, json, sys
out, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for mode in ("plain", "mps"):
    rows = []
    for p in sorted(glob.glob(f"{out}/mps_ab_{name}_{mode}_*.json")):
        rows += [r for r in json.load(open(p))["rows"] if "step_ms" in r]
    if len(rows) < n:
        print(f"{name} {mode}: {len(rows)} of {n} copies finished"); continue
    step = [r["step_ms"] for r in rows]
    tok = sum(r["tokens_per_s"] for r in rows)
    print(f"{name} x{n} {mode}: step ms {', '.join(f'{s:.1f}' for s in step)}; together {tok:,.0f} tokens/s")
PY
