# MoE-680M-2in33 of the paper's Table 1 (8.95B parameters, 1.50 GFLOPs per token): Dense-680M's shape
# (config/dense_680m.py: 21 blocks of 1536, 12 heads) with every block's MLP replaced by 33 GeLU experts of
# width 3840 (2.5 D), top-2. Counted: 8.452B (-5.6%) / 1.544 GFLOPs (+2.9%). See docs/SIZES_MOE.md.
# 8.45B parameters with AdamW in fp32 need about 135 GB of weights, gradients and moments: more than one
# H200 holds with activations; this config is for counting and decoding benchmarks until training shards.
out_dir = "out/moe_680m_2in33"
dataset = "medium_mix"
n_layer = 21
n_head = 12
n_embd = 1536
block_size = 2048
vocab_size = 50304
dropout = 0.1
ffn = "moe"
moe_num_experts = 33
moe_top_k = 2
moe_hidden = 3840
moe_aux_coef = 0.01  # OLMoE's load-balancing coefficient (the authors' codebase); the paper gives none
moe_z_coef = 0.001  # OLMoE's router z-loss coefficient
learning_rate = 2.5e-4  # the paper's 680M rate (spec 7.3)
batch_size = 8
grad_accum = 4
max_iters = 500
eval_interval = 100
eval_iters = 10
