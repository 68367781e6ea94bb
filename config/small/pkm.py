# PKM-x12 at the scale of config/small/dense.py (Table 1 in miniature, Table 2's first row's design): the dense
# base plus one PKM layer (memory='pkm': softmax, full-width values of 512, 2 heads with their own queries) beside
# the middle block's MLP ('4:4'), keys Dk 128 and top-m 2 x 32 as config/small/ultramem.py. knum 1100: 1.21M
# values = 620M sparse parameters, ~12x activated (knum 1136 would equal UltraMem's 661M, 12.8x). PKM adds +1.7%
# FLOPs to dense (Table 2's PKM-151M: 0.308 vs 0.304 G, +1.5%); UltraMem's extra compute (+12%) is its IVE
# projectors, keys and two layers.
# Counted (GPT(GPTConfig.from_dict(...)) on the meta device): 671,275,520 total / 51,788,288 activated /
# 0.1036 GFLOPs per token forward (1.02x dense); sparse 619.5M = 11.96x activated.
out_dir = "out/small/pkm"
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
memory = "pkm"
mem_layers = "4:4"
mem_knum = 1100
mem_kdim = 128
mem_heads = 2
mem_topm = 32
