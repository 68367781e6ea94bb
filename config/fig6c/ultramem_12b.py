# Figure 6c (spec 9): 1.6B activated (Dense-1.6B's 30 x 2048 base), decoding at batch 512 with a 2048-token
# KV cache, sparse parameters growing. This file: UltraMem, mem_knum 1264 (11.55B parameters).
# Sweep: UltraMem mem_knum 894 / 1264 / 1788 / 2529 (values x0.25 / x0.5 / x1 / x2 of UltraMem-1.6B-x12,
# config/ultramem_1p6b.py) against MoE top-2 of 10 / 18 / 34 / 68 experts (config/moe_1p6b_2in34.py), paired
# at equal total parameters (within 3%). Counted (meta device): UltraMem 6.63 / 11.55 / 21.41 / 41.10B
# total, 1.72-1.80B activated; MoE 6.58 / 11.37 / 20.93 / 41.25B total, 1.80B activated.
# Decode-benchmark configs (scripts/gpu_bench_decode.sh); trainable like their x12 base, with sharding.
out_dir = "out/fig6c/ultramem_12b"
dataset = "medium_mix"
n_layer = 30
n_head = 16
n_embd = 2048
block_size = 2048
vocab_size = 50304
dropout = 0.1
learning_rate = 2e-4  # the paper's 1.6B rate (spec 7.3)
batch_size = 4
grad_accum = 8
max_iters = 500
eval_interval = 100
eval_iters = 10
memory = "ultramem"
mem_layers = "0:4/5:9/10:14/15:19/20:24/25:29"
mem_knum = 1264
mem_kdim = 512
mem_heads = 2
mem_topm = 42
