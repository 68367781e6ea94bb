# A check for issue 7 (docs/RESULTS.md): config/small/ultramem.py with the value learning-rate multiplier of the
# authors' released code (4 -> 1) instead of the paper's as we read it (10 -> 1, the default). Everything else,
# the run included (1100 steps, one pass), is Table 1's UltraMem: the difference is the value learning rate alone.
out_dir = "out/small/ultramem_vlr4"
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
mem_value_lr_mult = 4.0
