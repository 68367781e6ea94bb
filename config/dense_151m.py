# Dense-151M of the paper's Table 1 (0.15B parameters, 0.30 GFLOPs per token), on the prepared medium_mix.
# Shape: the paper's Table 6 is lost (spec 8.1). GPT-2 small's width (768, 12 heads) with 16 layers gives
# 16 * 12 * 768^2 = 113.2M block parameters + 50304 * 768 = 38.6M tied embedding = 151.9M parameters, and
# 2 * 151.9M = 0.304 GFLOPs per token by the paper's count (2 x activated matmul parameters, the tied
# embedding once as the output head, attention scores excluded). See docs/SIZES.md.
out_dir = "out/dense_151m"
dataset = "medium_mix"  # python data/prepare.py --input=../shared/data/medium_mix.jsonl.xz --out_dir=data/medium_mix
n_layer = 16
n_head = 12
n_embd = 768
block_size = 2048
vocab_size = 50304
dropout = 0.1  # the paper's Table 4
learning_rate = 6e-4  # the paper's 151M rate (spec 7.3)
batch_size = 16
grad_accum = 2  # 16 * 2 * 2048 = 65,536 tokens per step: 500 steps are about one pass over medium_mix
max_iters = 500
eval_interval = 100
eval_iters = 10
log_interval = 10
