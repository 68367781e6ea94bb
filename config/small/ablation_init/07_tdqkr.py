# A check on Table 2 in miniature (docs/RESULTS.md): ladder row config/small/ablation/07_tdqkr.py (read below) with
# the improved init (spec 7.1, row 09's step) brought forward. Rows 01-08 keep PKM's init, under which the
# memory output starts at 4.5-9x the residual stream's RMS; with it, at about 0.13, the rows from query/key norm
# on (the paper init needs it) can be compared at the scale the full model starts from.
import os

exec(open(os.path.join(os.path.dirname(__file__), "..", "ablation", "07_tdqkr.py"), encoding="utf-8").read())
out_dir = "out/small/ablation_init/07_tdqkr"
mem_init = "paper"
