#!/usr/bin/env bash
# Issues 4 and 5's kernel timings in one call (docs/BENCHMARKS.md, docs/KERNELS.md), no data needed; each part
# has its own time limit so that one slow part leaves the others' results:
#   1. the lookup kernels with their launch sweep, and the retrieval's top-k kernel against torch.topk with its
#      sweep (python bench.py --mode=kernels, decode and training sizes);
#   2. the UltraMem-151M training step profiled with each top-k (mem_topk=torch, then triton);
#   3. the MoE layer at 1-16 tokens on moe_impl=gather against triton, with the gather kernel's sweep.
#   bash scripts/gpu_kernels.sh        # OUT (default out/gpu) collects kernels.{json,log}, train_*, bench_moe_*.log
# (Its 2026-11-29 version ran the kernels sweep, one profile and the Triton decode attention diag: docs/BENCHMARKS.md.)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-out/gpu}; mkdir -p "$OUT"
timeout "${KERNELS_LIMIT:-240}" python bench.py --mode=kernels --tokens=1,64,512,4096,32768 --max_baseline_tokens=0 \
  --out="$OUT/kernels.json" 2>&1 | grep -v "^W[0-9]" | tee "$OUT/kernels.log"  # with the compile check (v3 and v4 ran without)
for topk in torch triton; do
  timeout "${PROFILE_LIMIT:-150}" python bench.py --mode=train config/ultramem_151m.py --mem_topk=$topk --warmup=10 \
    --iters=20 --profile=3 --out="$OUT/train_ultramem_151m_topk_$topk.json" 2>&1 | grep -v "^W[0-9]" \
    | tee "$OUT/train_ultramem_151m_topk_$topk.log"
done
PYTHONPATH=. timeout "${MOE_LIMIT:-150}" python scripts/bench_moe.py --compile --impls=gather,triton --tune 2>&1 \
  | grep -v "^W[0-9]" | tee "$OUT/bench_moe_gather.log"
exit 0
