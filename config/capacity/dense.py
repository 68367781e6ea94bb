# Knowledge capacity (issue 7, item 5): how many synthetic facts a model recalls exactly as their number
# grows (scripts/gpu_capacity.sh trains each of config/capacity/{dense,moe,ultramem}.py on data/facts_N,
# N = 1,000 / 4,000 / 16,000 people x 6 facts, for the same 24.6M characters, then runs data/facts/recall.py).
# Dense: 4 blocks of 256, 4 heads, MLP 4D; character vocabulary (72, padded to 128), sequence 256.
# Counted (GPT on the meta device, vocab 128): 3.18M parameters, all activated; 6.357 MFLOPs per token.
out_dir = "out/capacity/dense"
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
