"""
Lookup kernels for the memory layer (spec sections 3, 5, 6: steps 7-8, the IVE decode, MCS weighting
and pooling per virtual block), each next to its plain-PyTorch reference with the same signature.

    mem_lookup(values, rows, blocks, scores, E) -> pooled (T, E, Dv)     the one function memory.py calls

It is the custom op `ultramem::mem_lookup` (forward) with `ultramem::mem_lookup_bwd` as its autograd
backward, both `torch.library.triton_op`s, so torch.compile(fullgraph=True) sees through them. The op
body runs the Triton kernels on CUDA and the reference on the CPU; `set_impl("triton")` runs the Triton
kernels on CPU tensors too, under the interpreter (TRITON_INTERPRET=1 set before triton is imported).

Backward, two schemes for the value gradient (a dense (N, Dv) tensor in values.dtype):
  "sorted" (default, deterministic): sort the T*K slots by row, then one program per physical row sums
           its slots' contributions in a fixed order and writes the row once (zeros for untouched rows);
           the same program computes the slots' score gradients from the row it already holds.
  "atomic":  fp32 zero buffer + atomic adds per slot, then a cast; refused while deterministic.
Deterministic mode: set_deterministic(True) or torch.use_deterministic_algorithms(True).
"""

import os

import torch
from torch import Tensor

try:  # triton is needed on CUDA (and for the interpreter); CPU-only installs run the reference
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None


# ---------------------------------------------------------------------------------------------------
# Plain-PyTorch references (the specification of what the kernels compute)

