# Figure 6b in miniature, x6: config/small/ultramem.py (the full UltraMem, 2 layers '1:4/5:7', Dv 256, Dk 128,
# 2 x 32, E = 4) with only mem_knum changed: knum 803, 803^2 = 0.64M physical values per layer.
# The sweep doubles the sparse parameters (knum 568 / 803 / 1136 / 1607: 0.25 / 0.5 / 1 / 2 x 661M); the keys
# grow with knum, so activated compute rises slightly (0.109 -> 0.118 GFLOPs).
# Counted (GPT(GPTConfig.from_dict(...)) on the meta device): 385,677,856 total / 55,568,416 activated /
# 0.1112 GFLOPs per token forward (1.09x dense); sparse 330.1M = 5.94x activated.
out_dir = "out/small/sparsity_x6"
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
mem_layers = "1:4/5:7"
mem_knum = 803
mem_kdim = 128
mem_heads = 2
mem_topm = 32
