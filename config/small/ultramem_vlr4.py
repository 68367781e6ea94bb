# A check for issue 7 (docs/RESULTS.md): config/small/ultramem.py (read below) with the value learning-rate
# multiplier of the authors' released code (4 -> 1) instead of the paper's as we read it (10 -> 1, the default).
# Everything else, the run included (1100 steps, one pass), is Table 1's UltraMem: only the value learning rate differs.
import os

exec(open(os.path.join(os.path.dirname(__file__), "ultramem.py"), encoding="utf-8").read())
out_dir = "out/small/ultramem_vlr4"
mem_value_lr_mult = 4.0
