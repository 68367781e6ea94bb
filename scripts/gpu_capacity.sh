#!/usr/bin/env bash
# Knowledge capacity (issue 7, item 5; docs/RESULTS.md): Dense, MoE and UltraMem of equal activated compute
# (config/capacity/*.py, within 2% in FLOPs per token) each trained for the same 24.6M characters on the
# synthetic facts of N people (6 facts each), then scored by exact greedy recall of LIMIT facts
# (data/facts/recall.py; the first LIMIT lines of facts.jsonl, i.e. the first LIMIT/6 people, a random
# sample since people are generated at random). Needs no data from outside the repo.
#
#   bash scripts/gpu_capacity.sh                       # SIZES="1000 4000 16000" JOBS=3 LIMIT=6000 OUT=out/gpu
#   DRY=1 bash scripts/gpu_capacity.sh                 # print the commands only
#   SIZES="250 500 1000 2000" PASSES=1 bash scripts/gpu_capacity.sh   # equal passes instead of equal characters
# The default gives every size the same 24.6M characters, so a larger set is also seen fewer times (23, 5.8 and
# 1.5 passes at 1,000 / 4,000 / 16,000 people); measured 2026-11-29, no model got past chance at 4,000 and
# 16,000 (docs/RESULTS.md). PASSES=1 scales each run's steps with the people instead (config's max_iters x
# N / 1000: the 23 passes of the 1,000-people run for every size), which separates capacity from exposure.
# LIMIT facts are scored, at most 6 x N.
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}
SIZES=${SIZES:-1000 4000 16000}
MODELS=${MODELS:-dense moe ultramem}
JOBS=${JOBS:-3}
LIMIT=${LIMIT:-6000}
ARGS=${ARGS:-}  # more train.py arguments for every run (e.g. a CPU smoke test: --device=cpu --max_iters=20)
PASSES=${PASSES:-}

one() {  # model, people: train, then score recall
  local M=$1 N=$2 run="capacity_${1}_$2" start iters=()
  if [ -n "$PASSES" ]; then  # the config's steps (24.6M characters: 23 passes over 1,000 people) scaled to N people
    local base; base=$(python -c "from configurator import read_config_file as r; print(r('config/capacity/$M.py')['max_iters'])")
    iters=(--max_iters=$(( base * N / 1000 )))
  fi
  local limit=$(( LIMIT < 6 * N ? LIMIT : 6 * N ))
  local train=(python train.py "config/capacity/$M.py" --data_dir="data/facts_$N" --out_dir="out/capacity/${M}_$N"
               --progress=False --overwrite=True "${iters[@]}" $ARGS)
  local score=(python data/facts/recall.py --out_dir="out/capacity/${M}_$N" --limit="$limit")
  if [ -n "${DRY:-}" ]; then echo "${train[*]}"; echo "${score[*]}"; return; fi
  start=$(date +%s)
  "${train[@]}" > "$OUT/$run.log" 2>&1 || { tail -30 "$OUT/$run.log"; return 1; }
  "${score[@]}" > "$OUT/$run.recall" 2>&1 || { cat "$OUT/$run.recall"; return 1; }
  echo "$run: $(( $(date +%s) - start )) s wall (JOBS=$JOBS): $(head -1 "$OUT/$run.recall")"
}

mkdir -p "$OUT"
for N in $SIZES; do
  [ -f "data/facts_$N/train.bin" ] || ${DRY:+echo} python data/facts/prepare.py --n_people="$N" --out_dir="data/facts_$N"
done
launch_order() {  # the models, the slowest first (UltraMem's runs took 280-364 s beside ladder rows, MoE's 123-154 s,
  # Dense's 91-109 s: docs/RESULTS.md), so that the last runs of a part are short ones; others after them, as given
  local K M
  for K in ultramem moe dense; do
    for M in $MODELS; do [ "$M" = "$K" ] && echo "$M"; done
  done
  for M in $MODELS; do
    case $M in ultramem|moe|dense) ;; *) echo "$M" ;; esac
  done
}
running=0
for M in $(launch_order); do
  for N in $SIZES; do
    if [ -n "${DRY:-}" ]; then one "$M" "$N"; continue; fi  # in launch order
    one "$M" "$N" &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
  done
done
while [ "$running" -gt 0 ]; do wait -n; running=$((running - 1)); done
[ -n "${DRY:-}" ] && exit 0
{
  echo "| people (facts) | $(echo $MODELS | sed 's/ / | /g') |"
  echo "|---$(for _ in $MODELS; do printf '|---'; done)|"
  for N in $SIZES; do
    row="| $N ($((6 * N)))"
    for M in $MODELS; do
      row="$row | $(head -1 "$OUT/capacity_${M}_$N.recall" | sed -E 's/.*\(([0-9.]+%)\).*/\1/')"
    done
    echo "$row |"
  done
} | tee "$OUT/capacity.md"
