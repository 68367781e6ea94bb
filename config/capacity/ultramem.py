# Knowledge capacity (issue 7, item 5): how many synthetic facts a model recalls exactly as their number
# grows (scripts/gpu_capacity.sh trains each of config/capacity/{dense,moe,ultramem}.py on data/facts_N,
# N = 1,000 / 4,000 / 16,000 people x 6 facts, for the same 24.6M characters, then runs data/facts/recall.py).
# UltraMem (every Table 2 step, the defaults): memory units 0:1 and 2:3, 256^2 values of D/2 per layer (16.8M
# sparse), keys of 32, top-m 2 x 16, MLP 3D to pay for the keys. Counted (meta device, vocab 128): 19.99M
# parameters, 3.22M activated, 6.470 MFLOPs per token (+1.8%).
out_dir = "out/capacity/ultramem"
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
mlp_hidden = 768
memory = "ultramem"
mem_layers = "0:1/2:3"
mem_knum = 256
mem_kdim = 32
mem_heads = 2
mem_topm = 16
