# Table 2 (spec 2) ablation ladder, row 9: +improved init: V ~ N(0, E/(2 m H L)), key-norm 1/sqrt(D_k), query-norm tuned by Monte Carlo to mean top-m score 1.
# 151M activated, ~1.5B sparse (x10) at every row; each file is the previous one plus one step (marked <-).
# See docs/SIZES_MEMORY.md for the counts of every row.
out_dir = "out/ablation/09_improved_init"
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
memory = "ultramem"
mem_layers = "1:4/5:8/9:12/13:15"
mem_knum = 993
mem_kdim = 256
mem_heads = 2
mem_topm = 80
mem_softmax = False
mem_value_proj = True
mem_share_query = True
mem_qk_norm = "layer"
mem_expand = 4
mem_tdqkr = True
mem_cores = 2
mem_tucker_alpha = 0.001
mem_init = "paper"  # <-
mem_value_lr_mult = 1.0
mem_qconv = 0
