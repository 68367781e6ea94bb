# Figure 6c (spec 9): 1.6B activated (Dense-1.6B's 30 x 2048 base), decoding at batch 512 with a 2048-token
# KV cache, sparse parameters growing. This file: MoE, top-2 of 18 experts (11.37B parameters).
# Sweep: UltraMem mem_knum 894 / 1264 / 1788 / 2529 (values x0.25 / x0.5 / x1 / x2 of UltraMem-1.6B-x12,
# config/ultramem_1p6b.py) against MoE top-2 of 10 / 18 / 34 / 68 experts (config/moe_1p6b_2in34.py), paired
# at equal total parameters (within 3%). Counted (meta device): UltraMem 6.63 / 11.55 / 21.41 / 41.10B
# total, 1.72-1.80B activated; MoE 6.58 / 11.37 / 20.93 / 41.25B total, 1.80B activated (tests/test_model.py).
# Decode-benchmark configs (scripts/gpu_bench_decode.sh fig6c): the x12 config's settings, one key changed.
import os

exec(open(os.path.join(os.path.dirname(__file__), "..", "moe_1p6b_2in34.py"), encoding="utf-8").read())
out_dir = "out/fig6c/moe_2in18"
moe_num_experts = 18
