# UltraMem-680M-x12 of the paper's Table 1 (8.93B parameters, 1.49 GFLOPs per token): Dense-680M's shape
# (config/dense_680m.py: 21 blocks of 1536, 12 heads) plus 5 UltraMem layers reading block i and adding
# after block i+3; 1460^2 = 2.13M physical values of D/2 = 768 per layer, E = 4, keys D/4 = 384, top-m
# 2 x 64 (the paper's Table 6 is lost: between the 151M script's 2 x 80 and the 1.6B's 2 x 42).
# Counted: 8.933B (+0.0%) / 1.494 GFLOPs (+0.3%). See docs/SIZES_MEMORY.md.
# Like MoE-680M, 8.9B parameters need sharded training; this config serves counters and decoding benchmarks.
out_dir = "out/ultramem_680m"
dataset = "medium_mix"
n_layer = 21
n_head = 12
n_embd = 1536
block_size = 2048
vocab_size = 50304
dropout = 0.1
learning_rate = 2.5e-4  # the paper's 680M rate (spec 7.3)
batch_size = 8
grad_accum = 4
max_iters = 500
eval_interval = 100
eval_iters = 10
memory = "ultramem"
mem_layers = "1:4/5:8/9:12/13:16/17:20"
mem_knum = 1460
mem_kdim = 384
mem_heads = 2
mem_topm = 64
