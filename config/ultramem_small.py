# A small UltraMem for quick runs and CPU tests: the facts quick start (config/facts.py, 4 blocks of 128)
# plus 2 UltraMem layers (0:1 and 2:3, skip placement), 32^2 = 1024 physical values of 64 each, E = 4,
# keys 32, top-m 2 x 8, query conv 5, every Table 2 step on.
out_dir = "out/ultramem_small"
dataset = "facts"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 256
batch_size = 32
learning_rate = 1e-3
max_iters = 2000
eval_interval = 250
log_interval = 10
memory = "ultramem"
mem_layers = "0:1/2:3"
mem_knum = 32
mem_kdim = 32
mem_heads = 2
mem_topm = 8
