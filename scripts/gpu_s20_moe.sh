#!/usr/bin/env bash
# Session 20 (issue 5): the MoE decode layer with its launches chained by PDL at few tokens. On the GPU machine,
# from the repo root: OUT=<dir> bash scripts/gpu_s20_moe.sh
#   1. whether kernels.moe_decode compiles (fullgraph) with and without the PDL path;
#   2. bench_moe.py's decode table, with the PDL gate swept at 1, 2 and 4 tokens (pdl_max_tokens 0, 1, 2, 4: the
#      sweep adopts the best by the sum of x floor), the launches added one by one, and the GPU check;
#   3. below. PARTS=3 runs only part 3 (default: all).
#   4. (PARTS=4) bench_moe.py's decode table for the fused layer alone, at the committed defaults.
set -u
export PYTHONPATH=.
OUT=${OUT:-.}
PARTS=${PARTS:-123}
[[ $PARTS == *1* ]] && python scripts/check_moe_pdl_compile.py 2>&1 | tee "$OUT/check_moe_pdl_compile.log"
[[ $PARTS == *2* ]] && python scripts/bench_moe.py --compile --impls=fused,triton --decode_only --tune=fused --fused_tune_tokens=1,2,4 \
    "--fused_grid=pdl_max_tokens:0,1,2,4" 2>&1 | grep -v "^W1201\|UserWarning\|warn_once" | tee "$OUT/bench_moe.log"
# 3. the whole MoE-1.6B-2in34 decode step (30 blocks, 2 KV heads, bench.py's default per-block compile and one CUDA
#    graph, the Triton decode attention as in the trio runs) at batch 1, 2, 4, with the PDL path up to 2 tokens and
#    without it (pdl_max_tokens 2 and 0, or PDL_VALUES; session 20's call 10 ran 2 and 0, with 2 the default then,
#    since set to 1 from these runs; call 12 ran PDL_VALUES="1 0" with the residual add in the last launch)
if [[ $PARTS == *3* ]]; then
  for pdl in ${PDL_VALUES:-2 0}; do
    python -c "import sys, runpy, kernels; kernels.MOE_DECODE_CONFIG['pdl_max_tokens'] = $pdl; \
sys.argv = ['bench.py', 'config/moe_1p6b_2in34.py', '--n_kv_head=2', '--batches=1,2,4', '--attn_decode=triton', '--out=$OUT/decode_moe_pdl$pdl.json']; \
runpy.run_path('bench.py', run_name='__main__')" 2>&1 | grep -v "^W1201" | tee "$OUT/decode_moe_pdl$pdl.log"
  done
fi
[[ $PARTS == *4* ]] && python scripts/bench_moe.py --compile --impls=fused --decode_only 2>&1 \
    | grep -v "^W1201\|UserWarning\|warn_once" | tee "$OUT/bench_moe_fused.log"
