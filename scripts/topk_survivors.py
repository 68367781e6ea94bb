"""How many keys survive the top-k filter kernel's lower bound on a memory layer's real selection rows (CPU, no
GPU needed: PYTHONPATH=. python scripts/topk_survivors.py [CONFIG] [--tokens=2048] ["--shapes=512:256,128:128"]).

Builds one memory layer of CONFIG (default config/ultramem_151m.py) at its initialisation, runs it on standard normal
inputs under bf16 autocast with torch.topk, records every top-k call's rows (TDQKR: the rank-1 pre-selections and the
m x m candidate grid), and computes for each (block, groups) of --shapes what kernels._topk_filter_kernel computes:
the lower bound (the k-th largest of the maxima of `groups` runs of the row's block columns) and the number of keys
at or above it. Prints the mean, 99th percentile and largest count, and the share of rows above 256 and 512 (the
cap: rows above it take the kernel's slower whole-row selection). docs/KERNELS.md, session 17.
"""
import sys

import torch

import kernels
import memory
import model

path = next((a for a in sys.argv[1:] if not a.startswith("--")), "config/ultramem_151m.py")
T = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--tokens=")), 2048)
SPEC = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--shapes=")), "512:256,512:128,128:128")
SHAPES = [tuple(map(int, s.split(":"))) for s in SPEC.split(",")]
cfg = {}
exec(open(path).read(), {}, cfg)
c = model.GPTConfig(**{k: v for k, v in cfg.items() if k in model.GPTConfig.__dataclass_fields__})
c.mem_topk = "torch"
torch.manual_seed(0)
layer = memory.MemoryLayer(c).train()
calls, topk = [], kernels.topk_indices


def record(x, k, sorted=True, impl="auto"):
    calls.append((x.detach().clone(), k))
    return topk(x, k, sorted, impl)


kernels.topk_indices = record
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    layer(torch.randn(1, T, c.n_embd))


def keys(x):  # _topk_keys: order-preserving unsigned keys, the top 16 bits for bf16
    b = x.float().view(torch.int32).long() & 0xFFFFFFFF
    key = torch.where(b >> 31 == 1, ~b & 0xFFFFFFFF, b | 0x80000000)
    return key >> 16 if x.dtype == torch.bfloat16 else key


print(f"{path}: one memory layer at init, {T} tokens", flush=True)
for x, k in calls:
    L = x.shape[-1]
    x = x.reshape(-1, L)
    key = keys(x)
    for block, groups in SHAPES:
        cols = torch.nn.functional.pad(key, (0, (-L) % block)).view(len(x), -1, block).amax(1)  # column maxima
        bound = cols.view(len(x), groups, block // groups).amax(2).topk(k, dim=1).values[:, -1:]
        n = (key >= bound).sum(1).float()
        print(f"{tuple(x.shape)} {x.dtype} k={k}, block {block}, groups {groups}: survivors mean {n.mean():.0f}, "
              f"p99 {n.quantile(.99):.0f}, max {n.max():.0f}; rows above 256: {(n > 256).float().mean():.2%}, "
              f"above 512: {(n > 512).float().mean():.2%}", flush=True)
