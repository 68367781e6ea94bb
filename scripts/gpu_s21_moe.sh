#!/usr/bin/env bash
# Session 21 (issue 5): the MoE decode layer with the logits launch letting fc launch only after its wait (and its
# router row prefetched into L2). On the GPU machine, from the repo root:
#   OUT=<dir> PARTS=<digits> bash scripts/gpu_s21_moe.sh
#   1. scripts/exp_moe_streamk.py at 1, 2 and 4 tokens (stream-K variants of fc and proj against the committed layer);
#   2. whether kernels.moe_decode compiles (fullgraph, default and reduce-overhead) with the PDL path;
#   3. bench_moe.py's decode table (compiled MoE module, 1-512 tokens), with the GPU check;
#   4. the whole MoE-1.6B-2in34 decode step (bench.py, 30 blocks, 2 KV heads, the Triton decode attention) at batch
#      1, 2 and 4, as session 20's part 3.
set -u
export PYTHONPATH=.
OUT=${OUT:-.}
PARTS=${PARTS:-1234}
filter() { grep -v "^W1201\|UserWarning\|warn_once"; }
[[ $PARTS == *1* ]] && python scripts/exp_moe_streamk.py --tokens=1,2,4 2>&1 | filter | tee "$OUT/exp_moe_streamk.log"
[[ $PARTS == *2* ]] && python scripts/check_moe_pdl_compile.py 2>&1 | filter | tee "$OUT/check_moe_pdl_compile.log"
[[ $PARTS == *3* ]] && python scripts/bench_moe.py --compile --impls=fused,triton --decode_only 2>&1 | filter \
    | tee "$OUT/bench_moe.log"
[[ $PARTS == *4* ]] && python bench.py config/moe_1p6b_2in34.py --n_kv_head=2 --batches=1,2,4 --attn_decode=triton \
    --out="$OUT/decode_moe.json" 2>&1 | filter | tee "$OUT/decode_moe.log"
exit 0
