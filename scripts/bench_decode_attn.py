"""Decode attention alone, at the 1.6B models' shape (16 query heads of 128, a 2048-token cache + 1):
kernels.decode_attention (with a sweep of its launch parameters) against F.scaled_dot_product_attention
(masked, as model.py's "sdpa" decode path calls it, GQA folded into query rows), each replayed from a CUDA
graph (CUDA events, median). Bytes = the K and V cache rows the step must read (B x KV x S x D x 2 x 2);
the floor is those bytes over the copy bandwidth measured in the same run.

    PYTHONPATH=. python scripts/bench_decode_attn.py [--sweep] [--batches=1,8,64,512] [--kv=2,16]

On a CPU it checks function only: tiny shapes, the reference path, no timing.
"""
import itertools
import sys

import torch
import torch.nn.functional as F

import bench
import kernels

dev = "cuda" if torch.cuda.is_available() else "cpu"
arg = lambda name, default: next((a.split("=", 1)[1] for a in sys.argv if a.startswith(f"--{name}=")), default)
BATCHES = [int(b) for b in arg("batches", "1,8,64,512").split(",")]
KVS = [int(k) for k in arg("kv", "2,16").split(",")]
SWEEP = "--sweep" in sys.argv
H, D, S = (16, 128, 2049) if dev == "cuda" else (4, 16, 33)
if dev == "cpu":
    BATCHES, KVS = [2], [2]


def time_graph(fn, iters: int = 50) -> float:
    """Milliseconds per call of fn replayed from a CUDA graph (median of iters single replays)."""
    return bench._time_cuda(bench._cuda_graph(fn), iters)


def sdpa(q, k, v, pos):
    """model.py's "sdpa" decode path: GQA as rep query rows per KV head, a boolean mask up to pos."""
    B, Hq, T, Dh = q.shape
    rep = Hq // k.shape[1]
    mask = (torch.arange(k.shape[2], device=q.device) <= pos[:, None])[None, None]  # (1, 1, T, S)
    q = q.reshape(B, k.shape[1], rep * T, Dh)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.repeat(1, 1, rep, 1)).view(B, Hq, T, Dh)


copy_bw = None
if dev == "cuda":
    copy_bw = bench._copy_bandwidth(dev)  # the same measurement as bench.py's decode floors
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; copy bandwidth {copy_bw / 1e12:.2f} TB/s")
dtype = torch.bfloat16 if dev == "cuda" else torch.float32
base = dict(kernels.DECODE_ATTN_CONFIG)
with torch.no_grad():
    for KV, B in itertools.product(KVS, BATCHES):
        q = torch.randn(B, H, 1, D, device=dev, dtype=dtype)
        k = torch.randn(B, KV, S, D, device=dev, dtype=dtype)
        v = torch.randn(B, KV, S, D, device=dev, dtype=dtype)
        pos = torch.tensor([S - 1], device=dev)
        ref = kernels.decode_attention_reference(q, k, v, pos)
        out = kernels.decode_attention(q, k, v, pos)
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        assert err < 1e-2, f"decode_attention wrong: relative error {err:.2e}"
        if dev == "cpu":
            print(f"cpu B={B} KV={KV}: decode_attention matches the reference (rel. err {err:.1e})")
            continue
        nbytes = 2 * B * KV * S * D * q.element_size()
        floor = nbytes / copy_bw * 1e3
        line = lambda name, ms: f"  {name:42s} {ms * 1e3:8.1f} us  {nbytes / ms / 1e9:6.2f} TB/s  x{ms / floor:.2f} floor"
        print(f"B={B} KV={KV} rep={H // KV}: reads {nbytes / 1e6:.1f} MB, floor {floor * 1e3:.1f} us, "
              f"splits {kernels._decode_attn_splits(B, KV, S, base['block_s'])}")
        print(line("sdpa (cuDNN / efficient, masked)", time_graph(lambda: sdpa(q, k, v, pos))))
        print(line(f"triton {base}", time_graph(lambda: kernels.decode_attention(q, k, v, pos))))
        if SWEEP:
            best = None
            for bs, warps, stages, pps in itertools.product((32, 64, 128), (4, 8), (2, 3, 4), (2, 4, 8)):
                kernels.DECODE_ATTN_CONFIG.update(block_s=bs, warps=warps, stages=stages, programs_per_sm=pps)
                try:
                    ms = time_graph(lambda: kernels.decode_attention(q, k, v, pos), 20)
                except Exception as e:  # e.g. out of shared memory for this tile
                    print(f"    block_s={bs} warps={warps} stages={stages} pps={pps}: failed ({type(e).__name__})")
                    continue
                if best is None or ms < best[0]:
                    best = (ms, dict(block_s=bs, warps=warps, stages=stages, programs_per_sm=pps))
            print(line(f"triton best {best[1]}", best[0]))
            kernels.DECODE_ATTN_CONFIG.update(base)
