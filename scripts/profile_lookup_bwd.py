"""Where the sorted lookup backward's time goes (run from the repo root on a GPU:
PYTHONPATH=. python scripts/profile_lookup_bwd.py [--tokens=32768] [--shapes=a,b] [--configs="bwd_max_slots=0;"]
[--direct]).

bench.py's two kernel shapes ((a) 4,194,304 x 512, 64 slots; (b) 652,864 x 384, 160 slots; bf16, E=4, h=2,
random indices), kernels.mem_lookup_backward, once per entry of --configs (kernels.CONFIG overrides separated by ";",
an empty entry: the defaults): the wall time per eager call (20 calls, synchronised at the end), the device time
per call in kernels and per kernel under torch.profiler over 10 calls after a warm-up (the sort, the searchsorted
bounds, the Triton kernels), and the host time of the ops that launch them, so that a launch-bound call (wall time
above device time) shows where its host time goes. --direct: kernels._lookup_bwd_triton called outside the custom op,
as the benchmarks did until session 19, where each wrap_triton launch goes through torch's higher-order-op dispatch
(docs/BENCHMARKS.md, session 19, call 1).
"""
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import kernels
from bench import SHAPES


def arg(name: str, default: str) -> str:
    return next((a.split("=", 1)[1] for a in sys.argv if a.startswith(f"--{name}=")), default)


T = int(arg("tokens", "32768"))
shapes = arg("shapes", "a,b").split(",")
configs = arg("configs", "").split(";")
E, h, dev, dt = 4, 2, "cuda", torch.bfloat16
print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, {T} tokens, kernels.CONFIG {kernels.CONFIG}")
for shape in shapes:
    N, Dv, K = SHAPES[shape]
    g = torch.Generator(device=dev).manual_seed(0)
    values = (torch.randn(N, Dv, device=dev, generator=g) * 0.02).to(dt)
    rows = torch.randint(0, N, (T, K), device=dev, generator=g)
    blocks = torch.randint(0, E, (T, K), device=dev, generator=g)
    scores = torch.rand(T, K, h, device=dev, generator=g).to(dt)
    gout = torch.randn(T, E, Dv, device=dev, generator=g).to(dt)
    bwd = kernels._lookup_bwd_triton if "--direct" in sys.argv else kernels.mem_lookup_backward
    fn = lambda: bwd(gout, values, rows, blocks, scores, E)  # noqa: E731
    base = dict(kernels.CONFIG)
    for cfg in configs:
        kernels.CONFIG.update(kernels.parse_config(cfg))
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        ev = prof.key_averages()
        kern = [e for e in ev if e.device_type == DeviceType.CUDA]  # kernels and memsets, not the ops launching them
        dev_total = sum(e.self_device_time_total for e in kern) / 10
        print(f"\nshape ({shape}) N={N} Dv={Dv} K={K}, config {cfg or 'defaults'}: wall {(t2 - t0) / 20 * 1e3:.3f} ms "
              f"per call (host issue {(t1 - t0) / 20 * 1e3:.3f} ms), device time in kernels {dev_total / 1e3:.3f} ms")
        print("  device time per call:")
        for e in sorted(kern, key=lambda e: -e.self_device_time_total)[:12]:
            if e.self_device_time_total > 0:
                print(f"    {e.self_device_time_total / 10 / 1e3:8.3f} ms  {e.count // 10:3d}x  {e.key[:100]}")
        print("  host time per call (self CPU time, top 15):")
        for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:15]:
            print(f"    {e.self_cpu_time_total / 10 / 1e3:8.3f} ms  {e.count // 10:3d}x  {e.key[:100]}")
        kernels.CONFIG.clear()
        kernels.CONFIG.update(base)
    del values, rows, blocks, scores, gout
    torch.cuda.empty_cache()
