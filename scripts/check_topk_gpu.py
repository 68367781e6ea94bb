"""kernels.topk_indices' kernels on the GPU against torch.topk, on random shapes and configurations not in the
tests (run from the repo root: PYTHONPATH=. python scripts/check_topk_gpu.py [--cases=40] [--cpu]).

Each case draws rows x L (1-70,000 rows, 1-20,000 long), k (1-128, at most L), a dtype (fp32, bf16, fp16) and a
TOPK_CONFIG (the filter kernel with blocks of 64-2,048, 32-256 groups and caps of 32-512 that often overflow, so that
its whole-row selection runs, or the register kernel); rows mix normal values with ties at the top, a row of equal
values, an increasing row, signed zeros and infinities. Checks: the same values as torch.topk's (sorted), k distinct
indices in increasing order, the filter kernel's positions equal to the register kernel's (ties to the lower
index), and bitwise-equal repeats. Exits non-zero on the first failure. --cpu: a few small
cases under the Triton interpreter (TRITON_INTERPRET=1 is set before triton is imported).
"""
import os
import random
import sys

CPU = "--cpu" in sys.argv
if CPU:
    os.environ["TRITON_INTERPRET"] = "1"
import torch  # noqa: E402

import kernels  # noqa: E402

CASES = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--cases=")), 6 if CPU else 40)
dev = "cpu" if CPU else "cuda"
if CPU:
    kernels.set_impl("triton")
rng = random.Random(17)
g = torch.Generator(device=dev).manual_seed(17)
keep = dict(kernels.TOPK_CONFIG)
for case in range(CASES):
    rows = rng.choice([1, 2, 3, 7, 64, 257, 4096, 70000]) if not CPU else rng.choice([1, 3, 5])
    L = rng.choice([1, 5, 37, 128, 513, 1100, 2200, 3576, 6400, 20000]) if not CPU else rng.choice([5, 37, 300, 700])
    if rows * L > 2e8:
        rows = max(1, int(2e8 // L))
    k = rng.randint(1, min(L, 128))
    dtype = rng.choice([torch.float32, torch.bfloat16, torch.float16])
    change = rng.choice([{}, {"filter": 0}, {"block": rng.choice([64, 128, 256, 1024, 2048]),
                                             "groups": rng.choice([32, 64, 128, 256]), "cap": rng.choice([32, 64, 512]),
                                             "filter_warps": rng.choice([0, 1, 2, 4, 8]), "bits": rng.choice([4, 8])}])
    kernels.TOPK_CONFIG.update(change)
    if kernels._topk_filter_shape(L, k) is None and L > kernels.TOPK_MAX_L:  # the register kernel does not take it
        kernels.TOPK_CONFIG.clear()
        kernels.TOPK_CONFIG.update(keep)
        change = {}
    x = torch.randn(rows, L, device=dev, generator=g)
    x[0, : min(L, 10)] = 1.5
    if rows > 1:
        x[1] = 0.0
    if rows > 2:
        x[2] = torch.arange(L, device=dev, dtype=torch.float32)
        x[2, 0], x[2, -1] = -0.0, float("inf")
    if rows > 3:
        x[3, : L // 2] = float("-inf")
    x = x.to(dtype)
    path = "filter" if kernels._topk_filter_shape(L, k) is not None else "register"
    what = f"case {case}: {rows} x {L} {str(dtype)[6:]} k={k} {change or 'defaults'} ({path})"
    got = kernels.topk_indices(x, k, sorted=False, impl="triton")
    again = kernels.topk_indices(x, k, sorted=False, impl="triton")
    want = x.float().topk(k, dim=-1).values
    ok = (torch.equal(x.gather(-1, got).float().sort(-1, descending=True).values, want)
          and bool((got.diff(dim=-1) > 0).all()) and torch.equal(got, again))
    if ok and path == "filter" and L <= kernels.TOPK_MAX_L:  # the same positions as the register kernel's
        kernels.TOPK_CONFIG["filter"] = 0
        ok = torch.equal(got, kernels.topk_indices(x, k, sorted=False, impl="triton"))
    print(f"{what}: {'ok' if ok else 'FAILED'}", flush=True)
    if not ok:
        sys.exit(f"check_topk_gpu: {what} differs from torch.topk")
    kernels.TOPK_CONFIG.clear()
    kernels.TOPK_CONFIG.update(keep)
# the filter kernel with exactly `cap` survivors, the largest in the last slot (as in the tests: 256 keys at or above
# the lower bound 5.0, the 40th largest of the maxima of 128 groups of 4 columns)
x = torch.randn(1000, 1100, device=dev, generator=g) * 0.5
x[:, :256] = 5.0
x[:, 255] = 6.0
kernels.TOPK_CONFIG.update(block=512, groups=128, cap=256)
got = kernels.topk_indices(x, 40, sorted=False, impl="triton")
kernels.TOPK_CONFIG.update(keep)
if not torch.equal(got, torch.tensor([*range(39), 255], device=dev).expand(1000, 40)):
    sys.exit("check_topk_gpu: cap survivors differ")
print(f"all {CASES} cases and the cap case ok", flush=True)
