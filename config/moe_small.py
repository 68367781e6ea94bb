# A small MoE for quick runs: the facts quick start (config/facts.py) with every MLP replaced by 8 GeLU
# experts of width 256 (2 D), top-2: the same activated compute as the dense model's 4 D MLP. Trains on a
# CPU in minutes (moe_impl "auto": the reference loop on CPU, grouped _grouped_mm on CUDA).
out_dir = "out/moe_small"
dataset = "facts"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 256
batch_size = 32
learning_rate = 1e-3
max_iters = 2000
eval_interval = 250
log_interval = 10
ffn = "moe"
moe_num_experts = 8
moe_top_k = 2
moe_hidden = 256
moe_aux_coef = 0.01
moe_z_coef = 0.001
