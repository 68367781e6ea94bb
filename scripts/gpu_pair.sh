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
#
# While the jobs run, nvidia-smi logs each GPU's utilisation every 2 s to $R/smi.csv (packed with the rest);
# at the end a line per GPU gives its mean and the share of samples at 0%: how much of a part the GPU idled.
# MPS=1 runs the jobs under the CUDA Multi-Process Service (a control daemon per GPU, its pipes and logs in
# $R/mpsG): the processes of a part then share the GPU's SMs at once instead of taking turns in time
# slices. A probe checks that a CUDA context opens under it and that the daemon then runs a server; if not,
# the script stops with an error (CUDA itself would run without MPS, silently). The daemons are stopped at
# exit; device settings (compute mode) are not touched.
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
if [ "${MPS:-0}" = 1 ]; then  # a daemon per GPU (scripts/mps.sh), checked to serve
  source scripts/mps.sh
  trap 'for g in 0 1; do mps_quit "$R/mps$g"; done' EXIT
  for g in 0 1; do
    mps_start "$R/mps$g" $g || { echo "gpu_pair.sh: MPS=1 but GPU $g has no working MPS daemon" >&2; exit 2; }
  done
fi
smi=
if [ -z "${DRY:-}" ]; then
  nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader,nounits -l 2 > "$R/smi.csv" &
  smi=$!
fi
pids=()
for g in 0 1; do
  cmd=${*:g+2:1}
  [ -n "$cmd" ] || continue
  mkdir -p "$R/g$g"  # the job's OUT exists before it starts (a job may write there without creating it)
  ( start=$(date +%s)
    echo "GPU $g: $cmd"
    if [ "${MPS:-0}" = 1 ]; then
      CUDA_VISIBLE_DEVICES=0 CUDA_MPS_PIPE_DIRECTORY="$R/mps$g/pipe" OUT="$R/g$g" timeout "$TIME_LIMIT" bash -c "$cmd"
    else
      CUDA_VISIBLE_DEVICES=$g OUT=$R/g$g timeout "$TIME_LIMIT" bash -c "$cmd"
    fi
    echo "GPU $g: rc=$? after $(( $(date +%s) - start )) s" ) > "$R/g$g.txt" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
[ -z "$smi" ] || kill "$smi" 2>/dev/null
cat "$R"/g*.txt
[ -z "$smi" ] || python scripts/smi_summary.py "$R/smi.csv"
tar czf "$OUT/$NAME.tgz" -C "$R" --exclude="./mps?/pipe" .  # not the MPS daemons' sockets
