# Knowledge capacity (issue 7, item 5): how many synthetic facts a model recalls exactly as their number
# grows (scripts/gpu_capacity.sh trains each of config/capacity/{dense,moe,ultramem}.py on data/facts_N,
# N = 1,000 / 4,000 / 16,000 people x 6 facts, for the same 24.6M characters, then runs data/facts/recall.py).
# MoE: the dense model with every MLP replaced by top-2 of 16 GeLU experts of width 2D (so 2 experts = one
# dense MLP). Counted (meta device, vocab 128): 17.88M parameters, 3.20M activated, 6.390 MFLOPs per token (+0.5%).
out_dir = "out/capacity/moe"
dataset = "facts"
n_layer = 4
n_head = 4
n_embd = 256
block_size = 256
dropout = 0.0
learning_rate = 1e-3
batch_size = 32
grad_accum = 1
max_iters = 3000  # 3000 x 32 x 256 = 24.6M characters
eval_interval = 500
eval_iters = 20
log_interval = 50
ffn = "moe"
moe_num_experts = 16
moe_top_k = 2
moe_hidden = 512
moe_aux_coef = 0.01
moe_z_coef = 0.001
