# Dense-4x: the yardstick at about 4x config/small/dense.py's FLOPs per token (as the paper's Dense-6.5B against
# the 1.6B models): 12 blocks x 1024, 16 heads of 64. Same data, tokens, batch, schedule (lr 1e-3) and seed as
# every config/small run.
# Counted (GPT(GPTConfig.from_dict(...)) on the meta device): 202,531,840 total / 202,531,840 activated /
# 0.4050 GFLOPs per token forward (3.98x dense).
out_dir = "out/small/dense_4x"
dataset = "medium_mix"
n_layer = 12
n_head = 16
n_embd = 1024
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
