#!/usr/bin/env bash
# The paper's Table 1, Table 2 and Figure 6b in miniature (config/small/*): every run the same data
# (medium_mix), batch, schedule and seed; only the model differs. Table 1's runs take 1100 steps x 32,768
# tokens (36.0M, about one pass over the 37.3M training tokens), two seeds; the ladder (Table 2) and the
# sparsity sweep (Figure 6b) take 550 steps (half a pass), one seed. Expects .device_carry/ as scripts/gpu_memory.sh.
#
#   JOBS=3 bash scripts/gpu_results.sh PART [SEED]  # SEED defaults to 1; OUT (default out/gpu) collects the results
#   DRY=1 bash scripts/gpu_results.sh all 1         # print the train.py commands only
#
# JOBS=N runs N trainings at a time on the one GPU (default 1; table1 at JOBS=5 ran out of the H200's memory,
# 2026-11-29: its five runs peak at 17-29 GB each, plus the evaluation's logits). Each run: python train.py config/small/X.py
# --seed=S --progress=False --overwrite=True --out_dir=out/small/X_sS --ckpt_interval=1000000 (one checkpoint
# at the last step instead of 11, which for the 0.7-1.4B parameter models costs 9-17 GB and seconds each;
# deleted after the run unless KEEP_CKPT=1). $OUT/small/X_sS.{log,metrics.jsonl,json} are the log, the
# metrics and metrics_summary.py's digest; $OUT/results_PART_sS.md is scripts/results_table.py over $OUT.
# Before its checkpoint goes, each run is also scored on English text outside medium_mix, EVAL_TEXT (default
# .device_carry/tinyshakespeare.txt, a copy of ../shared/data/tinyshakespeare.txt; skipped with a note when
# the file is missing) by scripts/eval_text.py: $OUT/small/X_sS.text.json, the table's "text loss" column.
#
# The whole set on one GPU (issue 7: Table 1 with two seeds, the ladder, Figure 6b, knowledge capacity) is
# the four parts set1-set4, each under the device tool's 10 minutes per call, four trainings at a time, the
# longest first (a run may name its seed, CONFIG@SEED, so one part mixes seeds):
#   set1  Table 1 seed 1 + sparsity_x3 (Figure 6b seed 1)      set2  Table 1 seed 2 + sparsity_x12
#   set3  ladder rows 06-11, with knowledge capacity (gpu_capacity.sh, five at a time) beside them
#   set4  sparsity_x24 + ladder rows 00-05 + sparsity_x6
#   (session 7 ran x3 in set1 and x6 in set2, which then took 575 s, cut at the limit, and 563 s, against set4's
#   366 s: x3 and x6 moved to set4. Session 8 then had x24 in set1, cut at the limit again while scoring it, with
#   set4 at 469 s: x24, the heaviest of the sweep, and x3 swapped)
#   JOBS=4 bash scripts/gpu_results.sh set1     (the seed argument is ignored by the set parts)
#   bash scripts/gpu_results.sh set             # everything in one queue (one start, one tail), where no
#                                               # 10-minute limit applies
#   bash scripts/gpu_results.sh pair_sets       # set1 | set3 on a two-GPU machine; then pair_sets2: set2 | set4,
#                                               # each part's four processes under CUDA MPS (MPS=0: without),
#                                               # so that Table 1's seed 2 finds seed 1's compiled graphs in
#                                               # Inductor's cache if the machine is the same (until session 8
#                                               # pair_sets was set1 | set2 and pair_sets2 set3 | set4)
#   bash scripts/gpu_results.sh smoke           # first, after a change: Table 1's models for 20 steps each
#   bash scripts/gpu_results.sh diag            # after a change to the retrieval: compiled against eager for every
#                                               # TDQKR table size of the set (diag_paper: the paper's sizes); exits 1 if wrong
#                                               # (both no-gradient paths, mem_decode fused and plain; DIAG_ARGS=--key=value: settings)
# Measured 2026-11-29 (session 7, one part per GPU of nvidia-h200-x2 machines): set1 575 s (cut at its limit during
# the last scoring), set2 563 s, set3 500 s, set4 366 s: 33.4 minutes, before the staggered starts below; session
# 8 (staggered starts, compiled evaluation, x24 in set1): 575 s (cut), 504, 463, 469 s: 33.5 minutes; session 9
# (eager evaluation, compile_blocks, the pairing below): set1 480 s, set2 490, set4 375; set3 cut at its limit (it
# started after a 149 s diagnosis in the same call; its last runs ended about 455 s after it started, an estimate
# from its files): about 1,800 s = 30 minutes; session 10 (as session 9, each part's processes under CUDA MPS, the
# pairs' default now): set1 423 s, set2 442, set3 411, set4 396: 1,672 s = 27.9 minutes; docs/RESULTS.md, "The
# whole set's GPU time".
#
# Earlier parts, measured 2026-11-29 on H200s (torch 2.11), one call of at most 10 minutes per part:
#   table1    dense_4x ultramem pkm moe dense      JOBS=3: 462 s (seed 1, with preparing medium_mix) and 435 s
#                                                  (seed 2): run it for seeds 1 and 2
#   table2a   ablation rows 00-05                  JOBS=3: 362 s
#   table2b   ablation rows 06-11                  JOBS=3: 366 s
#   fig6b     sparsity_x24 x12 x6 x3               JOBS=4: about 285 s (seed 1); fig6b_hi (x24 x12) and
#                                                  fig6b_lo (x6 x3) are its halves (seed 2: 174 s / 121 s, JOBS=2)
#   checks    ultramem_vlr4 (value lr x4, the authors' code, against table1's x10; 1100 steps): 136 s alone
#   capacity  scripts/gpu_capacity.sh (knowledge capacity, its own settings: SIZES, MODELS, LIMIT): 393 s
# Those parts one after the other took about 38 minutes of commands on one GPU. On a two-GPU machine
# (device kind nvidia-h200-x2) the parts pairN run two parts at once, one per GPU (scripts/gpu_pair.sh;
# $OUT/pairN.tgz holds everything):
#   pair1  table1 1 | table1 2      pair2  table2a | table2b      pair3  fig6b 1 + checks | capacity
#   pair4  fig6b_hi 2 | fig6b_lo 2 (Figure 6b's second seed)
#   pair5  table2a 2 | table2b 2 (the ladder's second seed)   pair6  table2_init 1 | table2_init 2
#   pair7  knowledge capacity at equal passes (gpu_capacity.sh PASSES=1): 250, 500, 1,000 | 2,000 people
#   table2_init: ladder rows 05-08 with the improved init brought forward (config/small/ablation_init/,
#   docs/RESULTS.md); measured about 230 s per seed at JOBS=4. pair7's 2,000 people took 215 s, 250 + 500
#   about 190 s (its 1,000 people, the same runs as capacity's, was not repeated)
# all = table1 + table2a + table2b + fig6b + checks + table2_init (more than one call's 10 minutes: use the parts).
# A config name (dense, ablation/04_split_skip, ...) is also a part: that run alone.
set -euo pipefail
PART=${1:?usage: bash scripts/gpu_results.sh set1|set2|set3|set4|set|smoke|diag|diag_paper|table1|table2a|table2b|table2|table2_init|fig6b|checks|all|capacity|pair1-7|pair_sets|pair_sets2|CONFIG [SEED]}
SEED=${2:-1}
export PYTHONUNBUFFERED=1 TIKTOKEN_CACHE_DIR=$PWD/.device_carry/tiktoken_cache
OUT=${OUT:-out/gpu}
case $PART in set*)  # the set parts: four at a time, each block compiled on its own (train.py's compile_blocks:
  # the first compile about half as long, the step as fast; session 9 measured set1, set2 and set4 at 480, 490 and 375 s
  # against session 8's 575 (cut), 504 and 469 s), unless told (TRAIN_ARGS= compiles whole models)
  JOBS=${JOBS:-4}; TRAIN_ARGS=${TRAIN_ARGS---compile_blocks=True} ;;
