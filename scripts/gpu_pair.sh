#!/usr/bin/env bash
# Two independent GPU jobs side by side on a two-GPU machine (device kind nvidia-h200-x2), one per GPU, in one
# call; the whole set of issue 7 then takes about half the held time. Each job sees one GPU
# (CUDA_VISIBLE_DEVICES), gets its own OUT ($R/g0, $R/g1) and log ($R/g0.txt, $R/g1.txt); at the end the
# logs are printed and everything is packed into $OUT/NAME.tgz (the device tool returns at most 8 files).
#
#   bash scripts/gpu_pair.sh NAME "JOBS=3 bash scripts/gpu_results.sh table2a 1" "JOBS=3 bash scripts/gpu_results.sh table2b 1"
#
# DRY=1 passes on to the jobs (gpu_results.sh then prints its commands). TIME_LIMIT (default 540 s) bounds each
# job (not LIMIT: the jobs inherit the environment, and gpu_capacity.sh's LIMIT is the number of facts scored).
# medium_mix is prepared once before both start (two jobs preparing it at once would race; DATA=0 skips it, for
# jobs that need none: benchmarks, knowledge capacity). Timings taken this
# way share the host's CPUs with the other job: say so where reported.
set -uo pipefail
NAME=${1:?usage: bash scripts/gpu_pair.sh NAME CMD0 CMD1}
[[ $NAME =~ ^[A-Za-z0-9._-]+$ ]] || { echo "gpu_pair.sh: NAME must be letters, digits, '.', '_' or '-', got '$NAME'" >&2; exit 2; }
export PYTHONUNBUFFERED=1 TIKTOKEN_CACHE_DIR=$PWD/.device_carry/tiktoken_cache
OUT=${OUT:-out/gpu}; TIME_LIMIT=${TIME_LIMIT:-540}
if [ -z "${R:-}" ]; then  # the default work folder starts empty: a host can be lent again with /tmp kept, and
  R=/tmp/pair_$NAME; rm -rf "$R"  # an earlier call of the same NAME left its files there (a given R is kept)
fi
mkdir -p "$OUT" "$R"
[ -n "${DRY:-}" ] || nvidia-smi -L
[ -n "${DRY:-}" ] || [ "${DATA:-1}" = 0 ] || bash scripts/gpu_data.sh
for g in 0 1; do
  cmd=${*:g+2:1}
  [ -n "$cmd" ] || continue
  mkdir -p "$R/g$g"  # the job's OUT exists before it starts (a job may write there without creating it)
  ( start=$(date +%s)
    echo "GPU $g: $cmd"
    CUDA_VISIBLE_DEVICES=$g OUT=$R/g$g timeout "$TIME_LIMIT" bash -c "$cmd"
    echo "GPU $g: rc=$? after $(( $(date +%s) - start )) s" ) > "$R/g$g.txt" 2>&1 &
done
wait
cat "$R"/g*.txt
tar czf "$OUT/$NAME.tgz" -C "$R" .
