#!/usr/bin/env bash
# The paper's inference comparison (issue 6, docs/BENCHMARKS.md): Dense-1.6B, MoE-1.6B-2in34 and
# UltraMem-1.6B-x12 decoding one token with a 2048-token KV cache, random bf16 weights, each block compiled
# once per batch size and the whole step replayed as one CUDA graph (bench.py's compile_scope="blocks", the
# default: `gqa` over batch 1-1024, an 8-block diag and `fig6c` took 300 s together on the H200; --compile_scope=model
# compiles the whole step instead, 55-92 s per batch size for a 30-block model). compile_dynamic=True compiles
# twice per model but was measured 5x slower at batch 64 (MHA, 2026-11-29; that run also paid for a KV-cache
# copy since fixed, so the factor is not the dynamic compile's alone): not used for the numbers.
#   bash scripts/gpu_bench_decode.sh mha     # multi-head attention (16 KV heads), batch 1-128 (256 does not fit)
#   bash scripts/gpu_bench_decode.sh gqa     # grouped-query attention with 2 KV heads, batch 1-1024
#   bash scripts/gpu_bench_decode.sh fig6c   # Figure 6c: batch 512, 2 KV heads, sparse parameters x0.25-x2
#   bash scripts/gpu_bench_decode.sh du      # Dense and UltraMem alone (the 1.3x target up to batch 256): 2 KV heads
#                                            # at batch 1-256, then MHA at 1-128 (DU_LIMIT s each, default 250;
#                                            # GQA_BATCHES, MHA_BATCHES: other batch lists)
#   bash scripts/gpu_bench_decode.sh diag    # profiles of an 8-block Dense-1.6B decode step (ATTNS="sdpa triton" to pick;
#                                            # e.g. --max_autotune=True after the part for autotuned GEMMs)
#   DIAG_CONFIG=config/ultramem_1p6b.py ATTNS=triton KVS=2 bash scripts/gpu_bench_decode.sh diag --mem_layers=0:4/5:7
#                                            # the same for 8 blocks of UltraMem-1.6B (2 memory layers)
# Arguments after the part go to bench.py (e.g. --attn_decode=matmul).
set -euo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
TRIO="config/dense_1p6b.py config/moe_1p6b_2in34.py config/ultramem_1p6b.py"
case ${1:?usage: bash scripts/gpu_bench_decode.sh mha|gqa|fig6c|du|diag [bench.py args]} in
  mha) args="$TRIO --batches=1,2,4,8,16,32,64,128" ;;
  gqa) args="$TRIO --n_kv_head=2" ;;
  fig6c) args="config/dense_1p6b.py config/fig6c/moe_2in10.py config/fig6c/moe_2in18.py config/moe_1p6b_2in34.py
        config/fig6c/moe_2in68.py config/fig6c/ultramem_6b.py config/fig6c/ultramem_12b.py config/ultramem_1p6b.py
        config/fig6c/ultramem_41b.py --n_kv_head=2 --batches=512" ;;
  du)
    for kv in 2 16; do
      [ $kv = 2 ] && batches=${GQA_BATCHES:-1,2,4,8,16,32,64,128,256} || batches=${MHA_BATCHES:-1,2,4,8,16,32,64,128}
      timeout "${DU_LIMIT:-250}" python bench.py config/dense_1p6b.py config/ultramem_1p6b.py --n_kv_head=$kv \
        --batches=$batches --out="$OUT/decode_du_kv$kv.json" "${@:2}" 2>&1 | grep --line-buffered -v "^W[0-9]" | tee "$OUT/decode_du_kv$kv.log" \
        || echo "du kv$kv: rc=$? (a timeout is 124); going on"  # one half cut short must not skip the other
    done
    exit 0 ;;
  diag)  # where a step's time goes: Dense-1.6B cut to 8 blocks, decode attentions (ATTNS), MHA and 2 KV heads
    # DIAG_CONFIG picks another model (its later arguments must then cut it to 8 blocks, e.g. for UltraMem
    # --mem_layers=0:4/5:7), KVS the KV-head counts; the files are named after the config
    cfg=${DIAG_CONFIG:-config/dense_1p6b.py}; tag=$(basename "$cfg" .py)
    [ "$tag" = dense_1p6b ] && tag=diag || tag=diag_$tag
    for attn in ${ATTNS:-sdpa matmul flex triton}; do for kv in ${KVS:-16 2}; do
      python bench.py "$cfg" --n_layer=8 --n_kv_head=$kv --attn_decode=$attn --batches=1,64 \
        --profile=2 --out="$OUT/${tag}_${attn}_kv$kv.json" "${@:2}" 2>&1 | grep --line-buffered -v "^W[0-9]" | tee "$OUT/${tag}_${attn}_kv$kv.log"
    done; done
    exit 0 ;;
  *) echo "unknown part: $1" >&2; exit 2 ;;
esac
python bench.py $args --out="$OUT/decode_$1.json" "${@:2}" 2>&1 | grep --line-buffered -v "^W[0-9]" | tee "$OUT/decode_$1.log"