esac
JOBS=${JOBS:-1}

part() {  # the runs of a part: config names under config/small/ (without .py), each CONFIG or CONFIG@SEED
  case $1 in
    set1) echo dense_4x@1 ultramem@1 pkm@1 moe@1 sparsity_x3@1 dense@1 ;;  # longest first
    set2) echo dense_4x@2 ultramem@2 pkm@2 moe@2 sparsity_x12@1 dense@2 ;;
    set3) echo ablation/07_tdqkr@1 ablation/08_mcs@1 ablation/11_query_conv@1 ablation/10_value_lr@1 \
               ablation/09_improved_init@1 ablation/06_ive@1 ;;
    set4) echo sparsity_x24@1 ablation/04_split_skip@1 ablation/05_qk_norm@1 ablation/00_pkm@1 \
               ablation/01_rm_softmax@1 sparsity_x6@1 ablation/02_half_vdim_proj@1 ablation/03_share_query@1 ;;
    set) echo dense_4x@1 dense_4x@2 ultramem@1 ultramem@2 pkm@1 pkm@2 moe@1 moe@2 sparsity_x24@1 sparsity_x12@1 \
              ablation/07_tdqkr@1 ablation/08_mcs@1 ablation/11_query_conv@1 ablation/10_value_lr@1 \
              ablation/09_improved_init@1 ablation/06_ive@1 ablation/04_split_skip@1 ablation/05_qk_norm@1 \
              ablation/00_pkm@1 ablation/01_rm_softmax@1 ablation/02_half_vdim_proj@1 ablation/03_share_query@1 \
              sparsity_x6@1 sparsity_x3@1 dense@1 dense@2 ;;
    table1) echo dense_4x ultramem pkm moe dense ;;  # longest first, for JOBS > 1
    table2a) echo ablation/00_pkm ablation/01_rm_softmax ablation/02_half_vdim_proj ablation/03_share_query \
                  ablation/04_split_skip ablation/05_qk_norm ;;
    table2b) echo ablation/06_ive ablation/07_tdqkr ablation/08_mcs ablation/09_improved_init ablation/10_value_lr \
                  ablation/11_query_conv ;;
    table2) echo "$(part table2a) $(part table2b)" ;;
    table2_init) echo ablation_init/05_qk_norm ablation_init/06_ive ablation_init/07_tdqkr ablation_init/08_mcs ;;
    fig6b) echo sparsity_x24 sparsity_x12 sparsity_x6 sparsity_x3 ;;
    fig6b_hi) echo sparsity_x24 sparsity_x12 ;;
    fig6b_lo) echo sparsity_x6 sparsity_x3 ;;
    checks) echo ultramem_vlr4 ;;  # a one-run check against table1's ultramem (docs/RESULTS.md)
    all) echo "$(part table1) $(part table2) $(part fig6b) $(part checks) $(part table2_init)" ;;
    *) [ -f "config/small/${1%@*}.py" ] || { echo "unknown part or config: $1" >&2; exit 2; }; echo "$1" ;;
  esac
}
me="bash scripts/gpu_results.sh"
case $PART in
  capacity) exec bash scripts/gpu_capacity.sh ;;
  diag|diag_paper)  # the compiled memory layer against eager (scripts/diag_compiled_eval.py; exits 1 if a graph picks
    # other rows): every TDQKR table size of the set (diag, about 4 minutes) or of the paper's sizes (diag_paper)
    if [ "$PART" = diag ]; then
      cfgs="sparsity_x3 sparsity_x6 ablation/07_tdqkr ablation/08_mcs ultramem sparsity_x24"; dir=config/small
    else cfgs="ultramem_151m ultramem_680m ultramem_1p6b"; dir=config; fi
    cmd=(python scripts/diag_compiled_eval.py 8192); for c in $cfgs; do cmd+=("$dir/$c.py"); done
    cmd+=(${DIAG_ARGS:-})  # e.g. DIAG_ARGS=--mem_topm=16
    if [ -n "${DRY:-}" ]; then echo "${cmd[*]}"; exit 0; fi
    mkdir -p "$OUT"  # pipefail and set -e: a failed check ends the script with the diag's status
    PYTHONPATH=. "${cmd[@]}" 2>&1 | { grep --line-buffered -v "^W[0-9]" || true; } | tee "$OUT/$PART.txt"; exit 0 ;;
  pair1) exec bash scripts/gpu_pair.sh pair1 "JOBS=3 $me table1 1" "JOBS=3 $me table1 2" ;;
  pair2) exec bash scripts/gpu_pair.sh pair2 "JOBS=3 $me table2a 1" "JOBS=3 $me table2b 1" ;;
  pair3) exec bash scripts/gpu_pair.sh pair3 "JOBS=4 $me fig6b 1 && JOBS=1 $me checks 1" "JOBS=3 $me capacity" ;;
  pair4) exec bash scripts/gpu_pair.sh pair4 "JOBS=2 $me fig6b_hi 2" "JOBS=2 $me fig6b_lo 2" ;;
  pair5) exec bash scripts/gpu_pair.sh pair5 "JOBS=3 $me table2a 2" "JOBS=3 $me table2b 2" ;;
  pair6) exec bash scripts/gpu_pair.sh pair6 "JOBS=4 $me table2_init 1" "JOBS=4 $me table2_init 2" ;;
  pair7) exec bash scripts/gpu_pair.sh pair7 "SIZES='250 500 1000' PASSES=1 $me capacity" "SIZES=2000 PASSES=1 $me capacity" ;;
  pair_sets) MPS=${MPS:-1} exec bash scripts/gpu_pair.sh pair_sets "JOBS=4 $me set1" "JOBS=4 $me set3" ;;
  pair_sets2) MPS=${MPS:-1} exec bash scripts/gpu_pair.sh pair_sets2 "JOBS=4 $me set2" "JOBS=4 $me set4" ;;
  smoke)  # 20 steps of Table 1's memory and MoE models and Dense, side by side, with two evaluations each
    # (TRAIN_ARGS as for the runs, e.g. --eval_compile=True): a failure shows in a minute or two, before a set
    # part's ten (out/smoke/X, $OUT/smoke_X.log; the checkpoints, 0.6-8.6 GB each, are deleted)
    models=(ultramem moe pkm dense); bad=0; pids=()
    smoke_cmd() { echo python train.py "config/small/$1.py" --max_iters=20 --eval_interval=10 --eval_iters=2 \
      --log_interval=10 --progress=False --overwrite=True --out_dir="out/smoke/$1" --ckpt_interval=1000000 ${TRAIN_ARGS:-}; }
    if [ -n "${DRY:-}" ]; then for X in "${models[@]}"; do smoke_cmd "$X"; done; exit 0; fi
    mkdir -p "$OUT"; bash scripts/gpu_data.sh
    for X in "${models[@]}"; do $(smoke_cmd "$X") > "$OUT/smoke_$X.log" 2>&1 & pids+=($!); done
    for i in "${!models[@]}"; do
      X=${models[$i]}
      if wait "${pids[$i]}" && [ "$(grep -c val_loss "out/smoke/$X/metrics.jsonl")" = 2 ]; then
        echo "smoke $X: ok, 2 evaluations"
      else bad=1; echo "smoke $X: FAILED"; tail -20 "$OUT/smoke_$X.log"; fi
      rm -f "out/smoke/$X/ckpt.pt"
    done
    exit $bad ;;
