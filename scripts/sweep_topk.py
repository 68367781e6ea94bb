"""kernels.topk_indices' kernel against torch.topk on the models' selection shapes, over a grid of TOPK_CONFIG
entries (run from the repo root on a GPU: PYTHONPATH=. python scripts/sweep_topk.py
["--grid=block:512,1024/groups:128,256/filter_warps:2,4"] [--shapes=train|decode|all]).

Shapes: the UltraMem-151M training step's (32,768 tokens x 2 heads = 65,536 rows: the rank-1 pre-selection of
rows or columns, L = 2 x knum 1100 = 2,200, and the 80 x 80 candidate grid, L = 6,400; k = 80), in bf16 (their
dtype under autocast) and fp32; the small configs' 1,136 x 32; decoding's (UltraMem-1.6B at batch 1 and 64: 4 and
256 rows of 3,576, 2 and 128 rows of 1,764, k = 42, bf16). Rows are standard normal. Every configuration is checked
first: the same values as torch.topk's, k distinct indices, increasing index order. Times: triton.testing.do_bench
(median of 300 ms of calls) for training shapes; per call in a CUDA graph of 20 calls for decode shapes, where a
single call is launch-bound. The defaults first, then filter=0 (the whole row in registers), then the grid.
bench.py --mode=kernels runs the fixed comparison of record; this is for narrower questions.
"""
import itertools
import sys

import torch
import triton.testing

import kernels
from bench import _cuda_graph, parse_grid

WHICH = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--shapes=")), "all")
if WHICH not in ("train", "decode", "all"):
    sys.exit(f"--shapes={WHICH}: train, decode or all")
GRID = {"block": (512, 1024, 2048), "groups": (128, 256), "filter_warps": (2, 4, 8)}
for a in sys.argv:
    if a.startswith("--grid="):
        GRID = parse_grid("--grid", a.split("=", 1)[1], kernels.TOPK_CONFIG, "kernels.TOPK_CONFIG")
TRAIN = [(65536, 2200, 80, torch.bfloat16), (65536, 6400, 80, torch.bfloat16), (65536, 2200, 80, torch.float32),
         (65536, 6400, 80, torch.float32), (65536, 1136, 32, torch.bfloat16)]
DECODE = [(4, 3576, 42, torch.bfloat16), (256, 3576, 42, torch.bfloat16), (2, 1764, 42, torch.bfloat16),
          (128, 1764, 42, torch.bfloat16)]
SHAPES = {"train": TRAIN, "decode": DECODE, "all": TRAIN + DECODE}[WHICH]
dev = "cuda"
g = torch.Generator(device=dev).manual_seed(0)
print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
      f"defaults {kernels.TOPK_CONFIG}; grid {GRID}", flush=True)


def ms_of(fn, decode: bool) -> float:
    if decode:
        return triton.testing.do_bench(_cuda_graph(lambda: [fn() for _ in range(20)]), rep=300) / 20
    return triton.testing.do_bench(fn, rep=300)


for rows, L, k, dt in SHAPES:
    decode = rows <= 4096
    x = torch.randn(rows, L, device=dev, generator=g).to(dt)
    want = x.topk(k, dim=-1).values.float()
    floor_us = rows * L * x.element_size() / 4.27e12 * 1e6
    line = f"{rows} x {L} {str(dt)[6:]} k={k} (read floor {floor_us:.1f} us):"
    t_sorted = ms_of(lambda: x.topk(k, dim=-1), decode) * 1e3
    t_unsorted = ms_of(lambda: x.topk(k, dim=-1, sorted=False), decode) * 1e3
    print(f"{line} torch.topk sorted {t_sorted:.1f} us, unsorted {t_unsorted:.1f} us", flush=True)
    keep = dict(kernels.TOPK_CONFIG)
    for change in [{}, {"filter": 0}] + [dict(zip(GRID, c)) for c in itertools.product(*GRID.values())]:
        kernels.TOPK_CONFIG.update(change)
        try:
            fn = lambda: kernels.topk_indices(x, k, sorted=False, impl="triton")
            got = fn()
            ok = (torch.equal(x.gather(-1, got).float().sort(-1, descending=True).values, want)
                  and bool((got.diff(dim=-1) > 0).all()))
            us = ms_of(fn, decode) * 1e3
            kind = "filter" if kernels._topk_filter_shape(L, k) is not None else "register"
            print(f"  {change or 'defaults'} ({kind} kernel): {us:.1f} us ({t_unsorted / us:.2f}x torch unsorted)"
                  f"{'' if ok else '  WRONG'}", flush=True)
        except Exception as e:  # report and go on
            print(f"  {change}: {type(e).__name__}: {' | '.join(str(e).splitlines()[:3])[:300]}", flush=True)
        kernels.TOPK_CONFIG.clear()
        kernels.TOPK_CONFIG.update(keep)
    del x
    torch.cuda.empty_cache()
