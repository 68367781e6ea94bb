# The quick start: a small GPT memorizing the embedded synthetic facts (data/facts), on a CPU in minutes.
# (These are train.py's defaults, written out so the run is one readable file.)
out_dir = "out/facts"
dataset = "facts"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
learning_rate = 1e-3
max_iters = 2000
eval_interval = 250
log_interval = 10