def mem_lookup_reference(values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor, E: int) -> Tensor:
    """values (N, Dv); rows, blocks (T, K) integer: the physical row and the virtual block in [0, E) of
    each selected slot; scores (T, K, h): one score per MCS core. Returns pooled (T, E, Dv) in
    values.dtype, accumulated in float32 (float64 for float64 inputs, so gradcheck can test it):
        pooled[t, p, c-th chunk of Dv/h] = sum_k [blocks[t, k] == p] * scores[t, k, c] * values[rows[t, k], c-th chunk]
    """
    T, K = rows.shape
    h = scores.shape[-1]
    N, Dv = values.shape
    acc = torch.promote_types(values.dtype, torch.float32)
    v = values[rows.reshape(-1)].to(acc).view(T, K, h, Dv // h)  # (T, K, h, Dv/h)
    weighted = (v * scores.to(acc).unsqueeze(-1)).view(T, K, Dv)
    pooled = torch.zeros(T * E, Dv, dtype=acc, device=values.device)
    flat_block = (torch.arange(T, device=values.device)[:, None] * E + blocks).reshape(-1)
    pooled.index_add_(0, flat_block, weighted.view(T * K, Dv))
    return pooled.view(T, E, Dv).to(values.dtype)


def mem_lookup_bwd_reference(grad_out: Tensor, values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor,
                             E: int) -> tuple[Tensor, Tensor]:
    """Gradients of mem_lookup_reference: grad_out (T, E, Dv) -> (grad_values (N, Dv) in values.dtype,
    grad_scores (T, K, h) in scores.dtype), accumulated in float32."""
    T, K = rows.shape
    h = scores.shape[-1]
    N, Dv = values.shape
    acc = torch.promote_types(values.dtype, torch.float32)
    g = grad_out.to(acc).reshape(T * E, Dv)
    flat_block = (torch.arange(T, device=values.device)[:, None] * E + blocks).reshape(-1)
    g_slot = g[flat_block].view(T, K, h, Dv // h)  # (T, K, h, Dv/h): the output slice each slot fed
    v = values[rows.reshape(-1)].to(acc).view(T, K, h, Dv // h)
    grad_scores = (g_slot * v).sum(-1)  # (T, K, h)
    contrib = (g_slot * scores.to(acc).unsqueeze(-1)).view(T * K, Dv)
    grad_values = torch.zeros(N, Dv, dtype=acc, device=values.device)
    grad_values.index_add_(0, rows.reshape(-1), contrib)
    return grad_values.to(values.dtype), grad_scores.to(scores.dtype)


# ---------------------------------------------------------------------------------------------------
# Settings

_IMPL = "auto"          # "auto": Triton on CUDA, reference on CPU; "triton": Triton everywhere; "reference"
_BWD_SCHEME = "sorted"  # "sorted" or "atomic"
_DETERMINISTIC = False
POISON_OUTPUTS = False  # tests: fill the kernels' outputs with NaN before launch, so an unwritten element shows
# Launch parameters; bench.py may override them to sweep. Chosen for the H200 (docs/KERNELS.md).
CONFIG = {"fwd_block_k": 16, "fwd_warps": 8, "bwd_rows": 32, "bwd_block_i": 16, "bwd_warps": 4, "atomic_warps": 4}


def set_impl(impl: str) -> None:
    if impl not in ("auto", "triton", "reference"):
        raise ValueError(f"impl must be auto, triton or reference, got {impl!r}")
    global _IMPL
    _IMPL = impl


def set_backward_scheme(scheme: str) -> None:
    if scheme not in ("sorted", "atomic"):
        raise ValueError(f"backward scheme must be sorted or atomic, got {scheme!r}")
    global _BWD_SCHEME
    _BWD_SCHEME = scheme


def set_deterministic(flag: bool) -> None:
    global _DETERMINISTIC
    _DETERMINISTIC = bool(flag)


def is_deterministic() -> bool:
    return _DETERMINISTIC or torch.are_deterministic_algorithms_enabled()


def _use_triton(t: Tensor) -> bool:
    if _IMPL == "reference":
        return False
    if t.is_cuda or _IMPL == "triton":
        if triton is None:
            raise RuntimeError("kernels: the Triton lookup needs triton installed (pip install triton)")
        if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("kernels: Triton on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
        return True
    return False


# ---------------------------------------------------------------------------------------------------
# Triton kernels

if triton is not None:

    @triton.jit
    def _segment_dot(onehot, w, acc, SPLIT: tl.constexpr):
        # acc += onehot @ w on the tensor cores with fp32-grade accuracy: w (fp32) is split into two bf16
        # parts (hi + lo carry 16 of its 24 mantissa bits); onehot (0/1) is exact in bf16. SPLIT=False (the
        # interpreter, whose bf16 dot is broken in triton 3.9) takes a plain fp32 product instead
        if not SPLIT:
            return tl.dot(onehot.to(tl.float32), w, acc, input_precision="ieee")
        w_hi = w.to(tl.bfloat16)
        w_lo = (w - w_hi.to(tl.float32)).to(tl.bfloat16)
        oh = onehot.to(tl.bfloat16)
        acc = tl.dot(oh, w_hi, acc)
        return tl.dot(oh, w_lo, acc)

    @triton.jit
    def _lookup_fwd_kernel(values_ptr, rows_ptr, blocks_ptr, scores_ptr, out_ptr, K, Dv, chunk,
                           E: tl.constexpr, H: tl.constexpr, E_PAD: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_D: tl.constexpr, SPLIT: tl.constexpr):
        # one program per token: BLOCK_K selected rows at a time, weighted by their MCS scores, then pooled
        # into the E virtual blocks by a one-hot (E_PAD, BLOCK_K) matmul
        t = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < Dv
        core = cols // chunk  # (BLOCK_D,) which MCS score weights this column
        eids = tl.arange(0, E_PAD)
        base = t * K
        acc = tl.zeros((E_PAD, BLOCK_D), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            b = tl.load(blocks_ptr + base + ks, mask=kmask, other=-1)
            r = tl.load(rows_ptr + base + ks, mask=kmask, other=0).to(tl.int64)
            s = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
            for c in tl.static_range(H):
                s_c = tl.load(scores_ptr + (base + ks) * H + c, mask=kmask, other=0.0).to(tl.float32)
                s = tl.where(core[None, :] == c, s_c[:, None], s)
            v = tl.load(values_ptr + r[:, None] * Dv + cols[None, :], mask=kmask[:, None] & cmask[None, :], other=0.0)
            acc = _segment_dot(eids[:, None] == b[None, :], v.to(tl.float32) * s, acc, SPLIT)  # (E_PAD, BLOCK_D)
        out = out_ptr + (t * E + eids[:, None]) * Dv + cols[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(eids[:, None] < E) & cmask[None, :])

    @triton.jit
    def _lookup_bwd_sorted_kernel(gout_ptr, values_ptr, scores_ptr, blocks_ptr, perm_ptr, srows_ptr, toffs_ptr,
                                  gvalues_ptr, gscores_ptr, N, K, Dv, chunk, E: tl.constexpr, H: tl.constexpr,
                                  R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr,
                                  SPLIT: tl.constexpr):
        # one program per R consecutive physical rows: their slots are perm[toffs[pid]:toffs[pid+1]] (sorted
        # by row, stable), reduced in that fixed order by a one-hot (R, BLOCK_I) matmul; every row is written
        # once (zeros where no slot selected it), so no zero fill and no atomics
        pid = tl.program_id(0)
        n0 = pid.to(tl.int64) * R
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < Dv
        core = cols // chunk
        rids = tl.arange(0, R)
        start = tl.load(toffs_ptr + pid)
        end = tl.load(toffs_ptr + pid + 1)
        acc = tl.zeros((R, BLOCK_D), dtype=tl.float32)
        for i0 in range(start, end, BLOCK_I):
            idx = i0 + tl.arange(0, BLOCK_I)
            imask = idx < end
            p = tl.load(perm_ptr + idx, mask=imask, other=0)  # flat slot t*K + k
            row = tl.load(srows_ptr + idx, mask=imask, other=0).to(tl.int64)
            b = tl.load(blocks_ptr + p, mask=imask, other=0)
            m2 = imask[:, None] & cmask[None, :]
            g = tl.load(gout_ptr + ((p // K) * E + b)[:, None] * Dv + cols[None, :], mask=m2, other=0.0).to(tl.float32)
            v = tl.load(values_ptr + row[:, None] * Dv + cols[None, :], mask=m2, other=0.0).to(tl.float32)
            gv = g * v
            s = tl.zeros((BLOCK_I, BLOCK_D), dtype=tl.float32)
            for c in tl.static_range(H):
                in_c = core[None, :] == c
                s_c = tl.load(scores_ptr + p * H + c, mask=imask, other=0.0).to(tl.float32)
                s = tl.where(in_c, s_c[:, None], s)
                tl.store(gscores_ptr + p * H + c, tl.sum(tl.where(in_c, gv, 0.0), axis=1), mask=imask)
            onehot = (rids[:, None] == (row - n0)[None, :]) & imask[None, :]
            acc = _segment_dot(onehot, g * s, acc, SPLIT)  # (R, BLOCK_D)
        out = gvalues_ptr + (n0 + rids)[:, None] * Dv + cols[None, :]
        tl.store(out, acc.to(gvalues_ptr.dtype.element_ty), mask=((n0 + rids) < N)[:, None] & cmask[None, :])

    @triton.jit
    def _lookup_bwd_atomic_kernel(gout_ptr, values_ptr, rows_ptr, blocks_ptr, scores_ptr, gvalues_ptr, gscores_ptr,
                                  K, Dv, chunk, E: tl.constexpr, H: tl.constexpr, BLOCK_D: tl.constexpr):
        # one program per slot (t, k): atomically adds its contribution to an fp32 gradient buffer
        p = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK_D)
        cmask = cols < Dv
        core = cols // chunk
        r = tl.load(rows_ptr + p).to(tl.int64)
        grow = (p // K) * E + tl.load(blocks_ptr + p)
        g = tl.load(gout_ptr + grow * Dv + cols, mask=cmask, other=0.0).to(tl.float32)
        v = tl.load(values_ptr + r * Dv + cols, mask=cmask, other=0.0).to(tl.float32)
        s = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for c in tl.static_range(H):
            in_c = core == c
            s = tl.where(in_c, tl.load(scores_ptr + p * H + c).to(tl.float32), s)
            tl.store(gscores_ptr + p * H + c, tl.sum(tl.where(in_c, g * v, 0.0), axis=0))
        tl.atomic_add(gvalues_ptr + r * Dv + cols, g * s, mask=cmask, sem="relaxed")


def _empty(*shape, dtype, device) -> Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(*shape, dtype=dtype, device=device)


def _launch(kernel, grid, on_cuda: bool, *args, **kwargs):
    if on_cuda:  # wrap_triton lets torch.compile trace the launch; the interpreter's functions are not JITFunctions
        from torch.library import wrap_triton
        return wrap_triton(kernel)[grid](*args, **kwargs)
    return kernel[grid](*args, **kwargs)


def _check(values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor, E: int) -> None:
    T, K = rows.shape
    if values.dim() != 2 or blocks.shape != rows.shape or scores.shape[:2] != rows.shape or scores.dim() != 3:
        raise ValueError(f"mem_lookup: bad shapes values {tuple(values.shape)}, rows {tuple(rows.shape)}, "
                         f"blocks {tuple(blocks.shape)}, scores {tuple(scores.shape)}")
    if values.shape[1] % scores.shape[2]:
        raise ValueError(f"mem_lookup: Dv={values.shape[1]} is not divisible by h={scores.shape[2]}")


def _lookup_triton(values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor, E: int) -> Tensor:
    T, K = rows.shape
    N, Dv = values.shape
    h = scores.shape[-1]
    out = _empty(T, E, Dv, dtype=values.dtype, device=values.device)
    if T == 0:
        return out
    _launch(_lookup_fwd_kernel, (T,), values.is_cuda, values.contiguous(), rows.contiguous(),
            blocks.contiguous(), scores.contiguous(), out, K, Dv, Dv // h, E=E, H=h,
            E_PAD=max(16, triton.next_power_of_2(E)), BLOCK_K=CONFIG["fwd_block_k"],
            BLOCK_D=triton.next_power_of_2(Dv), SPLIT=values.is_cuda, num_warps=CONFIG["fwd_warps"])
    return out


def _lookup_bwd_triton(grad_out: Tensor, values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor,
                       E: int) -> tuple[Tensor, Tensor]:
    T, K = rows.shape
    N, Dv = values.shape
    h = scores.shape[-1]
    on_cuda = values.is_cuda
    grad_out, values, blocks, scores = grad_out.contiguous(), values.contiguous(), blocks.contiguous(), scores.contiguous()
    gscores = _empty(T, K, h, dtype=torch.float32, device=values.device)
    BLOCK_D = triton.next_power_of_2(Dv)
    if _BWD_SCHEME == "atomic" and not is_deterministic():
        gvalues = torch.zeros(N, Dv, dtype=torch.float32, device=values.device)
        if T > 0:
            _launch(_lookup_bwd_atomic_kernel, (T * K,), on_cuda, grad_out, values, rows.contiguous(), blocks, scores,
                    gvalues, gscores, K, Dv, Dv // h, E=E, H=h, BLOCK_D=BLOCK_D, num_warps=CONFIG["atomic_warps"])
        return gvalues.to(values.dtype), gscores.to(scores.dtype)
    flat = rows.reshape(-1).to(torch.int32)  # N < 2**31; 32-bit keys sort faster
    sorted_rows, perm = torch.sort(flat, stable=True)  # stable: a fixed summation order per row
    R = CONFIG["bwd_rows"]
    tiles = triton.cdiv(N, R)
    bounds = torch.arange(0, tiles + 1, device=values.device, dtype=torch.int32) * R
    toffs = torch.searchsorted(sorted_rows, bounds)  # (tiles + 1,) int64: the slots of rows [R*i, R*(i+1))
    gvalues = _empty(N, Dv, dtype=values.dtype, device=values.device)
    if N > 0:
        _launch(_lookup_bwd_sorted_kernel, (tiles,), on_cuda, grad_out, values, scores, blocks, perm, sorted_rows,
                toffs, gvalues, gscores, N, K, Dv, Dv // h, E=E, H=h, R=R, BLOCK_I=CONFIG["bwd_block_i"],
                BLOCK_D=BLOCK_D, SPLIT=on_cuda, num_warps=CONFIG["bwd_warps"])
    return gvalues, gscores.to(scores.dtype)


# ---------------------------------------------------------------------------------------------------
# Custom ops: forward, backward, autograd

@torch.library.triton_op("ultramem::mem_lookup", mutates_args=())
def _mem_lookup_op(values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor, E: int) -> Tensor:
    if _use_triton(values):
        return _lookup_triton(values, rows, blocks, scores, E)
    return mem_lookup_reference(values, rows, blocks, scores, E)


@torch.library.triton_op("ultramem::mem_lookup_bwd", mutates_args=())
def _mem_lookup_bwd_op(grad_out: Tensor, values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor,
                       E: int) -> tuple[Tensor, Tensor]:
    if _use_triton(values):
        return _lookup_bwd_triton(grad_out, values, rows, blocks, scores, E)
    return mem_lookup_bwd_reference(grad_out, values, rows, blocks, scores, E)


def _setup_context(ctx, inputs, output):
    values, rows, blocks, scores, E = inputs
    ctx.save_for_backward(values, rows, blocks, scores)
    ctx.E = E


def _backward(ctx, grad_out):
    values, rows, blocks, scores = ctx.saved_tensors
    grad_values, grad_scores = torch.ops.ultramem.mem_lookup_bwd(grad_out, values, rows, blocks, scores, ctx.E)
    return (grad_values if ctx.needs_input_grad[0] else None, None, None,
            grad_scores if ctx.needs_input_grad[3] else None, None)


_mem_lookup_op.register_autograd(_backward, setup_context=_setup_context)


def mem_lookup(values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor, E: int) -> Tensor:
    """The one entry point memory.py calls: the custom op (Triton on CUDA, reference on CPU)."""
    _check(values, rows, blocks, scores, E)
    return torch.ops.ultramem.mem_lookup(values, rows, blocks, scores, E)


# ===================================================================================================
# Grouped matrix multiply for MoE decoding
#
#     moe_grouped_mm(x, w, offs, gelu=False) -> (M, N)      the custom op `ultramem::moe_grouped_mm`
#
# The semantics of torch._grouped_mm(x, w, offs=offs) (2D x, 3D w), optionally fused with a GeLU:
# x (M, K) holds the token-slots sorted by expert, w (G, K, N) the stacked expert weights, offs (G,)
# the cumulative row ends (group g owns rows offs[g-1] .. offs[g]-1, offs[-1] <= M). Rows past offs[-1]
# belong to no group and come out as zeros (torch._grouped_mm leaves them unwritten on the CPU).
# Built for decode, where a group has a handful of rows and the cost is streaming each touched expert's
# weights once: one program per (group, BLOCK_N columns) reads its group's rows from offs, and an
# empty group's programs do no work, so an expert that no token chose is never read. The tile sizes
# depend on static shapes only (no host synchronisation: it compiles and captures in a CUDA graph).
# Inference only: no autograd formula (moe_grouped_mm refuses inputs that require grad in grad mode).
# The op body runs the Triton kernel on CUDA and the reference on the CPU; set_impl switches as above.

# Launch parameters of the MoE kernel: the best of 36 on an H200 (scripts/bench_moe.py --tune, both
# projections of the MoE-1.6B-2in34 layer; docs/BENCHMARKS.md): 1.06 / 1.03 / 1.14x the weight-read floor
# at 8 / 64 / 512 tokens (64 x 128 x 4 warps, the first guess: 1.14 / 1.06 / 1.43x).
MOE_CONFIG = {"block_n": 128, "block_k": 64, "warps": 8, "stages": 4}


def moe_grouped_mm_reference(x: Tensor, w: Tensor, offs: Tensor, gelu: bool) -> Tensor:
    """x (M, K), w (G, K, N), offs (G,) integer cumulative row ends -> (M, N) in x.dtype: rows of group g
    times w[g], accumulated in float32, then GeLU (exact erf form) if gelu; zeros past offs[-1]. A loop
    over the groups that reads offs on the host (so it syncs on CUDA and is opaque to torch.compile)."""
    out = torch.zeros(x.shape[0], w.shape[2], dtype=x.dtype, device=x.device)
    start = 0
    for g, end in enumerate(offs.tolist()):
        if end > start:
            y = x[start:end].float() @ w[g].float()
            out[start:end] = (torch.nn.functional.gelu(y) if gelu else y).to(x.dtype)
        start = end
    return out


def _moe_block_m(M: int, G: int) -> int:
    # rows per tile, from static shapes only: ~1.5x the mean group size (routing is uneven), a power of
    # two in [16, 64] (tl.dot needs 16); a larger group takes several tiles
    return min(64, max(16, triton.next_power_of_2(triton.cdiv(3 * M, 2 * G))))


if triton is not None:

    @triton.jit
    def _moe_grouped_mm_kernel(x_ptr, w_ptr, offs_ptr, out_ptr, M, N, K, sxm, sxk, swg, swk, swn,
                               GELU: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # one program per (group g, BLOCK_N output columns): for each BLOCK_M rows of the group (usually
        # one tile at decode) stream w[g, :, n-tile] over K into an fp32 accumulator. DOT_FP32 takes the
        # product in fp32 ("ieee", exact): for fp32 inputs, and in the interpreter, whose bf16 dot is
        # broken in triton 3.9
        g = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = cols < N
        start = tl.load(offs_ptr + g - 1, mask=g > 0, other=0)
        end = tl.load(offs_ptr + g)
        rids = tl.arange(0, BLOCK_M)
        if g == tl.num_programs(0) - 1:  # rows past offs[-1] belong to no group: the last group zeros them
            for m0 in range(end, M, BLOCK_M):
                rows = m0 + rids
                tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :],
                         tl.zeros((BLOCK_M, BLOCK_N), dtype=out_ptr.dtype.element_ty),
                         mask=(rows < M)[:, None] & nmask[None, :])
        w_g = w_ptr + g.to(tl.int64) * swg + cols[None, :] * swn
        for m0 in range(start, end, BLOCK_M):  # no iterations for an empty group: its weights are not read
            rows = m0 + rids
            rmask = rows < end
            x_rows = x_ptr + rows.to(tl.int64)[:, None] * sxm
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                kmask = ks < K
                a = tl.load(x_rows + ks[None, :] * sxk, mask=rmask[:, None] & kmask[None, :], other=0.0)
                b = tl.load(w_g + ks.to(tl.int64)[:, None] * swk, mask=kmask[:, None] & nmask[None, :], other=0.0)
                if DOT_FP32:
                    acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, b, acc)
            if GELU:
                acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
            tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], acc.to(out_ptr.dtype.element_ty),
                     mask=rmask[:, None] & nmask[None, :])


def _moe_check(x: Tensor, w: Tensor, offs: Tensor) -> None:
    if x.dim() != 2 or w.dim() != 3 or offs.dim() != 1 or w.shape[0] == 0 or x.shape[1] != w.shape[1] \
            or offs.shape[0] != w.shape[0]:
        raise ValueError(f"moe_grouped_mm: bad shapes x {tuple(x.shape)}, w {tuple(w.shape)}, offs {tuple(offs.shape)}")
    if x.dtype != w.dtype or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"moe_grouped_mm: x and w must share a dtype of bf16, fp16 or fp32, got {x.dtype}, {w.dtype}")
    if offs.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"moe_grouped_mm: offs must be int32 or int64, got {offs.dtype}")


def _moe_grouped_mm_triton(x: Tensor, w: Tensor, offs: Tensor, gelu: bool) -> Tensor:
    M, K = x.shape
    G, _, N = w.shape
    out = _empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    cfg = MOE_CONFIG
    grid = (G, triton.cdiv(N, cfg["block_n"]))
    # w keeps its strides: a copy would read every expert, the cost this kernel exists to avoid
    _launch(_moe_grouped_mm_kernel, grid, x.is_cuda, x, w, offs.contiguous(), out, M, N, K, x.stride(0),
            x.stride(1), w.stride(0), w.stride(1), w.stride(2), GELU=gelu,
            DOT_FP32=x.dtype == torch.float32 or not x.is_cuda, BLOCK_M=_moe_block_m(M, G),
            BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"], num_warps=cfg["warps"], num_stages=cfg["stages"])
    return out


# The reference as an opaque op: it reads offs on the host, which tracing cannot, so torch.compile
# sees only its fake (the output's shape and dtype)
@torch.library.custom_op("ultramem::moe_grouped_mm_reference", mutates_args=())
def _moe_grouped_mm_reference_op(x: Tensor, w: Tensor, offs: Tensor, gelu: bool) -> Tensor:
    return moe_grouped_mm_reference(x, w, offs, gelu)


@_moe_grouped_mm_reference_op.register_fake
def _(x: Tensor, w: Tensor, offs: Tensor, gelu: bool) -> Tensor:
    return x.new_empty(x.shape[0], w.shape[2])


@torch.library.triton_op("ultramem::moe_grouped_mm", mutates_args=())
def _moe_grouped_mm_op(x: Tensor, w: Tensor, offs: Tensor, gelu: bool) -> Tensor:
    if _use_triton(x):
        return _moe_grouped_mm_triton(x, w, offs, gelu)
    return torch.ops.ultramem.moe_grouped_mm_reference(x, w, offs, gelu)


def moe_grouped_mm(x: Tensor, w: Tensor, offs: Tensor, gelu: bool = False) -> Tensor:
    """Grouped x @ w[g] over the row groups that offs delimits, GeLU fused if gelu (see the section
    header): the custom op, Triton on CUDA, the reference on the CPU. Inference only: raises RuntimeError
    if grad mode is on and x or w requires grad (call it under torch.no_grad() or torch.inference_mode())."""
    _moe_check(x, w, offs)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        raise RuntimeError("moe_grouped_mm is inference only (no autograd formula): call it under "
                           "torch.no_grad() or torch.inference_mode(), or pass tensors that do not require grad")
    return torch.ops.ultramem.moe_grouped_mm(x, w, offs, gelu)
