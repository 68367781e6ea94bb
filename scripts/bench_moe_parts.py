"""Where does the fused MoE decode layer lose its streaming rate at 1 token? (run from the repo root:
PYTHONPATH=. python scripts/bench_moe_parts.py [--sections=plain,layout,finish,real,layer] [--quick])

At 1 token kernels.moe_decode's fc and proj launches each read 39.8 MB (two experts' halves of MoE-1.6B-2in34) in
about 15 us, 2.7 TB/s, where a plain contiguous read of the same bytes takes 11.5 us (scripts/bench_read_sizes.py,
docs/BENCHMARKS.md, session 13). This times, on the same bytes and replayed the same way (a CUDA graph over 8
weight buffers, so that the 50 MB L2 holds none of them between replays), kernels that add one part of the real
kernel at a time:
  read   : each program streams its (K split, BLOCK_N columns) tile of both experts' weights and sums it
           elementwise (no tensor cores), then stores a partial row: the access pattern alone;
  dot    : the same, but multiplies a 16-row activation tile (one real row) into it with tl.dot, as the real kernel;
  route  : dot, with the expert taken from the logits by the real routing prologue (kernels._moe_slots);
each in the model's layout (w (E, K, N), N contiguous: a program reads BLOCK_N x 2 bytes per row, at a row stride of
N x 2 bytes) and in the transposed layout (w (E, N, K), K contiguous: BLOCK_K x 2 bytes a row, each program walking
its rows along K). The sections:
  plain  : the plain contiguous read (scripts/bench_read_sizes.py's kernel) of 39.8 MB;
  layout : read, dot and route in both layouts;
  finish : route (model layout), then with the last-arriver finishing step (an arrival counter per column tile, the
           last program sums the tile's partials) or with atomic adds of the partials into the output instead;
  real   : moe_decode's own logits and fc launches on the synthetic weights, against the synthetic fc after the
           same logits launch;
  layer  : the real layer at 1 token with kernels.MOE_DECODE_CONFIG, its launches added one by one.
Every synthetic variant is swept over BLOCK_N, BLOCK_K, warps and programs per SM (the K splits follow as in
moe_decode: kernels._k_splits), stages 4; the best of each is printed with its configuration, for fc's shape (K 2048,
N 4864) and proj's (K 4864, N 2048). Each variant's sums are checked against torch before it is timed.
"""
import itertools
import sys

import torch
import triton
import triton.language as tl

import kernels
from kernels import _moe_slots
from bench_read_sizes import _read_kernel, time_us  # the plain streaming read; CUDA-graph replay timing

dev = "cuda"
SMS = torch.cuda.get_device_properties(0).multi_processor_count if torch.cuda.is_available() else 132
BUFS, E, TOP_K, D, FH = 8, 34, 2, 2048, 4864
QUICK = "--quick" in sys.argv  # two configurations per variant (a smoke test)
# --sections=plain,layout,finish,real,layer (default all): which parts to time (see above)
SECTIONS = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("--sections=")),
                ["plain", "layout", "finish", "real", "layer"])


@triton.jit
def _part_kernel(x_ptr, w_ptr, logits_ptr, part_ptr, cnt_ptr, out_ptr, N, K, E, k_per_split, n_splits, swg, swk, swn,
                 DOT: tl.constexpr, ROUTE: tl.constexpr, FIN: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr):
    # program (expert slot j of 2, BLOCK_N columns, K split): partial sums over its K split of w[e][:, cols]
    # (read: summed over K; dot: x[0] @ w[e][:, cols]) into part[split, j, cols], fp32. FIN 1: then the program
    # that arrives last on its column tile (2 x n_splits arrivals, counted in cnt[nt]) sums the tile's partials into
    # out[cols] and re-zeroes the counter (moe_decode's finishing step); FIN 2: atomic adds into out[cols] instead
    j = tl.program_id(0)
    nt = tl.program_id(1)
    split = tl.program_id(2)
    rows = tl.arange(0, BLOCK_M)
    if ROUTE:
        slot_e, _ = _moe_slots(logits_ptr, 2, E, 2, False, BLOCK_M, BLOCK_E)
        e = tl.sum(tl.where(rows == j, slot_e, 0), axis=0)
    else:
        e = j
    cols = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = cols < N
    k_start = split * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    w_e = w_ptr + e.to(tl.int64) * swg + cols[None, :].to(tl.int64) * swn
    if DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < k_end
        b = tl.load(w_e + ks.to(tl.int64)[:, None] * swk, mask=kmask[:, None] & nmask[None, :], other=0.0)
        if DOT:
            a = tl.load(x_ptr + rows[:, None] * K + ks[None, :], mask=(rows[:, None] < 1) & kmask[None, :], other=0.0)
            acc = tl.dot(a, b, acc)
        else:
            acc += b.to(tl.float32)
    res = tl.sum(acc, axis=0)
    if FIN == 2:
        tl.atomic_add(out_ptr + cols, res, mask=nmask, sem="relaxed")
    else:
        tl.store(part_ptr + (split * 2 + j) * N + cols, res, mask=nmask)
    if FIN == 1:
        tl.debug_barrier()
        old = tl.atomic_add(cnt_ptr + nt, 1)
        if old == 2 * n_splits - 1:
            tl.debug_barrier()
            tot = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for s in range(0, 2 * n_splits):
                tot += tl.load(part_ptr + s * N + cols, mask=nmask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptr + cols, tot, mask=nmask)
            tl.store(cnt_ptr + nt, 0)


