# UltraMem-x12 at the scale of config/small/dense.py: the same dense model plus 2 UltraMem layers
# (1:4/5:7: read block i's FFN input, add after block j), every Table 2 step on (memory="ultramem"
# defaults), values D/2 = 256, keys D/4 = 128, 2 heads x top-32, E = 4, knum 1136 -> 1.29M physical
# values per layer: 661M sparse parameters = 11.6x the 57.0M activated. Activated compute 0.114 GFLOPs per
# token, +12% over dense (the paper's 0.30 : 0.35 is +17%).
out_dir = "out/small_ultramem"
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
max_iters = 1100  # 1100 x 32,768 = 36.0M tokens: about one pass over medium_mix's 37.3M
eval_interval = 100
eval_iters = 20
log_interval = 10
seed = 1337  # fixed; scripts/gpu_results.sh passes --seed=S (and out_dir) per run
memory = "ultramem"
mem_layers = "1:4/5:7"
mem_knum = 1136
mem_kdim = 128
mem_heads = 2
mem_topm = 32
