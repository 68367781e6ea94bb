# nanoGPT's GPT-2 small, the throughput yardstick of docs/BENCHMARKS.md: 12 layers, 768 wide, 12 heads,
# vocabulary 50304, learned positions, sequence 1024, batch 32, no dropout, no biases (nanoGPT's defaults).
out_dir = "out/gpt2_small"
dataset = "medium_mix"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
vocab_size = 50304
pos_emb = "learned"
dropout = 0.0
learning_rate = 6e-4
batch_size = 32
grad_accum = 1
max_iters = 5000
eval_interval = 500
eval_iters = 20
log_interval = 10
