# Small-scale comparison base (issue 7 / the memory-layer GPU check): a dense GPT of 8 blocks x 512 on
# medium_mix, sequence 1024, 32 x 1024 tokens per step. 25.2M block + 25.8M embedding = 51.0M parameters,
# 0.102 GFLOPs per token (paper's count).
out_dir = "out/small_dense"
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
