# UltraMem-151M-x12 of the paper's Table 1 (2.03B parameters, 0.35 GFLOPs per token): Dense-151M's shape
# (config/dense_151m.py: 16 blocks of 768, 12 heads) plus 4 UltraMem layers with skip placement (each reads
# block i's FFN input and adds after block i+3, as the authors' 20-layer script '2:5/6:9/10:13/14:17'),
# 1100^2 = 1.21M physical values of D/2 = 384 per layer, E = 4, keys D/4 = 192 (the authors' 768-wide
# script), top-m 2 x 80 (same). Counted: 2.030B (+0.0%) / 0.344 GFLOPs (-1.8%). See docs/SIZES_MEMORY.md.
out_dir = "out/ultramem_151m"
dataset = "medium_mix"
n_layer = 16
n_head = 12
n_embd = 768
block_size = 2048
vocab_size = 50304
dropout = 0.1  # the paper's Table 4
learning_rate = 6e-4  # the paper's 151M rate (spec 7.3)
batch_size = 16
grad_accum = 2  # 65,536 tokens per step, as dense_151m
max_iters = 500
eval_interval = 100
eval_iters = 10
log_interval = 10
memory = "ultramem"
mem_layers = "1:4/5:8/9:12/13:15"
mem_knum = 1100
mem_kdim = 192
mem_heads = 2
mem_topm = 80
# the lookup backward: the defaults (score gradients by their own kernel, bwd_split_scores). Until session 16 this
# config asked for the value tile (lookup_config = "bwd_value_tile=1", session 8: step 201.4 against 208.7 ms); on
# session 16's code the step took 196.4 ms with the defaults against 215.2 ms with the value tile (H200,
# docs/BENCHMARKS.md)
lookup_config = ""
# the lookup on the value table cast to bf16 (memory.py): each row is selected 4.3 times per micro-batch here, so the
# cast's full-table read and write cost less than the fp32 gathers they save; the step took 165.5 ms against 178.0 ms
# with "param" (H200, docs/BENCHMARKS.md, session 19)
mem_lookup_dtype = "autocast"
