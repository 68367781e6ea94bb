"""How fast can one launch read B bytes on this GPU, for the sizes of a decode step? (run from the repo root:
PYTHONPATH=. python scripts/bench_read_sizes.py)

The MoE decode target (issue 5) measures a layer against bytes / the read rate of a 2 GiB reduction. At 1 token
the layer reads 79.6 MB (two experts of MoE-1.6B), in two projections of 39.8 MB. This times plain reads of such
sizes, replayed from a CUDA graph over 8 buffers in turn (so that the 50 MB L2 does not hold them), as
bench_moe.py times the layer:
  - torch: x.sum(dtype=float32), one launch per buffer;
  - triton: a streaming read, P programs each summing a contiguous share with BLOCK-element loads (swept over
    programs per SM and BLOCK; the best printed), one launch per buffer, and two launches per buffer of half the
    bytes each (the MoE layer's fc and proj).
"""
import itertools

import torch
import triton
import triton.language as tl

from bench import replay_seconds

dev = "cuda"
SMS = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 132
BUFS = 8


@triton.jit
def _read_kernel(x_ptr, out_ptr, n, per_prog, BLOCK: tl.constexpr):
    # program p sums x[p * per_prog : (p + 1) * per_prog] (fp32), BLOCK elements a step, and stores the sum
    p = tl.program_id(0)
    start = p.to(tl.int64) * per_prog
    end = tl.minimum(start + per_prog, n)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(start, end, BLOCK):
        offs = i + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < end, other=0.0).to(tl.float32)
    tl.store(out_ptr + p, tl.sum(acc, axis=0))


def time_us(fn, iters: int = 50) -> float:
    return replay_seconds(fn, iters) * 1e6


def triton_read(x: torch.Tensor, out: torch.Tensor, programs: int, block: int, stages: int, warps: int) -> None:
    per = triton.cdiv(triton.cdiv(x.numel(), programs), block) * block
    _read_kernel[(triton.cdiv(x.numel(), per),)](x, out, x.numel(), per, BLOCK=block, num_stages=stages,
                                                 num_warps=warps)


def main():
    big = torch.randn(2**30, device=dev, dtype=torch.bfloat16)
    rate = big.numel() * 2 / (time_us(lambda: big.sum(dtype=torch.float32), iters=10) / 1e6)
    print(f"device {torch.cuda.get_device_name()}, {SMS} SMs, torch {torch.__version__}, triton {triton.__version__}; "
          f"read rate of a 2 GiB reduction {rate / 1e12:.2f} TB/s")
    del big
    out = torch.empty(1 << 16, device=dev, dtype=torch.float32)
    grid = list(itertools.product((1, 2, 4, 8), (1024, 2048, 4096), (1, 3), (4, 8)))  # programs/SM, BLOCK, stages, warps
    for mb in (19.9, 39.8, 79.6, 159.2):
        n = int(mb * 1e6 / 2)
        xs = [torch.randn(n, device=dev, dtype=torch.bfloat16) for _ in range(BUFS)]
        floor = mb * 1e6 / rate * 1e6
        t_torch = time_us(lambda: [x.sum(dtype=torch.float32) for x in xs]) / BUFS
        best1 = min((time_us(lambda c=c: [triton_read(x, out, c[0] * SMS, *c[1:]) for x in xs]) / BUFS, c) for c in grid)
        halves = [(x[: n // 2], x[n // 2:]) for x in xs]
        best2 = min((time_us(lambda c=c: [triton_read(h, out, c[0] * SMS, *c[1:]) for pair in halves for h in pair])
                     / BUFS, c) for c in grid)
        print(f"{mb:6.1f} MB: floor {floor:6.1f} us; torch sum {t_torch:6.1f} us ({t_torch / floor:.2f}x); triton one launch "
              f"{best1[0]:6.1f} us ({best1[0] / floor:.2f}x, programs/SM, BLOCK, stages, warps = {best1[1]}); two launches of "
              f"half {best2[0]:6.1f} us ({best2[0] / floor:.2f}x, {best2[1]})", flush=True)
        del xs, halves


if __name__ == "__main__":
    main()
