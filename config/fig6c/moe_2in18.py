# Figure 6c (spec 9): 1.6B activated (Dense-1.6B's 30 x 2048 base), decoding at batch 512 with a 2048-token
# KV cache, sparse parameters growing. This file: MoE, top-2 of 18 experts (11.37B parameters).
# Sweep: UltraMem mem_knum 894 / 1264 / 1788 / 2529 (values x0.25 / x0.5 / x1 / x2 of UltraMem-1.6B-x12,
# config/ultramem_1p6b.py) against MoE top-2 of 10 / 18 / 34 / 68 experts (config/moe_1p6b_2in34.py), paired
# at equal total parameters (within 3%). Counted (meta device): UltraMem 6.63 / 11.55 / 21.41 / 41.10B
# total, 1.72-1.80B activated; MoE 6.58 / 11.37 / 20.93 / 41.25B total, 1.80B activated.
# Decode-benchmark configs (scripts/gpu_bench_decode.sh); trainable like their x12 base, with sharding.
out_dir = "out/fig6c/moe_2in18"
dataset = "medium_mix"
n_layer = 30
n_head = 16
n_embd = 2048
block_size = 2048
vocab_size = 50304
dropout = 0.1
ffn = "moe"
moe_num_experts = 18
moe_top_k = 2
moe_hidden = 4864
moe_aux_coef = 0.01  # OLMoE's load-balancing coefficient (the authors' codebase); the paper gives none
moe_z_coef = 0.001  # OLMoE's router z-loss coefficient
learning_rate = 2e-4  # the paper's 1.6B rate (spec 7.3)
batch_size = 4
grad_accum = 8
max_iters = 500
eval_interval = 100
eval_iters = 10
