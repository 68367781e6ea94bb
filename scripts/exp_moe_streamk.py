"""Experiment (session 21, issue 5): moe_decode's fc and proj as stream-K launches, whose programs take equal shares
of the layer's K steps. Run from the repo root: PYTHONPATH=. python scripts/exp_moe_streamk.py

Why: at 1 token the split-K launches have 304 (fc) and 320 (proj) programs of equal work for 132 SMs, so some SMs
run 3 or 4 programs and others 2 (scripts/exp_moe_pdl.py --diag: %smid per program, docs/runs/2026-12-01_s21/1):
fc's K loops take 9.3 us on SMs with 2 programs, 9.8 with 3 and 10.4 with 4, and each launch ends with its slowest
SM. Here a launch has a multiple of the SM count of programs (STREAMK_PER_SM per SM) and program p takes the K
steps [p * T / P, (p + 1) * T / P) of the T = U x n_tiles x S steps of its launch (U distinct experts chosen, n_tiles
column tiles, S K steps each): every SM streams the same bytes, within a step. A program's range crosses one
or two (expert, column tile) units; each piece is a segment with its own K loop (LOOP 0: a while loop over the
segments; LOOP 2: MAX_SEGS segments unrolled, each K loop at the top level) or the K steps run in one flattened loop
that finishes a unit where it ends (LOOP 1, as Triton's persistent matmul tutorial).
Result (docs/runs/2026-12-01_s21/3_exp_streamk.log, 4_exp_moe_streamk.log): slower than the split-K launches in every
form, at 1, 2 and 4 tokens; not taken (docs/BENCHMARKS.md, MoE, session 21).
  fc:   each segment stores its fp32 partial in its unit's slot c (its program's index among the unit's
        programs), counts its arrival, and the last of the unit's n_c arrivals sums the slots in order (so h does
        not depend on the arrival order), applies GeLU and stores h.
  proj: each segment adds its partial, times the slots' top-k weights, into the zeroed fp32 output by atomic adds.
The logits and cast launches are kernels.py's, the chain PDL as kernels.moe_decode runs it at 1 token. Variants:
fc / proj "split" (kernels.py's split-K launch) or "sk"; per_sm; loop.
"""
import sys

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

import kernels
from bench import replay_seconds
from exp_moe_pdl import read_rate, weights
from kernels import _moe_slots

D, E, Fh, K = 2048, 34, 4864, 2
LAYERS = 8
dev = "cuda"


