# Table 2 (spec 2) ablation ladder, row 0: PKM-151M-x10, Table 2's first row (memory='pkm': softmax, full-width values, 2 heads with their own queries, one layer beside block 8's MLP).
# 151M activated, ~1.5B sparse (x10) at every row; each file is the previous one plus one step (marked <-).
# See docs/SIZES_MEMORY.md for the counts of every row.
out_dir = "out/ablation/00_pkm"
dataset = "medium_mix"
n_layer = 16
n_head = 12
n_embd = 768
block_size = 2048
vocab_size = 50304
dropout = 0.1  # the paper's Table 4
learning_rate = 6e-4  # the paper's 151M rate (spec 7.3)
batch_size = 16
grad_accum = 2  # 65,536 tokens per step, as dense_151m
max_iters = 500
eval_interval = 100
eval_iters = 10
log_interval = 10
memory = "pkm"
mem_layers = "8:8"
mem_knum = 1404
mem_kdim = 256
mem_heads = 2
mem_topm = 80
