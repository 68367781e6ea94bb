#!/usr/bin/env bash
# Issues 4 and 5's kernel timings (docs/BENCHMARKS.md, docs/KERNELS.md), no data needed; each part has its own
# time limit so that one slow part leaves the others' results:
#   kernels  the lookup kernels with their launch sweep and the compile check, then the retrieval's top-k
#            kernel against torch.topk with its sweep (python bench.py --mode=kernels, decode and training sizes)
#   topk     the top-k timing alone (--shapes=, no lookup)
#   profile  the UltraMem-151M training step profiled with each top-k (mem_topk=torch, then triton; TOPKS picks)
#            and lookup backward (VTILES="0 1": gathered value rows, then the value tile; default: the config's). Each run takes
#            up to PROFILE_LIMIT (240 s): with VTILES="0 1" pick one top-k (TOPKS=auto) to stay within a 10-minute call
#   vtile    the small PKM and UltraMem training steps with each lookup backward (bwd_value_tile 0, 1)
#   regional the same two steps compiled whole and by blocks (train.py's compile_blocks): compile and step time
#   moe      the MoE layer at 1-512 tokens on moe_impl=gather and triton, with the gather kernel's sweep
#   bash scripts/gpu_kernels.sh [all|kernels|topk|profile|moe ...]   # OUT (default out/gpu) collects the logs
# Measured 2026-11-29 (docs/BENCHMARKS.md): kernels needs more than 210 s (the sweep alone takes about 200),
# one profile about 100 s with torch's top-k, and the triton top-k's did not finish in 120 s; moe more than
# 110 s; topk 27 s without its sweep, and its sweep (now without the configurations of fewer than BLOCK_L / 1024
# warps) did not finish one shape in 110 s. The default limits add up to about 15 minutes for "all": give a 10-minute call two parts at most.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
PARTS=${*:-all}
[ "$PARTS" = all ] && PARTS="kernels profile moe"
quiet() { grep --line-buffered -v "^W[0-9]"; }  # Inductor's autotuning warnings
for part in $PARTS; do
  case $part in
    kernels) timeout "${KERNELS_LIMIT:-330}" python bench.py --mode=kernels --tokens=1,64,512,4096,32768 \
               --max_baseline_tokens=0 --out="$OUT/kernels.json" 2>&1 | quiet | tee "$OUT/kernels.log" ;;
    topk) timeout "${TOPK_LIMIT:-240}" python bench.py --mode=kernels --shapes= --out="$OUT/topk.json" 2>&1 \
            | quiet | tee "$OUT/topk.log" ;;
    profile)
      for topk in ${TOPKS:-torch triton}; do  # TOPKS=torch: the default top-k's profile alone
        for vt in ${VTILES:-config}; do  # VTILES="0 1": each lookup backward (kernels.CONFIG); default: the
          # config file's own (config/ultramem_151m.py: the value tile, since session 8)
          lc=(); [ "$vt" = config ] || lc=(--lookup_config=bwd_value_tile=$vt)
          timeout "${PROFILE_LIMIT:-240}" python bench.py --mode=train config/ultramem_151m.py --mem_topk=$topk \
            "${lc[@]}" --warmup=10 --iters=20 --profile=3 \
            --out="$OUT/train_ultramem_151m_topk_${topk}_vtile$vt.json" 2>&1 | quiet \
            | tee "$OUT/train_ultramem_151m_topk_${topk}_vtile$vt.log"
        done
      done ;;
    regional)  # the small UltraMem and PKM training steps compiled whole (compile_blocks=False) and by blocks
      # (True): the first step's time (the compile, with Inductor's and Triton's caches cold) and the step time
      for cb in False True; do
        TORCHINDUCTOR_FORCE_DISABLE_CACHES=1 TRITON_CACHE_DIR=$(mktemp -d) timeout "${REGIONAL_LIMIT:-240}" \
          python bench.py --mode=train config/small/ultramem.py config/small/pkm.py --compile_blocks=$cb \
          --warmup=10 --iters=20 --out="$OUT/train_small_blocks_$cb.json" 2>&1 | quiet | tee "$OUT/train_small_blocks_$cb.log"
      done ;;
    vtile)  # the small PKM and UltraMem training steps with each lookup backward (gathered value rows, value tile)
      for vt in 0 1; do
        timeout "${VTILE_LIMIT:-200}" python bench.py --mode=train config/small/pkm.py config/small/ultramem.py \
          --lookup_config=bwd_value_tile=$vt --warmup=10 --iters=20 --out="$OUT/train_small_vtile$vt.json" 2>&1 \
          | quiet | tee "$OUT/train_small_vtile$vt.log"
      done ;;
    moe) PYTHONPATH=. timeout "${MOE_LIMIT:-240}" python scripts/bench_moe.py --compile --impls=gather,triton --tune \
           2>&1 | quiet | tee "$OUT/bench_moe_gather.log" ;;
    *) echo "unknown part: $part (kernels, topk, profile, vtile, regional, moe or all)" >&2; exit 2 ;;
  esac
done
exit 0
