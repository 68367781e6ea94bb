# UltraMem-1.6B-x12 of the paper's Table 1 (21.41B parameters, 3.50 GFLOPs per token) on the Dense-1.6B
# shape of config/dense_1p6b.py (30 blocks of 2048, 16 heads), so Dense, MoE and UltraMem 1.6B share one
# dense base for the equal-compute inference comparison.
# Placement: the paper's 6 units `3:7/8:12/13:17/18:22/23:27/28:32` (spec 8.1, secondary source) need >= 33
# blocks; we keep their structure (6 units, one every 5 blocks, each skipping 4) shifted by -3 to fit 30
# blocks: 0:4/5:9/10:14/15:19/20:24/25:29. A deviation from the reported indices, not from the design.
# Memory: 1788^2 = 3.20M physical values of D/2 = 1024 per layer (19.2M slots in all: "20 million memory
# slots"), E = 4, keys D/4 = 512, top-m 2 x 42 (spec 8.1: m = 84 = 42 x 2 heads).
# Counted: 21.41B (+0.0%) / 3.53 GFLOPs (+0.8%). See docs/SIZES_MEMORY.md. Sharded training is needed;
# this config serves the counters and the decoding benchmarks.
out_dir = "out/ultramem_1p6b"
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
mem_knum = 1788
mem_kdim = 512
mem_heads = 2
mem_topm = 42