def launch(x, w, logits, part, cnt, out, K, N, dot, route, fin, bn, bk, warps, pps):
    splits, per = kernels._k_splits(2, N, K, bn, bk, pps * SMS, 2)
    swg, swk, swn = w.stride()  # (2, K, N), N- or K-contiguous
    _part_kernel[(2, triton.cdiv(N, bn), splits)](x, w, logits, part, cnt, out, N, K, E, per, splits, swg, swk, swn,
                                                  DOT=dot, ROUTE=route, FIN=fin, BLOCK_M=16, BLOCK_N=bn, BLOCK_K=bk,
                                                  BLOCK_E=64, num_warps=warps, num_stages=4)
    return splits


def main():
    big = torch.randn(2**30, device=dev, dtype=torch.bfloat16)
    rate = big.numel() * 2 / (time_us(lambda: big.sum(dtype=torch.float32), iters=10) / 1e6)
    print(f"device {torch.cuda.get_device_name()}, {SMS} SMs, torch {torch.__version__}, triton {triton.__version__}; "
          f"read rate of a 2 GiB reduction {rate / 1e12:.2f} TB/s; sections {','.join(SECTIONS)}", flush=True)
    del big
    floor = 2 * D * FH * 2 / rate * 1e6
    print(f"39.8 MB (two experts' halves of MoE-1.6B): floor {floor:.1f} us", flush=True)

    if "plain" in SECTIONS:  # the plain read, around the best of bench_read_sizes.py's grid
        flat = [torch.randn(2 * D * FH, device=dev, dtype=torch.bfloat16) for _ in range(BUFS)]
        sink = torch.empty(1 << 16, device=dev, dtype=torch.float32)

        def plain(programs, block, warps):
            n = flat[0].numel()
            per = triton.cdiv(triton.cdiv(n, programs), block) * block
            for f in flat:
                _read_kernel[(triton.cdiv(n, per),)](f, sink, n, per, BLOCK=block, num_stages=3, num_warps=warps)
        best = min((time_us(lambda c=c: plain(c[0] * SMS, c[1], c[2])) / BUFS, c)
                   for c in itertools.product((4, 8, 16), (1024, 2048), (4, 8)))
        print(f"plain contiguous read: {best[0]:.1f} us ({best[0] / floor:.2f}x; programs/SM, BLOCK, warps = {best[1]})",
              flush=True)
        del flat

    x = torch.randn(16, max(D, FH), device=dev, dtype=torch.bfloat16)
    logits = torch.full((1, E), -1.0, device=dev)
    logits[0, 0], logits[0, 1] = 3.0, 2.0  # experts 0 and 1 are the token's top-2
    part = torch.empty(64 * 2 * max(D, FH), device=dev, dtype=torch.float32)
    cnt = torch.zeros(1024, device=dev, dtype=torch.int32)
    out = torch.zeros(max(D, FH), device=dev, dtype=torch.float32)
    grid = list(itertools.product((32, 64, 128, 256), (64, 128), (4, 8), (2, 4)))  # BLOCK_N, BLOCK_K, warps, pps
    if QUICK:
        grid = [(64, 64, 4, 2), (32, 64, 4, 2)]
    # (K-contiguous layout, dot, route, finish); "finish" starts from route in the model's layout, which "layout"
    # times already when both run
    variants = []
    if "layout" in SECTIONS:
        variants += [(t, d, r, 0) for t in (False, True) for d, r in ((False, False), (True, False), (True, True))]
    if "finish" in SECTIONS:
        variants += [(False, True, True, f) for f in ((1, 2) if "layout" in SECTIONS else (0, 1, 2))]
    for name, K, N in (("fc", D, FH), ("proj", FH, D)):
        for trans in (False, True):
            todo = [v for v in variants if v[0] == trans]
            if not todo:
                continue
            # 8 weight buffers of two experts each: (2, K, N), or (2, N, K) viewed as (2, K, N)
            ws = [torch.randn(2, N, K, device=dev, dtype=torch.bfloat16).transpose(1, 2) if trans
                  else torch.randn(2, K, N, device=dev, dtype=torch.bfloat16) for _ in range(BUFS)]
            ref_read = ws[0].float().sum(dim=1)  # (2, N)
            ref_dot = torch.einsum("k,ekn->en", x[0, :K].float(), ws[0].float())
            for _, dot, route, fin in todo:
                tag = (f"{name} {'K-contiguous' if trans else 'N-contiguous'} "
                       f"{'route' if route else 'dot' if dot else 'read'}{['', ' + last-arriver sum', ' + atomic adds'][fin]}")
                results = []
                for bn, bk, warps, pps in grid:
                    part.zero_()
                    out.zero_()
                    splits = launch(x, ws[0], logits, part, cnt, out, K, N, dot, route, fin, bn, bk, warps, pps)
                    ref = ref_dot if dot else ref_read
                    got = out[:N] if fin else part[: splits * 2 * N].view(splits, 2, N).sum(0)
                    if fin:
                        ref = ref.sum(0)
                    err = ((got - ref).abs().max() / ref.abs().max()).item()
                    if err > 1e-2:
                        sys.exit(f"{tag} {bn, bk, warps, pps}: wrong sums, relative error {err:.2e}")
                    t = time_us(lambda: [launch(x, w, logits, part, cnt, out, K, N, dot, route, fin, bn, bk, warps, pps)
                                         for w in ws]) / BUFS
                    results.append((t, (bn, bk, warps, pps, splits)))
                results.sort()
                top = ", ".join(f"{t:.1f} us {c}" for t, c in results[:3])
                one = next((f"{t:.1f} us {c}" for t, c in results if c[4] == 1), "-")
                print(f"{tag}: best {results[0][0]:.1f} us ({results[0][0] / floor:.2f}x floor); top 3 (BLOCK_N, BLOCK_K, "
                      f"warps, programs/SM, splits): {top}; best unsplit: {one}", flush=True)
            del ws

    if "real" in SECTIONS:
        # kernels.moe_decode's own logits and fc launches on the synthetic buffers above (2 experts, both chosen),
        # against the synthetic kernel (route, with and without the last-arriver sum) after the same logits launch:
        # the difference is what the real fc does beyond the synthetic one
        ws = [torch.randn(2, D, FH, device=dev, dtype=torch.bfloat16) for _ in range(BUFS)]
        wp = torch.empty(2, FH, D, device=dev, dtype=torch.bfloat16)  # shapes only: proj is not launched
        xt = torch.randn(1, D, device=dev, dtype=torch.bfloat16)
        rw = torch.zeros(2, D, device=dev, dtype=torch.bfloat16)  # equal logits: both experts chosen
        runs = [kernels._moe_decode_launches(xt, rw, w, wp, TOP_K, False) for w in ws]
        logits_only = time_us(lambda: [ls[0]() for _, ls in runs]) / BUFS
        real = time_us(lambda: [f() for _, ls in runs for f in ls[:2]]) / BUFS
        print(f"real launches: logits {logits_only:.1f} us; logits + fc {real:.1f} us (fc {real - logits_only:.1f})",
              flush=True)
        for fin in (0, 1):
            for bn, bk, warps, pps in [(64, 64, 4, 2)]:
                t = time_us(lambda: [(ls[0](), launch(xt, w, logits, part, cnt, out, D, FH, True, True, fin, bn, bk,
                                                      warps, pps)) for (_, ls), w in zip(runs, ws)]) / BUFS
                print(f"logits + synthetic fc {['route', 'route + last-arriver sum'][fin]} {bn, bk, warps, pps}: "
                      f"{t:.1f} us (the synthetic {t - logits_only:.1f})", flush=True)
        del ws

    if "layer" in SECTIONS:
        # the real layer at 1 token with kernels.MOE_DECODE_CONFIG, its launches added one by one (each prefix starts
        # with the logits launch, which zeroes what fc and proj need zeroed), 8 layers per graph
        with torch.device(dev):
            layers = [(torch.randn(E, D, dtype=torch.bfloat16) / D**0.5,
                       torch.randn(E, D, FH, dtype=torch.bfloat16) * 0.02,
                       torch.randn(E, FH, D, dtype=torch.bfloat16) * 0.02) for _ in range(BUFS)]
        xt = torch.randn(1, D, device=dev, dtype=torch.bfloat16)
        runs = [kernels._moe_decode_launches(xt, rw, wf, wp, TOP_K, False)[1] for rw, wf, wp in layers]
        ts = [time_us(lambda: [f() for ls in runs for f in ls[:n]]) / BUFS for n in (1, 2, 3)]
        print(f"moe_decode at 1 token (defaults): logits {ts[0]:.1f} us, + fc {ts[1]:.1f}, + proj {ts[2]:.1f} us "
              f"({ts[2] / (2 * floor):.2f}x the floor of both projections, {2 * floor:.1f} us)", flush=True)


if __name__ == "__main__":
    main()
