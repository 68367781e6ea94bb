# MoE-1.6B-2in34 of the paper's Table 1 (21.36B parameters, 3.52 GFLOPs per token): Dense-1.6B's shape
# (config/dense_1p6b.py: 30 blocks of 2048, 16 heads) with every block's MLP replaced by 34 GeLU experts of
# width 4864 (2.375 D), top-2. Counted: 20.930B (-2.0%) / 3.608 GFLOPs (+2.5%). See docs/SIZES_MOE.md.
# The model of the paper's inference benchmark (spec 9). 20.9B parameters are 41.9 GB in bf16 (fits one
# H200 for decoding); training with AdamW needs sharding over several GPUs.
out_dir = "out/moe_1p6b_2in34"
dataset = "medium_mix"
n_layer = 30
n_head = 16
n_embd = 2048
block_size = 2048
vocab_size = 50304
dropout = 0.1
ffn = "moe"
moe_num_experts = 34
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