esac
NAMES=$(part "$PART")

seed_of() { [[ $1 == *@* ]] && echo "${1##*@}" || echo "$SEED"; }  # X or X@S -> S (default $SEED)
run_of() { echo "small/${1%@*}_s$(seed_of "$1")"; }  # X or X@S -> small/X_sS, the run's folder under out/ and $OUT
train_cmd() {  # X or X@S -> the run's train.py command (its words have no spaces), with TRAIN_ARGS appended
  # (the set parts' default: --compile_blocks=True, above)
  echo python train.py "config/small/${1%@*}.py" --seed="$(seed_of "$1")" --progress=False --overwrite=True \
    --out_dir="out/$(run_of "$1")" --ckpt_interval=1000000 ${TRAIN_ARGS:-}
}

if [ -n "${DRY:-}" ]; then
  for X in $NAMES; do train_cmd "$X"; done
  if [ "$PART" = set3 ] || [ "$PART" = set ]; then DRY=1 ARGS="${ARGS:-} ${TRAIN_ARGS:-}" bash scripts/gpu_capacity.sh; fi
  exit 0
fi

mkdir -p "$OUT"
bash scripts/gpu_data.sh
EVAL_TEXT=${EVAL_TEXT:-.device_carry/tinyshakespeare.txt}
[ -f "$EVAL_TEXT" ] || echo "note: $EVAL_TEXT not found: the runs are not scored on other text"