@triton.jit
def _sk_kernel(x_ptr, w_ptr, logits_ptr, part_ptr, cnt_ptr, out_ptr, M, N, K, E, sxm, sxk, swg, swk, swn,
               TOP_K: tl.constexpr, RENORM: tl.constexpr, FC: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr, C_MAX: tl.constexpr,
               PDL: tl.constexpr, LOOP: tl.constexpr, MAX_SEGS: tl.constexpr = 1):
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    if PDL and FC:
        gdc_wait()
    rows = tl.arange(0, BLOCK_M)
    slot_e, slot_w = _moe_slots(logits_ptr, M, E, TOP_K, RENORM, BLOCK_M, BLOCK_E)
    earlier = (slot_e[:, None] == slot_e[None, :]) & (rows[None, :] < rows[:, None])
    first = (tl.sum(earlier.to(tl.int32), axis=1) == 0) & (slot_e >= 0)  # the first slot of its expert
    rank = tl.cumsum(first.to(tl.int32), axis=0) - 1  # distinct expert d is the first slot of rank d
    U = tl.sum(first.to(tl.int32), axis=0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    S = tl.cdiv(K, BLOCK_K)
    total = U * n_tiles * S
    start = pid * total // P
    end = (pid + 1) * total // P
    x_rows = x_ptr + (rows // (TOP_K if FC else 1)).to(tl.int64)[:, None] * sxm
    kk = tl.arange(0, BLOCK_K)
    if PDL and not FC:
        gdc_launch_dependents()
        gdc_wait()
    if LOOP == 0:
        cur = start
        while cur < end:
            u = cur // S
            s0 = cur - u * S
            s1 = tl.minimum(S, s0 + end - cur)
            acc, same, cols, nmask = _sk_segment(x_rows, w_ptr, slot_e, first, rank, u, s0, s1, n_tiles, N, K, sxk,
                                                 swg, swk, swn, BLOCK_M, BLOCK_N, BLOCK_K)
            cur = u * S + s1
            if PDL and FC and cur >= end:
                gdc_launch_dependents()
            _sk_finish(acc, u, pid, P, total, S, rows, cols, nmask, same, slot_w, part_ptr, cnt_ptr, out_ptr, M, N,
                       TOP_K, FC, BLOCK_M, BLOCK_N, C_MAX)
    elif LOOP == 2:  # MAX_SEGS segments unrolled, each K loop at the top level (zero-trip where none is left)
        cur = start
        for _seg in tl.static_range(MAX_SEGS):
            live = cur < end
            u = cur // S
            s0 = cur - u * S
            s1 = tl.where(live, tl.minimum(S, s0 + end - cur), s0)
            acc, same, cols, nmask = _sk_segment(x_rows, w_ptr, slot_e, first, rank, u, s0, s1, n_tiles, N, K, sxk,
                                                 swg, swk, swn, BLOCK_M, BLOCK_N, BLOCK_K)
            cur = tl.where(live, u * S + s1, cur)
            if live:
                if PDL and FC and cur >= end:
                    gdc_launch_dependents()
                _sk_finish(acc, u, pid, P, total, S, rows, cols, nmask, same, slot_w, part_ptr, cnt_ptr, out_ptr, M,
                           N, TOP_K, FC, BLOCK_M, BLOCK_N, C_MAX)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(start, end):
            u = step // S
            s = step - u * S
            e, same, cols, nmask = _sk_unit(slot_e, first, rank, u, n_tiles, N, BLOCK_N)
            ks = s * BLOCK_K + kk
            kmask = ks < K
            a = tl.load(x_rows + ks[None, :] * sxk, mask=same[:, None] & kmask[None, :], other=0.0)
            b = tl.load(w_ptr + e.to(tl.int64) * swg + cols[None, :] * swn + ks.to(tl.int64)[:, None] * swk,
                        mask=kmask[:, None] & nmask[None, :], other=0.0)
            acc = tl.dot(a, b, acc)
            if (s == S - 1) | (step == end - 1):
                if PDL and FC and step == end - 1:
                    gdc_launch_dependents()
                _sk_finish(acc, u, pid, P, total, S, rows, cols, nmask, same, slot_w, part_ptr, cnt_ptr, out_ptr, M,
                           N, TOP_K, FC, BLOCK_M, BLOCK_N, C_MAX)
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)


@triton.jit
def _sk_unit(slot_e, first, rank, u, n_tiles, N, BLOCK_N: tl.constexpr):
    # unit u is (distinct expert u // n_tiles, column tile u % n_tiles): the expert, its rows (the slots that chose
    # it), the tile's columns and their mask
    d = u // n_tiles
    nt = u - d * n_tiles
    e = tl.sum(tl.where(first & (rank == d), slot_e, 0), axis=0)
    cols = nt * BLOCK_N + tl.arange(0, BLOCK_N)
    return e, slot_e == e, cols, cols < N


@triton.jit
def _sk_segment(x_rows, w_ptr, slot_e, first, rank, u, s0, s1, n_tiles, N, K, sxk, swg, swk, swn,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # unit u's K steps [s0, s1). Returns the fp32 partial and the unit's rows, columns and column mask
    e, same, cols, nmask = _sk_unit(slot_e, first, rank, u, n_tiles, N, BLOCK_N)
    w_e = w_ptr + e.to(tl.int64) * swg + cols[None, :] * swn
    kk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in range(s0, s1):
        ks = s * BLOCK_K + kk
        kmask = ks < K
        a = tl.load(x_rows + ks[None, :] * sxk, mask=same[:, None] & kmask[None, :], other=0.0)
        b = tl.load(w_e + ks.to(tl.int64)[:, None] * swk, mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = tl.dot(a, b, acc)
    return acc, same, cols, nmask


@triton.jit
def _sk_finish(acc, u, pid, P, total, S, rows, cols, nmask, same, slot_w, part_ptr, cnt_ptr, out_ptr, M, N,
               TOP_K: tl.constexpr, FC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               C_MAX: tl.constexpr):
    omask = same[:, None] & nmask[None, :]
    if FC:
        # the unit's programs: the owners of its first and last steps (owner(s) = ((s + 1) P - 1) // total) and those
        # between; this segment's slot is its program's index among them
        p0 = ((u * S + 1) * P - 1) // total
        p1 = ((u * S + S) * P - 1) // total
        c = pid - p0
        bn = tl.arange(0, BLOCK_N)
        part = part_ptr + ((u * C_MAX).to(tl.int64) * M + rows.to(tl.int64))[:, None] * BLOCK_N + bn[None, :]
        tl.store(part + c * M * BLOCK_N, acc, mask=omask)
        tl.debug_barrier()
        old = tl.atomic_add(cnt_ptr + u, 1)
        tl.debug_barrier()
        if old == p1 - p0:
            hsum = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for c2 in range(0, p1 - p0 + 1):
                hsum += tl.load(part + c2 * M * BLOCK_N, mask=omask, other=0.0, cache_modifier=".cg")
            h = 0.5 * hsum * (1.0 + tl.math.erf(hsum * 0.7071067811865476))
            tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], h.to(out_ptr.dtype.element_ty),
                     mask=omask)
    else:
        tok = rows // TOP_K
        tl.atomic_add(out_ptr + tok.to(tl.int64)[:, None] * N + cols[None, :], acc * slot_w[:, None], mask=omask,
                      sem="relaxed")


VARIANT = {"fc": "split", "proj": "split", "per_sm": 2, "loop": 0, "pdl": 1}


def layer(x, rw, w_fc, w_proj, v: dict) -> torch.Tensor:
    """The layer at N tokens (bf16 out), kernels.moe_decode's PDL chain with fc and / or proj as stream-K launches."""
    v = {**VARIANT, **v}
    N, _ = x.shape
    M = N * K
    cfg = kernels.MOE_DECODE_CONFIG
    pdl = bool(v["pdl"])
    t_fc, t_pj = triton.cdiv(Fh, cfg["fc_block_n"]), triton.cdiv(D, cfg["block_n"])
    S_fc, S_pj = triton.cdiv(D, cfg["block_k"]), triton.cdiv(Fh, cfg["block_k"])
    P = v["per_sm"] * cfg["sms"]
    s_fc, per_fc = kernels._moe_decode_splits(M, Fh, D, cfg["fc_block_n"], cfg["fc_splits"])
    s_pj, per_pj = kernels._moe_decode_splits(M, D, Fh, cfg["block_n"])
    sk_fc, sk_pj = v["fc"] == "sk", v["proj"] == "sk"
    P_fc, P_pj = min(P, K * t_fc * S_fc), min(P, K * t_pj * S_pj)
    c_max = triton.cdiv(S_fc, (K * t_fc * S_fc) // P_fc) + 1  # contributors per fc unit, at the fewest experts (K)
    out = torch.empty(N, D, dtype=torch.float32, device=dev)
    logits = torch.empty(N, E, dtype=torch.float32, device=dev)
    n_cfc = M * t_fc if (sk_fc or s_fc > 1) else 0
    cnt = torch.empty(n_cfc + 1, dtype=torch.int32, device=dev)
    h = torch.empty(M, Fh, dtype=w_fc.dtype, device=dev)
    if sk_fc:
        part_fc = torch.empty(M * t_fc * c_max * M * cfg["fc_block_n"], dtype=torch.float32, device=dev)
    else:
        part_fc = torch.empty(*((s_fc, M, Fh) if s_fc > 1 else (1,)), dtype=torch.float32, device=dev)
    mm = dict(TOP_K=K, RENORM=True, BLOCK_M=max(16, triton.next_power_of_2(M)), BLOCK_K=cfg["block_k"],
              BLOCK_E=max(16, triton.next_power_of_2(E)), num_warps=cfg["warps"], num_stages=cfg["stages"],
              PDL=pdl, launch_pdl=pdl)
    kernels._moe_logits_kernel[(N, E)](x, rw, logits, cnt, cnt.numel(), out, out.numel(), E, D, x.stride(0),
                                       x.stride(1), rw.stride(0), rw.stride(1), BLOCK_D=2048, BLOCK_Z=128,
                                       num_warps=4, PDL=pdl, launch_pdl=pdl)
    if sk_fc:
        _sk_kernel[(P_fc,)](x, w_fc, logits, part_fc, cnt, h, M, Fh, D, E, x.stride(0), x.stride(1), w_fc.stride(0),
                            w_fc.stride(1), w_fc.stride(2), FC=True, BLOCK_N=cfg["fc_block_n"], C_MAX=c_max,
                            LOOP=v["loop"], MAX_SEGS=triton.cdiv(triton.cdiv(M * t_fc * S_fc, P_fc), S_fc) + 1, **mm)
    else:
        kernels._moe_decode_mm_kernel[(M, t_fc, s_fc)](
            x, w_fc, logits, part_fc, cnt, h, M, Fh, D, E, per_fc, x.stride(0), x.stride(1), w_fc.stride(0),
            w_fc.stride(1), w_fc.stride(2), FC=True, N_SPLITS=s_fc, ATOMIC=False, DOT_FP32=False,
            BLOCK_N=cfg["fc_block_n"], **mm)
    if sk_pj:
        _sk_kernel[(P_pj,)](h, w_proj, logits, cnt, cnt, out, M, D, Fh, E, h.stride(0), h.stride(1),
                            w_proj.stride(0), w_proj.stride(1), w_proj.stride(2), FC=False, BLOCK_N=cfg["block_n"],
                            C_MAX=1, LOOP=v["loop"], MAX_SEGS=triton.cdiv(triton.cdiv(M * t_pj * S_pj, P_pj), S_pj) + 1,
                            **mm)
    else:
        kernels._moe_decode_mm_kernel[(M, t_pj, s_pj)](
            h, w_proj, logits, cnt, cnt[n_cfc:], out, M, D, Fh, E, per_pj, h.stride(0), h.stride(1),
            w_proj.stride(0), w_proj.stride(1), w_proj.stride(2), FC=False, N_SPLITS=s_pj, ATOMIC=True,
            DOT_FP32=False, BLOCK_N=cfg["block_n"], **mm)
    y = torch.empty(N, D, dtype=x.dtype, device=dev)
    if not pdl:
        return out.to(x.dtype)
    kernels._moe_cast_kernel[(triton.cdiv(N * D, 1024),)](out, y, y, N * D, RES=False, BLOCK=1024, num_warps=4,
                                                          launch_pdl=True)
    return y


# call 3 (docs/runs/2026-12-01_s21/3_exp_streamk.log) ran loop 0 and 1: slower everywhere (1 token: 29.5-50.8 us
# against 27.4). Here loop 2
VARIANTS = [dict(fc="sk", loop=2), dict(proj="sk", loop=2), dict(fc="sk", proj="sk", loop=2),
            dict(fc="sk", proj="sk", per_sm=3, loop=2)]


def main():
    tokens = next(([int(t) for t in a.split("=", 1)[1].split(",") if t] for a in sys.argv if a.startswith("--tokens=")),
                  [1])
    bw = read_rate()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"read rate {bw / 1e12:.2f} TB/s")
    ws = weights()  # calls 3-4 seeded before the read-rate buffer: other random weights, the same shapes
    expert_bytes, router_bytes = 2 * D * Fh * 2, E * D * 2
    variants = [dict(VARIANT)] + VARIANTS
    with torch.no_grad():
        worst = 0.0
        for v in variants:
            for B in (1, 2, 3, 16):
                x = torch.randn(B, D, device=dev, dtype=torch.bfloat16)
                ref = kernels.moe_decode_reference(x, *ws[1], K, True)
                err = ((layer(x, *ws[1], dict(v, pdl=int(B == 1))).float() - ref).norm() / ref.norm()).item()
                worst = max(worst, err)
                if err > 1e-2:
                    print(f"check FAILED: {v} at {B} tokens: relative error {err:.2e}")
        print(f"check: largest relative error of {len(variants)} variants at 1, 2, 3 and 16 tokens: {worst:.2e}")
        if worst > 1e-2:
            sys.exit(1)
        for B in tokens:
            xs = [torch.randn(B, D, device=dev, dtype=torch.bfloat16) for _ in range(LAYERS)]
            hit = sum(len(torch.unique((x.float() @ w[0].float().T).topk(K, -1).indices)) for x, w in zip(xs, ws))
            floor = (hit / LAYERS * expert_bytes + router_bytes) / bw
            res = {}
            for rep in range(3):
                res.setdefault("kernels.moe_decode", []).append(
                    replay_seconds(lambda: [kernels.moe_decode(x, *w, K, True) for x, w in zip(xs, ws)]) / LAYERS)
                for v in variants:
                    vv = dict(v, pdl=int(B == 1))
                    t = replay_seconds(lambda vv=vv: [layer(x, *w, vv) for x, w in zip(xs, ws)]) / LAYERS
                    res.setdefault(str({k: v[k] for k in v if v[k] != VARIANT[k]}), []).append(t)
            print(f"B={B}: experts hit {hit / LAYERS:.1f}, floor {floor * 1e6:.2f} us (1.5x {1.5 * floor * 1e6:.2f})")
            for name, ts in sorted(res.items(), key=lambda kv: min(kv[1])):
                runs = ", ".join(f"{t * 1e6:.2f}" for t in ts)
                print(f"  {min(ts) * 1e6:6.2f} us (x{min(ts) / floor:.3f}; runs {runs})  {name}")


if __name__ == "__main__":
    main()
