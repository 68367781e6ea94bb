"""Where the sorted lookup backward's time goes (run from the repo root on a GPU:
PYTHONPATH=. python scripts/profile_lookup_bwd.py [--tokens=32768]).

bench.py's two kernel shapes ((a) 4,194,304 x 512, 64 slots; (b) 652,864 x 384, 160 slots; bf16, E=4, h=2,
random indices), kernels._lookup_bwd_triton with the defaults under torch.profiler: device time per kernel
(the sort, the searchsorted bounds, the gathers into row order, the Triton kernels: the value gradients', and the
score gradients' own with bwd_split_scores, else their sum and scatter), over 10 calls after a warm-up.
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

import kernels
from bench import SHAPES

T = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--tokens=")), 32768)
E, h, dev, dt = 4, 2, "cuda", torch.bfloat16
g = torch.Generator(device=dev).manual_seed(0)
print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, {T} tokens, kernels.CONFIG {kernels.CONFIG}")
for shape, (N, Dv, K) in SHAPES.items():
    values = (torch.randn(N, Dv, device=dev, generator=g) * 0.02).to(dt)
    rows = torch.randint(0, N, (T, K), device=dev, generator=g)
    blocks = torch.randint(0, E, (T, K), device=dev, generator=g)
    scores = torch.rand(T, K, h, device=dev, generator=g).to(dt)
    gout = torch.randn(T, E, Dv, device=dev, generator=g).to(dt)
    fn = lambda: kernels._lookup_bwd_triton(gout, values, rows, blocks, scores, E)
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    total = sum(e.device_time_total for e in prof.key_averages()) / 10
    print(f"\nshape ({shape}) N={N} Dv={Dv} K={K}: device time per call {total / 1e3:.3f} ms")
    for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:12]:
        print(f"  {e.device_time_total / 10 / 1e3:8.3f} ms  {e.count // 10:3d}x  {e.key[:110]}")
    del values, rows, blocks, scores, gout
    torch.cuda.empty_cache()