MARKS=$(mktemp -d)  # RUN.trained: that run's training has ended (it is being digested and scored)
trap 'rm -rf "$MARKS"' EXIT

one() {  # train config/small/X.py (the argument: X or X@S) with seed S (default $SEED), then digest it
  local run start
  run=$(run_of "$1")
  mkdir -p "$(dirname "$OUT/$run")"
  start=$(date +%s)
  $(train_cmd "$1") > "$OUT/$run.log" 2>&1 || { tail -30 "$OUT/$run.log"; return 1; }
  touch "$MARKS/${run//\//_}.trained"
  echo "$run: $(( $(date +%s) - start )) s wall (JOBS=$JOBS)"
  python scripts/metrics_summary.py "out/$run" > "$OUT/$run.json" && cat "$OUT/$run.json"
  cp "out/$run/metrics.jsonl" "$OUT/$run.metrics.jsonl"
  if [ -f "$EVAL_TEXT" ]; then  # the loss on text outside medium_mix (seconds)
    python scripts/eval_text.py --out_dir="out/$run" --text="$EVAL_TEXT" --progress=False \
      --out="$OUT/$run.text.json" > "$OUT/$run.text.log" 2>&1 || { cat "$OUT/$run.text.log"; return 1; }
    cat "$OUT/$run.text.log"
  fi
  [ -n "${KEEP_CKPT:-}" ] || rm -f "out/$run/ckpt.pt"
}

