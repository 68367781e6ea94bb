"""The lookup forward or sorted backward over a grid of kernels.CONFIG entries (run from the repo root on a GPU:
PYTHONPATH=. python scripts/sweep_lookup.py ["--grid=fwd_block_k:32,64/fwd_warps:4,8"] [--pass=fwd|bwd]
[--tokens=32768[,...]] [--shapes=a,b] [--dtype=bf16|fp32] [--graph]).

bench.py's kernel shapes and inputs ((a) 4,194,304 x 512, 64 slots; (b) 652,864 x 384, 160 slots; bf16 values and
scores (--dtype), E=4, h=2, random int64 indices), kernels.mem_lookup (--pass=fwd, the default) or
kernels.mem_lookup_backward (--pass=bwd: value and score gradients) timed with triton.testing.do_bench (median of
300 ms of calls; --graph: triton.testing.do_bench_cudagraph, the calls replayed in a CUDA graph, for sizes where
launching takes longer than the kernels) for every combination of the grid's values at each token count, each
checked against the defaults' outputs first (the same sums, possibly in another order: relative difference under
1e-2). Prints us and TB/s of useful traffic (bench.py's counts) per configuration, the defaults first. bench.py
--mode=kernels runs the fixed sweep of record; this is for narrower questions.
"""
import itertools
import sys

import torch
import triton.testing

import kernels
from bench import SHAPES, _lookup_config, parse_grid

TOKENS = next(([int(t) for t in a.split("=", 1)[1].split(",")] for a in sys.argv if a.startswith("--tokens=")),
              [32768])
GRAPH = "--graph" in sys.argv
PASS = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--pass=")), "fwd")
if PASS not in ("fwd", "bwd"):
    sys.exit(f"--pass={PASS}: fwd or bwd")
SHAPE_KEYS = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--shapes=")), list(SHAPES))
GRID = {"fwd_block_k": (32, 64)}
for a in sys.argv:
    if a.startswith("--grid="):
        GRID = parse_grid("--grid", a.split("=", 1)[1], kernels.CONFIG, "kernels.CONFIG")
DTYPE = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--dtype=")), "bf16")
if DTYPE not in ("bf16", "fp32"):
    sys.exit(f"--dtype={DTYPE}: bf16 or fp32")
E, h, dev, dt = 4, 2, "cuda", {"bf16": torch.bfloat16, "fp32": torch.float32}[DTYPE]
el = torch.finfo(dt).bits // 8
g = torch.Generator(device=dev).manual_seed(0)
print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, {TOKENS} tokens, {PASS}, {DTYPE}"
      f"{', CUDA graph' if GRAPH else ''}; defaults {kernels.CONFIG}; grid {GRID}", flush=True)
for shape, T in itertools.product(SHAPE_KEYS, TOKENS):
    N, Dv, K = SHAPES[shape]
    values = (torch.randn(N, Dv, device=dev, generator=g) * 0.02).to(dt)
    rows = torch.randint(0, N, (T, K), device=dev, generator=g)
    blocks = torch.randint(0, E, (T, K), device=dev, generator=g)
    scores = torch.rand(T, K, h, device=dev, generator=g).to(dt)
    gout = torch.randn(T, E, Dv, device=dev, generator=g).to(dt)
    if PASS == "fwd":
        useful = T * K * Dv * el + T * K * (8 + 8 + h * 4) + T * E * Dv * el  # bench.py's fwd_bytes
        fn = lambda: (kernels.mem_lookup(values, rows, blocks, scores, E),)
    else:
        useful = N * Dv * el + 2 * T * K * Dv * el + T * K * (8 + 8 + 2 * h * 4)  # bench.py's bwd_bytes
        fn = lambda: kernels.mem_lookup_backward(gout, values, rows, blocks, scores, E)
    base = fn()
    results = []
    for combo in [()] + list(itertools.product(*GRID.values())):
        change = dict(zip(GRID, combo))
        with _lookup_config(**change):
            try:
                diff = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(fn(), base))
                if diff > 1e-2:
                    sys.exit(f"shape ({shape}) T={T} {change}: output differs from the defaults' by {diff:.2e}")
                if GRAPH:
                    us = triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median") * 1e3
                else:
                    us = triton.testing.do_bench(fn, warmup=10, rep=300, return_mode="median") * 1e3
            except Exception as e:  # out of resources and the like: report and go on
                print(f"shape ({shape}) T={T} {change or '(defaults)'}: failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0][:120]})", flush=True)
                continue
        results.append((us, change))
        print(f"shape ({shape}) T={T} {change or '(defaults)'}: {us:8.1f} us, {useful / us / 1e6:.2f} TB/s",
              flush=True)
    best = min(results, key=lambda r: r[0])
    print(f"shape ({shape}) T={T} best: {best[1] or '(defaults)'} {best[0]:.1f} us (defaults {results[0][0]:.1f} us)",
          flush=True)
    del values, rows, blocks, scores, gout, base
    torch.cuda.empty_cache()
