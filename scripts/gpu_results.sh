#!/usr/bin/env bash
# The paper's Table 1, Table 2 and Figure 6b in miniature (config/small/*): every run the same data
# (medium_mix), 1100 steps x 32,768 tokens (about one pass over the 37.3M training tokens), batch, schedule
# and seed; only the model differs. Expects .device_carry/ as scripts/gpu_memory.sh.
#
#   bash scripts/gpu_results.sh PART [SEED]      # SEED defaults to 1; OUT (default out/gpu) collects the results
#   DRY=1 bash scripts/gpu_results.sh all 1      # print the train.py commands only
#   JOBS=3 bash scripts/gpu_results.sh table1 1  # three runs at a time on the one GPU (default JOBS=1)
#
# Each run: python train.py config/small/X.py --seed=S --progress=False --overwrite=True --out_dir=out/small/X_sS
# (plus --ckpt_interval past the end: one checkpoint at the last step instead of 11, which for the 0.7-1.4B
# parameter models costs 9-17 GB and several seconds each; the checkpoint is deleted after the run unless
# KEEP_CKPT=1). $OUT/small/X_sS.{log,metrics.jsonl,json} are the log, the metrics and metrics_summary.py's
# digest; $OUT/results_PART_sS.md is scripts/results_table.py over everything in $OUT.
#
# GPU time on one H200 with torch.compile (estimates from measured rates: small dense ~1.0M tokens/s, small
# UltraMem ~340k tokens/s, compile 40-60 s per run; MoE ~0.6x dense's rate as measured at 151M; dense_4x
# ~4x dense's FLOPs; PKM between dense and UltraMem), per seed, about 36M tokens per run:
#   dense ~90 s, moe ~130 s, dense_4x ~180 s, pkm ~130 s, ultramem (= sparsity_x12) ~170 s,
#   ladder rows ~130-170 s each, sparsity_x3 / x6 / x24 ~150 / 155 / 180 s;
#   + ~60 s to prepare medium_mix on a fresh machine.
# Parts that fit one 10-minute call:
#   table1a   dense moe dense_4x                                   ~400 s
#   table1b   pkm ultramem                                         ~300 s
#   table2a   ablation rows 00-02                                  ~420 s
#   table2b   ablation rows 03-05                                  ~460 s
#   table2c   ablation rows 06-08                                  ~500 s
#   table2d   ablation rows 09-11                                  ~500 s
#   fig6b     sparsity_x3 sparsity_x6 sparsity_x24                 ~490 s  (x12 is table1b's ultramem: the
#             same model; part fig6b_x12 runs config/small/sparsity_x12.py itself, ~170 s)
# Larger parts (several calls' worth; one seed of everything is ~52 min, more than one session's 30 min):
#   table1 = table1a + table1b (~12 min), table2 = table2a..d (~32 min), all = table1 + table2 + fig6b.
# A config name (dense, ablation/04_split_skip, ...) is also a part: that run alone.
set -euo pipefail
PART=${1:?usage: bash scripts/gpu_results.sh table1|table1a|table1b|table2|table2a..d|fig6b|fig6b_x12|all|CONFIG [SEED]}
SEED=${2:-1}
export PYTHONUNBUFFERED=1 TIKTOKEN_CACHE_DIR=$PWD/.device_carry/tiktoken_cache
OUT=${OUT:-out/gpu}
JOBS=${JOBS:-1}

part() {  # the config names (under config/small/, without .py) of a part
  case $1 in
    table1a) echo dense moe dense_4x ;;
    table1b) echo pkm ultramem ;;
    table1) echo dense_4x ultramem pkm moe dense ;;  # longest first, for JOBS > 1
    table2a) echo ablation/00_pkm ablation/01_rm_softmax ablation/02_half_vdim_proj ;;
    table2b) echo ablation/03_share_query ablation/04_split_skip ablation/05_qk_norm ;;
    table2c) echo ablation/06_ive ablation/07_tdqkr ablation/08_mcs ;;
    table2d) echo ablation/09_improved_init ablation/10_value_lr ablation/11_query_conv ;;
    table2) echo "$(part table2a) $(part table2b) $(part table2c) $(part table2d)" ;;
    fig6b) echo sparsity_x3 sparsity_x6 sparsity_x24 ;;
    fig6b_x12) echo sparsity_x12 ;;
    all) echo "$(part table1) $(part table2) $(part fig6b)" ;;
    *) [ -f "config/small/$1.py" ] || { echo "unknown part or config: $1" >&2; exit 2; }; echo "$1" ;;
  esac
}
NAMES=$(part "$PART")

if [ -n "${DRY:-}" ]; then
  for X in $NAMES; do
    echo python train.py "config/small/$X.py" --seed="$SEED" --progress=False --overwrite=True \
      --out_dir="out/small/${X}_s$SEED" --ckpt_interval=1000000
  done
  exit 0
fi

mkdir -p "$OUT"
[ -f data/medium_mix/train.bin ] || python data/prepare.py --input=.device_carry/medium_mix.jsonl.xz \
    --out_dir=data/medium_mix --val_fraction=0.02 --workers=16 | tail -3

one() {  # train config/small/$1.py with seed $SEED, then digest it
  local X=$1 run="small/${1}_s$SEED" start
  mkdir -p "$(dirname "$OUT/$run")"
  start=$(date +%s)
  python train.py "config/small/$X.py" --seed="$SEED" --progress=False --overwrite=True \
    --out_dir="out/$run" --ckpt_interval=1000000 > "$OUT/$run.log" 2>&1 || { tail -30 "$OUT/$run.log"; return 1; }
  echo "$run: $(( $(date +%s) - start )) s wall (JOBS=$JOBS)"
  python scripts/metrics_summary.py "out/$run" > "$OUT/$run.json" && cat "$OUT/$run.json"
  cp "out/$run/metrics.jsonl" "$OUT/$run.metrics.jsonl"
  [ -n "${KEEP_CKPT:-}" ] || rm -f "out/$run/ckpt.pt"
}

# JOBS runs at a time on the one GPU: a small model leaves the H200 partly idle (short kernels, the
# Python between them, a minute of compilation on the CPU), so runs side by side finish the set sooner;
# each run's wall time then counts the others' load too. A failed run stops the script (set -e).
running=0
for X in $NAMES; do
  one "$X" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
while [ "$running" -gt 0 ]; do wait -n; running=$((running - 1)); done
python scripts/results_table.py "$OUT" | tee "$OUT/results_${PART//\//_}_s$SEED.md"
