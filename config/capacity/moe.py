# Knowledge capacity (issue 7, item 5): config/capacity/dense.py's run and shape (read below), with
# MoE: the dense model with every MLP replaced by top-2 of 16 GeLU experts of width 2D (so 2 experts = one
# dense MLP). Counted (meta device, vocab 128): 17.88M parameters, 3.20M activated, 6.390 MFLOPs per token (+0.5%).
import os

exec(open(os.path.join(os.path.dirname(__file__), "dense.py"), encoding="utf-8").read())
out_dir = "out/capacity/moe"
ffn = "moe"
moe_num_experts = 16
moe_top_k = 2
moe_hidden = 512
moe_aux_coef = 0.01
moe_z_coef = 0.001
