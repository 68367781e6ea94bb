# Dense-680M of the paper's Table 1 (0.68B parameters, 1.36 GFLOPs per token). The paper's Table 6 is lost
# (spec 8.1); this shape is chosen to hit both numbers: 21 blocks of width 1536 (12 heads of 128):
# 21 * 12 * 1536^2 = 594.5M + 50304 * 1536 = 77.3M tied embedding = 671.8M parameters, 1.344 GFLOPs/token
# (-1.2% on both). MoE-680M and UltraMem-680M configs use this dense shape. See docs/SIZES.md.
out_dir = "out/dense_680m"
dataset = "medium_mix"
n_layer = 21
n_head = 12
n_embd = 1536
block_size = 2048
vocab_size = 50304
dropout = 0.1
learning_rate = 2.5e-4  # the paper's 680M rate (spec 7.3)
batch_size = 8
grad_accum = 4
max_iters = 500
eval_interval = 100
eval_iters = 10
