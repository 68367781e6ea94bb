# PKM-151M-x10, the first row of the paper's Table 2 (151M activated, ~1.5B sparse): Dense-151M's shape
# (config/dense_151m.py) plus one PKM layer (Lample et al.: softmax over the top-m, additive product-key
# scores, full-width values, 2 heads with their own queries) beside block 8's MLP. 1404^2 = 1.97M values
# of 768; keys 256 (XLM); top-m 2 x 80. Counted: 1.668B / 0.309 GFLOPs. Same as config/ablation/00_pkm.py.
out_dir = "out/pkm_151m"
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
