# Table 2 (spec 2) ablation ladder in miniature, row 1: +rm softmax: the raw top-m scores, used linearly.
# config/ablation/*.py at the scale of config/small/dense.py (8 x 512): ~510M sparse (x10 of dense's 50.9M) at
# every row, Dk 128, top-m 2 x 32; each file is the previous one plus one step (marked <-), the same option per
# row as config/ablation/. Activated compute drifts with keys and projectors, as in the big ladder.
# Counted (GPT(GPTConfig.from_dict(...)) on the meta device): 561,657,344 total / 51,736,064 activated /
# 0.1035 GFLOPs per token forward (1.02x dense); sparse 510.0M = 9.86x activated.
out_dir = "out/small/ablation/01_rm_softmax"
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
mem_knum = 998
mem_kdim = 128
mem_heads = 2
mem_topm = 32
mem_softmax = False  # <-
mem_value_proj = False
mem_share_query = False
mem_qk_norm = "none"
mem_expand = 1
mem_tdqkr = False
mem_cores = 1
mem_tucker_alpha = 0.0
mem_init = "pkm"
mem_value_lr_mult = 1.0
mem_qconv = 0
