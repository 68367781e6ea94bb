# Knowledge capacity (issue 7, item 5): config/capacity/dense.py's run and shape (read below), with
# UltraMem (every Table 2 step, the defaults): memory units 0:1 and 2:3, 256^2 values of D/2 per layer (16.8M
# sparse), keys of 32, top-m 2 x 16, MLP 3D to pay for the keys. Counted (meta device, vocab 128): 19.99M
# parameters, 3.22M activated, 6.470 MFLOPs per token (+1.8%).
import os

exec(open(os.path.join(os.path.dirname(__file__), "dense.py"), encoding="utf-8").read())
out_dir = "out/capacity/ultramem"
mlp_hidden = 768
memory = "ultramem"
mem_layers = "0:1/2:3"
mem_knum = 256
mem_kdim = 32
mem_heads = 2
mem_topm = 16
