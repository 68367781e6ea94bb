# Table 2 (spec 2) ablation ladder in miniature, row 3: +share query: the 2 key sets share one (q_row, q_col).
# config/ablation/*.py at the scale of config/small/dense.py (8 x 512): ~510M sparse (x10 of dense's 50.9M) at
# every row, Dk 128, top-m 2 x 32; each file is the previous one plus one step (marked <-), the same option per
# row as config/ablation/. Activated compute drifts with keys and projectors, as in the big ladder.
# Counted (GPT(GPTConfig.from_dict(...)) on the meta device): 561,590,528 total / 51,931,136 activated /
# 0.1038 GFLOPs per token forward (1.02x dense); sparse 509.7M = 9.81x activated.
out_dir = "out/small/ablation/03_share_query"
dataset = "medium_mix"
n_layer = 8
n_head = 8
n_embd = 512
block_size = 1024
vocab_size = 50304
dropout = 0.0
learning_rate = 1e-3
batch_size = 32
grad_accum = 1
max_iters = 550  # 550 x 32,768 = 18.0M tokens, half a pass over medium_mix's 37.3M: Table 1's runs take a whole
# pass, the ladder and the sparsity sweep half, so that the whole set fits 30 minutes of GPU time (gpu_results.sh)
eval_interval = 100
eval_iters = 20
log_interval = 10
seed = 1337  # fixed; scripts/gpu_results.sh passes --seed=S (and out_dir) per run
memory = "ultramem"
mem_layers = "4:4"
mem_knum = 1411
mem_kdim = 128
mem_heads = 2
mem_topm = 32
mem_softmax = False
mem_value_proj = True
mem_share_query = True  # <-
mem_qk_norm = "none"
mem_expand = 1
mem_tdqkr = False
mem_cores = 1
mem_tucker_alpha = 0.0
mem_init = "pkm"
mem_value_lr_mult = 1.0
mem_qconv = 0