# JOBS runs at a time on the one GPU: a small model leaves the H200 partly idle (short kernels, the
# Python between them, a minute of compilation on the CPU), so runs side by side finish the set sooner;
# each run's wall time then counts the others' load too. A run holds one of the JOBS places while it trains;
# its scoring afterwards (the checkpoint, the tinyshakespeare loss: CPU, disk, little GPU) overlaps the next run.
# Runs start one at a time: the next one is launched only once the last one has logged its first steps (its
# metrics.jsonl), it has ended, or STAGGER_MAX seconds (default 180; 0: no wait) have passed, so that compilations
# do not pile up at a part's start while the GPU waits (session 7: four at once, about a minute of idle GPU).
# The capacity job beside the runs (set3, set) does not count towards JOBS, and the runs are waited for by PID (a
# plain `wait -n` would also return for it, and did: in session 7 the part then ended while a run was still being
# scored). A failed run prints its log's tail, the others go on, and the part exits non-zero at the end.
part_start=$(date +%s)
cap=""
if [ "$PART" = set3 ] || [ "$PART" = set ]; then  # knowledge capacity beside the ladder: its tiny models leave the GPU mostly idle
  # (with the runs' TRAIN_ARGS: in a set part, compiled by blocks too; untimed for these models)
  JOBS=5 OUT=$OUT ARGS="${ARGS:-} ${TRAIN_ARGS:-}" bash scripts/gpu_capacity.sh > "$OUT/capacity.txt" 2>&1 & cap=$!
fi
pids=(); runs=()
n_training() {  # launched runs still training
  local n=0 i
  for i in "${!pids[@]}"; do
    kill -0 "${pids[$i]}" 2>/dev/null && [ ! -e "$MARKS/${runs[$i]//\//_}.trained" ] && n=$((n + 1))
  done
  echo "$n"
}
for X in $NAMES; do
  while [ "$(n_training)" -ge "$JOBS" ]; do sleep 1; done
  run=$(run_of "$X")
  rm -f "out/$run/metrics.jsonl"  # a scratch run (--overwrite=True): its first record is the start signal
  one "$X" & pids+=($!); runs+=("$run")
  for ((w = 0; w < ${STAGGER_MAX:-180}; w++)); do
    { [ -s "out/$run/metrics.jsonl" ] || ! kill -0 "${pids[-1]}" 2>/dev/null; } && break
    sleep 1
  done
done
failed=0
for p in "${pids[@]}"; do wait "$p" || failed=1; done
if [ -n "$cap" ]; then
  wait "$cap" || failed=1
  cat "$OUT/capacity.txt"
fi
python scripts/results_table.py "$OUT" | tee "$OUT/results_${PART//\//_}_s$SEED.md"
echo "part $PART: $(( $(date +%s) - part_start )) s after preparing the data (JOBS=$JOBS)"
[ "$failed" = 0 ] || { echo "part $PART: a run failed (its log's tail is above)" >&2; exit 1; }
