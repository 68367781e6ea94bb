"""
Triton kernels, each next to its plain-PyTorch reference with the same signature:

    mem_lookup(values, rows, blocks, scores, E) -> pooled (T, E, Dv)     the one function memory.py calls
    moe_grouped_mm(x, w, offs, gelu=False) -> (M, N)                     MoE decoding (model.py, moe_impl)
    decode_attention(q, k, v, input_pos) -> (B, H, T, D)                 split-KV decode attention (attn_decode)

The first is the memory layer's lookup (spec sections 3, 5, 6: steps 7-8, the IVE decode, MCS weighting
and pooling per virtual block); the other two are inference-only and have their own sections below.

The lookup is the custom op `ultramem::mem_lookup` (forward) with `ultramem::mem_lookup_bwd` as its autograd
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
# fwd_per_core / bwd_per_core: one program per (token or row tile, MCS core) over that core's columns, not
# one over the whole row; not yet timed on the GPU (bench.py --mode=kernels sweeps both), so off.
CONFIG = {"fwd_block_k": 16, "fwd_warps": 8, "bwd_rows": 32, "bwd_block_i": 16, "bwd_warps": 4, "atomic_warps": 4,
          "fwd_per_core": False, "bwd_per_core": False}


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
    def _row_columns(c0, chunk, Dv, BLOCK_D: tl.constexpr, PER_CORE: tl.constexpr):
        # the value columns a lookup program covers: MCS core c0's `chunk` columns (PER_CORE), else the row
        if PER_CORE:
            cols = c0 * chunk + tl.arange(0, BLOCK_D)
            cmask = tl.arange(0, BLOCK_D) < chunk
        else:
            cols = tl.arange(0, BLOCK_D)
            cmask = cols < Dv
        return cols, cmask

    @triton.jit
    def _lookup_fwd_kernel(values_ptr, rows_ptr, blocks_ptr, scores_ptr, out_ptr, K, Dv, chunk,
                           E: tl.constexpr, H: tl.constexpr, E_PAD: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_D: tl.constexpr, SPLIT: tl.constexpr, PER_CORE: tl.constexpr):
        # one program per token (PER_CORE: per token and MCS core, the core's `chunk` columns only, so half
        # the registers and twice the programs at h = 2): BLOCK_K selected rows at a time, weighted by their
        # MCS scores, then pooled into the E virtual blocks by a one-hot (E_PAD, BLOCK_K) matmul
        t = tl.program_id(0).to(tl.int64)
        c0 = tl.program_id(1)  # the core (PER_CORE), else 0
        cols, cmask = _row_columns(c0, chunk, Dv, BLOCK_D, PER_CORE)
        core = cols // chunk  # (BLOCK_D,) which MCS score weights this column (the whole-row case)
        eids = tl.arange(0, E_PAD)
        base = t * K
        acc = tl.zeros((E_PAD, BLOCK_D), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            b = tl.load(blocks_ptr + base + ks, mask=kmask, other=-1)
            r = tl.load(rows_ptr + base + ks, mask=kmask, other=0).to(tl.int64)
            v = tl.load(values_ptr + r[:, None] * Dv + cols[None, :], mask=kmask[:, None] & cmask[None, :], other=0.0)
            if PER_CORE:
                s1 = tl.load(scores_ptr + (base + ks) * H + c0, mask=kmask, other=0.0).to(tl.float32)
                w = v.to(tl.float32) * s1[:, None]
            else:
                s = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
                for c in tl.static_range(H):
                    s_c = tl.load(scores_ptr + (base + ks) * H + c, mask=kmask, other=0.0).to(tl.float32)
                    s = tl.where(core[None, :] == c, s_c[:, None], s)
                w = v.to(tl.float32) * s
            acc = _segment_dot(eids[:, None] == b[None, :], w, acc, SPLIT)  # (E_PAD, BLOCK_D)
        out = out_ptr + (t * E + eids[:, None]) * Dv + cols[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(eids[:, None] < E) & cmask[None, :])

    @triton.jit
    def _lookup_bwd_sorted_kernel(gout_ptr, values_ptr, scores_ptr, blocks_ptr, perm_ptr, srows_ptr, toffs_ptr,
                                  gvalues_ptr, gscores_ptr, N, K, Dv, chunk, E: tl.constexpr, H: tl.constexpr,
                                  R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr,
                                  SPLIT: tl.constexpr, PER_CORE: tl.constexpr):
        # one program per R consecutive physical rows (PER_CORE: per R rows and MCS core, that core's
        # columns only; its score gradients are then complete sums of its own columns): their slots are
        # perm[toffs[pid]:toffs[pid+1]] (sorted by row, stable), reduced in that fixed order by a one-hot
        # (R, BLOCK_I) matmul; every row is written once (zeros where no slot selected it), so no zero fill
        # and no atomics
        pid = tl.program_id(0)
        c0 = tl.program_id(1)  # the core (PER_CORE), else 0
        n0 = pid.to(tl.int64) * R
        cols, cmask = _row_columns(c0, chunk, Dv, BLOCK_D, PER_CORE)
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
            if PER_CORE:
                s1 = tl.load(scores_ptr + p * H + c0, mask=imask, other=0.0).to(tl.float32)
                tl.store(gscores_ptr + p * H + c0, tl.sum(gv, axis=1), mask=imask)
                gs = g * s1[:, None]
            else:
                s = tl.zeros((BLOCK_I, BLOCK_D), dtype=tl.float32)
                for c in tl.static_range(H):
                    in_c = core[None, :] == c
                    s_c = tl.load(scores_ptr + p * H + c, mask=imask, other=0.0).to(tl.float32)
                    s = tl.where(in_c, s_c[:, None], s)
                    tl.store(gscores_ptr + p * H + c, tl.sum(tl.where(in_c, gv, 0.0), axis=1), mask=imask)
                gs = g * s
            onehot = (rids[:, None] == (row - n0)[None, :]) & imask[None, :]
            acc = _segment_dot(onehot, gs, acc, SPLIT)  # (R, BLOCK_D)
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
    per_core = CONFIG["fwd_per_core"] and h > 1
    _launch(_lookup_fwd_kernel, (T, h if per_core else 1), values.is_cuda, values.contiguous(), rows.contiguous(),
            blocks.contiguous(), scores.contiguous(), out, K, Dv, Dv // h, E=E, H=h,
            E_PAD=max(16, triton.next_power_of_2(E)), BLOCK_K=CONFIG["fwd_block_k"],
            BLOCK_D=triton.next_power_of_2(Dv // h if per_core else Dv), SPLIT=values.is_cuda, PER_CORE=per_core,
            num_warps=CONFIG["fwd_warps"])
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
    per_core = CONFIG["bwd_per_core"] and h > 1
    if N > 0:
        _launch(_lookup_bwd_sorted_kernel, (tiles, h if per_core else 1), on_cuda, grad_out, values, scores, blocks,
                perm, sorted_rows, toffs, gvalues, gscores, N, K, Dv, Dv // h, E=E, H=h, R=R,
                BLOCK_I=CONFIG["bwd_block_i"], BLOCK_D=triton.next_power_of_2(Dv // h) if per_core else BLOCK_D,
                SPLIT=on_cuda, PER_CORE=per_core, num_warps=CONFIG["bwd_warps"])
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


# ===================================================================================================
# Split-KV attention for decoding ("flash-decoding")
#
#     decode_attention(q, k, v, input_pos) -> (B, H, T, D)      the custom op `ultramem::decode_attention`
#
# q (B, H, T, D) holds the queries of T new tokens (T small: 1 when decoding, up to ~16 for a short chunk)
# at absolute positions input_pos (T,) (integer, 0 <= input_pos < S; consecutive in practice, not relied
# on); k, v (B, KV, S, D) the key/value caches, already holding the new tokens. They may be batch-slices
# of bigger buffers (buf[:B]): any strides, the last dim contiguous. Grouped-query attention: H = KV * rep,
# query head h reads KV head h // rep (the pairing of repeat_interleave(rep, dim=1) and of SDPA's
# enable_gqa). Query t attends to cache positions 0 .. input_pos[t] inclusive, scale 1/sqrt(D); softmax
# and accumulation in fp32, the output in q.dtype. D a power of two in [16, 256]; q, k, v of one dtype,
# bf16, fp16 or fp32.
# Why: with few KV heads, one program per (batch, KV head) walking the whole cache (cuDNN's flash
# attention, FlexAttention's decoding kernel) leaves most SMs idle and streams the cache at well under
# the HBM bandwidth. Here a (batch, KV head) pair's positions are cut into n_splits contiguous chunks:
#   split kernel,   grid (B * KV, n_splits): the rep * T query rows of the KV head, ordered (r, t) and
#                   padded to BLOCK_M >= 16 for tl.dot, as one tile; an online softmax over the chunk's
#                   BLOCK_S tiles leaves a partial (max m, sum l, accumulator acc) per row in fp32
#                   workspaces (B * KV, n_splits, BLOCK_M[, D]). Nothing past max(input_pos) is read: a
#                   chunk that starts after it reads no K/V (input_pos is read in the kernel, no host sync).
#   combine kernel, grid (B * KV, rep * T): merges a row's partials by the log-sum-exp rule and writes it.
# n_splits depends on static shapes only (it compiles and captures in a CUDA graph): enough programs to
# fill the GPU, DECODE_ATTN_CONFIG["programs_per_sm"] per SM, but at least one BLOCK_S tile per split.
# Inference only: no autograd formula (decode_attention refuses inputs that require grad in grad mode).
# The op body runs the Triton kernels on CUDA and the reference on the CPU; set_impl switches as above.

# Launch parameters of the split kernel and the split count, for the H200 (132 SMs): the best of a 108-config
# sweep at batch 8-512 with 2 and 16 KV heads (docs/BENCHMARKS.md, 2026-11-29; stages 3 and 4 programs per SM
# were 1-12% slower). "splits" forces n_splits (tests, benchmarks); "max_splits" caps the automatic choice.
DECODE_ATTN_CONFIG = {"block_s": 64, "warps": 4, "stages": 2, "combine_warps": 4, "programs_per_sm": 2, "sms": 132,
                      "max_splits": None, "splits": None}


def decode_attention_reference(q: Tensor, k: Tensor, v: Tensor, input_pos: Tensor) -> Tensor:
    """q (B, H, T, D), k, v (B, KV, S, D), input_pos (T,) -> (B, H, T, D) in q.dtype (see the section
    header): the KV heads repeated to H, scores, softmax and product in float32 (float64 for float64
    inputs), query t masked to positions <= input_pos[t]. Traceable: no host synchronisation."""
    H, D = q.shape[1], q.shape[3]
    S = k.shape[2]
    rep = H // k.shape[1]
    acc = torch.promote_types(q.dtype, torch.float32)
    k = k.to(acc).repeat_interleave(rep, dim=1)
    v = v.to(acc).repeat_interleave(rep, dim=1)
    scores = (q.to(acc) @ k.transpose(-1, -2)) * D ** -0.5  # (B, H, T, S)
    allowed = torch.arange(S, device=q.device) <= input_pos[:, None]  # (T, S)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(dim=-1) @ v).to(q.dtype)


def _decode_attn_block_s(block_m: int, D: int, itemsize: int) -> int:
    """BLOCK_S: DECODE_ATTN_CONFIG["block_s"], halved (down to 16, the least tl.dot takes) while a rough
    estimate of the split kernel's shared memory exceeds 192 KiB (an H100/H200 block may have 227 KiB): the
    stages - 1 buffered K and V tiles plus the q and p tiles. Compiled by triton 3.9 for sm_90 it came within
    -10% .. +60% of the need (reported as the kernel's "shared"; 262 KiB for bf16, D = 256, BLOCK_M = 128,
    BLOCK_S = 64: too much). At the default 64 x 2 stages it shrinks only large heads with many rows: for
    bf16 / fp16 when D = 256 and rep * T > 64, for fp32 when D = 256 and rep * T > 16 or rep * T > 64."""
    cfg = DECODE_ATTN_CONFIG
    block_s = cfg["block_s"]
    smem = lambda bs: (cfg["stages"] - 1) * 2 * bs * D * itemsize + 2 * block_m * D * itemsize + block_m * bs * 4
    while block_s > 16 and smem(block_s) > 192 * 1024:
        block_s //= 2
    return block_s


def _decode_attn_splits(B: int, KV: int, S: int, block_s: int) -> int:
    """n_splits from static shapes: DECODE_ATTN_CONFIG["splits"] if set, else enough split programs for
    programs_per_sm per SM (capped by max_splits); either way within [1, the number of BLOCK_S tiles]."""
    cfg = DECODE_ATTN_CONFIG
    tiles = -(-S // block_s)
    n = cfg["splits"]
    if n is None:
        n = -(-cfg["programs_per_sm"] * cfg["sms"] // (B * KV))
        if cfg["max_splits"] is not None:
            n = min(n, cfg["max_splits"])
    return max(1, min(n, tiles))


if triton is not None:

    @triton.jit
    def _decode_attn_split_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, S, T, KV, n_tiles,
                                  sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, qk_scale, REP: tl.constexpr,
                                  D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                                  DOT_FP32: tl.constexpr):
        # one program per (batch b, KV head kv, split): the REP * T query rows (row = r * T + t is query head
        # kv * REP + r, token t) against the split's share of the n_tiles BLOCK_S-tiles of positions, with
        # an online softmax in base 2 (qk_scale = log2(e) / sqrt(D)). DOT_FP32 takes both products in fp32
        # ("ieee"): for fp32 inputs, and in the interpreter, whose bf16 dot is broken in triton 3.9
        bk = tl.program_id(0)
        split = tl.program_id(1)
        n_splits = tl.num_programs(1)
        b = (bk // KV).to(tl.int64)
        kv = bk % KV
        rows = tl.arange(0, BLOCK_M)
        rmask = rows < REP * T
        r = rows // T
        t = rows % T
        pos = tl.load(pos_ptr + t, mask=rmask, other=-1).to(tl.int32)  # padding rows: -1, nothing allowed
        start = (split * n_tiles // n_splits) * BLOCK_S
        end = tl.minimum(((split + 1) * n_tiles // n_splits) * BLOCK_S, S)
        end = tl.minimum(end, tl.max(pos, axis=0) + 1)  # the early exit: no position past max(input_pos) is read
        d = tl.arange(0, D)
        q = tl.load(q_ptr + b * sqb + (kv * REP + r).to(tl.int64)[:, None] * sqh + t[:, None] * sqt + d[None, :],
                    mask=rmask[:, None], other=0.0)
        k_bh = k_ptr + b * skb + kv.to(tl.int64) * skh
        v_bh = v_ptr + b * svb + kv.to(tl.int64) * svh
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, D), dtype=tl.float32)
        for s0 in range(start, end, BLOCK_S):
            cols = s0 + tl.arange(0, BLOCK_S)
            cmask = cols < end  # K/V past the end read as 0 (the cache beyond max(input_pos) may hold anything)
            kt = tl.load(k_bh + cols.to(tl.int64)[None, :] * sks + d[:, None], mask=cmask[None, :], other=0.0)
            vt = tl.load(v_bh + cols.to(tl.int64)[:, None] * svs + d[None, :], mask=cmask[:, None], other=0.0)
            if DOT_FP32:
                s = tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision="ieee")
            else:
                s = tl.dot(q, kt)
            # the causal mask alone: a tile never crosses its share's end, positions past S are > input_pos
            s = tl.where(cols[None, :] <= pos[:, None], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet: no inf - inf
            p = tl.exp2(s - m_ref[:, None])
            alpha = tl.exp2(m_i - m_ref)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if DOT_FP32:
                acc = tl.dot(p, vt.to(tl.float32), acc * alpha[:, None], input_precision="ieee")
            else:
                acc = tl.dot(p.to(vt.dtype), vt, acc * alpha[:, None])
            m_i = m_new
        # the real rows' partials; a split that read nothing leaves m = -inf, l = 0 and its acc unwritten
        # (a row count, not rmask & (start < end): the interpreter mistypes a block & scalar mask)
        ws = (bk.to(tl.int64) * n_splits + split) * BLOCK_M + rows
        tl.store(m_ptr + ws, m_i, mask=rmask)
        tl.store(l_ptr + ws, l_i, mask=rmask)
        acc_rows = tl.where(start < end, REP * T, 0)
        tl.store(acc_ptr + ws[:, None] * D + d[None, :], acc, mask=(rows < acc_rows)[:, None])

    @triton.jit
    def _decode_attn_combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, n_splits, D: tl.constexpr,
                                    BLOCK_M: tl.constexpr, BLOCK_SPLITS: tl.constexpr):
        # one program per (batch, KV head, row): out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s with
        # M = max_s m_s, BLOCK_SPLITS partials at a time; partials with m_s = -inf weigh 0 and are not read.
        # The output is contiguous (B, H, T, D): row (r, t) of (b, kv) is row (b * KV + kv) * REP * T + r * T + t
        bk = tl.program_id(0).to(tl.int64)
        row = tl.program_id(1)
        d = tl.arange(0, D)
        ws0 = bk * n_splits * BLOCK_M + row
        m_max = float("-inf")
        for s0 in range(0, n_splits, BLOCK_SPLITS):
            sp = s0 + tl.arange(0, BLOCK_SPLITS)
            m_s = tl.load(m_ptr + ws0 + sp * BLOCK_M, mask=sp < n_splits, other=float("-inf"))
            m_max = tl.maximum(m_max, tl.max(m_s, axis=0))
        m_ref = tl.where(m_max == float("-inf"), 0.0, m_max)
        l_sum = 0.0
        acc = tl.zeros((D,), dtype=tl.float32)
        for s0 in range(0, n_splits, BLOCK_SPLITS):
            sp = s0 + tl.arange(0, BLOCK_SPLITS)
            smask = sp < n_splits
            m_s = tl.load(m_ptr + ws0 + sp * BLOCK_M, mask=smask, other=float("-inf"))
            l_s = tl.load(l_ptr + ws0 + sp * BLOCK_M, mask=smask, other=0.0)
            w = tl.exp2(m_s - m_ref)  # 0 where m_s = -inf
            a = tl.load(acc_ptr + (ws0 + sp * BLOCK_M)[:, None] * D + d[None, :], mask=(m_s > float("-inf"))[:, None],
                        other=0.0)
            l_sum += tl.sum(w * l_s, axis=0)
            acc += tl.sum(w[:, None] * a, axis=0)
        out = tl.where(l_sum > 0.0, acc / l_sum, 0.0)  # l = 0 cannot happen (position 0 is always allowed)
        rows_per_bk = tl.num_programs(1)
        tl.store(out_ptr + (bk * rows_per_bk + row) * D + d, out.to(out_ptr.dtype.element_ty))


def _decode_check(q: Tensor, k: Tensor, v: Tensor, input_pos: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape or input_pos.shape != (q.shape[2],) \
            or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or k.shape[2] == 0 or q.shape[1] % k.shape[1]:
        raise ValueError(f"decode_attention: bad shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
                         f"input_pos {tuple(input_pos.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"decode_attention: q, k, v must share a dtype of bf16, fp16 or fp32, got "
                         f"{q.dtype}, {k.dtype}, {v.dtype}")
    if input_pos.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"decode_attention: input_pos must be int32 or int64, got {input_pos.dtype}")
    D = q.shape[3]
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"decode_attention: head dim must be a power of two in [16, 256], got {D}")
    rows = q.shape[1] // k.shape[1] * q.shape[2]
    if rows > 128:
        raise ValueError(f"decode_attention: rep * T = {rows} query rows per KV head > 128: not a decode shape")
    if k.stride(-1) != 1 or v.stride(-1) != 1:
        raise ValueError(f"decode_attention: k and v need a contiguous last dim, got strides {k.stride()}, "
                         f"{v.stride()}")


def _decode_attention_triton(q: Tensor, k: Tensor, v: Tensor, input_pos: Tensor) -> Tensor:
    B, H, T, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    rep = H // KV
    q = q if q.stride(-1) == 1 else q.contiguous()  # q is small; k, v keep their strides (no cache copy)
    out = _empty(B, H, T, D, dtype=q.dtype, device=q.device)
    if B == 0 or T == 0:
        return out
    cfg = DECODE_ATTN_CONFIG
    block_m = max(16, triton.next_power_of_2(rep * T))
    block_s = _decode_attn_block_s(block_m, D, q.element_size())
    n_splits = _decode_attn_splits(B, KV, S, block_s)
    m = _empty(B * KV, n_splits, block_m, dtype=torch.float32, device=q.device)
    l = _empty(B * KV, n_splits, block_m, dtype=torch.float32, device=q.device)
    acc = _empty(B * KV, n_splits, block_m, D, dtype=torch.float32, device=q.device)
    _launch(_decode_attn_split_kernel, (B * KV, n_splits), q.is_cuda, q, k, v, input_pos.contiguous(), m, l, acc,
            S, T, KV, triton.cdiv(S, block_s), q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
            k.stride(2), v.stride(0), v.stride(1), v.stride(2), 1.4426950408889634 * D ** -0.5, REP=rep, D=D,
            BLOCK_M=block_m, BLOCK_S=block_s, DOT_FP32=q.dtype == torch.float32 or not q.is_cuda,
            num_warps=cfg["warps"], num_stages=cfg["stages"])
    # BLOCK_SPLITS x D partials a step: at most 4096 fp32 values, 32 registers a thread at 4 warps
    _launch(_decode_attn_combine_kernel, (B * KV, rep * T), q.is_cuda, m, l, acc, out, n_splits, D=D,
            BLOCK_M=block_m, BLOCK_SPLITS=min(triton.next_power_of_2(n_splits), 4096 // D),
            num_warps=cfg["combine_warps"])
    return out


@torch.library.triton_op("ultramem::decode_attention", mutates_args=())
def _decode_attention_op(q: Tensor, k: Tensor, v: Tensor, input_pos: Tensor) -> Tensor:
    if _use_triton(q):
        return _decode_attention_triton(q, k, v, input_pos)
    return decode_attention_reference(q, k, v, input_pos)


def decode_attention(q: Tensor, k: Tensor, v: Tensor, input_pos: Tensor) -> Tensor:
    """Attention of the T new tokens' queries q (B, H, T, D) at positions input_pos (T,) over the caches
    k, v (B, KV, S, D), causal by position, grouped-query for KV < H (see the section header): the custom
    op, split-KV Triton kernels on CUDA, the reference on the CPU. Inference only: raises RuntimeError if
    grad mode is on and q, k or v requires grad (call it under torch.no_grad() or torch.inference_mode())."""
    _decode_check(q, k, v, input_pos)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise RuntimeError("decode_attention is inference only (no autograd formula): call it under "
                           "torch.no_grad() or torch.inference_mode(), or pass tensors that do not require grad")
    return torch.ops.ultramem.decode_attention(q, k, v, input_pos)
