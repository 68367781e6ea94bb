"""
Triton kernels, each next to its plain-PyTorch reference with the same signature:

    mem_lookup(values, rows, blocks, scores, E) -> pooled (T, E, Dv)     the one function memory.py calls
    moe_grouped_mm(x, w, offs, gelu=False) -> (M, N)                     MoE decoding (model.py, moe_impl)
    moe_gather_mm(x, w, ids, x_div=1) -> (M, N) fp32                     MoE decoding of a few tokens
    moe_decode(x, router_w, w_fc, w_proj, top_k, renorm) -> (N, D)       the whole MoE layer, a few tokens
    topk_indices(x, k, sorted=True, impl="auto") -> (..., k) int64       the retrieval's top-k (mem_topk)
    decode_attention(q, k, v, input_pos) -> (B, H, T, D)                 split-KV decode attention (attn_decode)

The first is the memory layer's lookup (spec sections 3, 5, 6: steps 7-8, the IVE decode, MCS weighting
and pooling per virtual block); topk_indices serves the retrieval (no gradient); the other four are
inference-only. Each has its own section below.

The lookup is the custom op `ultramem::mem_lookup` (forward) with `ultramem::mem_lookup_bwd` as its autograd
backward, both `torch.library.triton_op`s, so torch.compile(fullgraph=True) sees through them. The op
body runs the Triton kernels on CUDA and the reference on the CPU; `set_impl("triton")` runs the Triton
kernels on CPU tensors too, under the interpreter (TRITON_INTERPRET=1 set before triton is imported).

Backward, two schemes for the value gradient (a dense (N, Dv) tensor in values.dtype):
  "sorted" (default, deterministic): sort the T*K slots by row, then one program per tile of physical rows
           sums its slots' contributions in a fixed order and writes the rows once (zeros for untouched rows);
           a tile with more than CONFIG["bwd_max_slots"] slots is split into pieces whose fp32 sums a second
           kernel adds in order. The score gradients: by their own kernel (bwd_split_scores, the default), or
           by the same program from the rows it holds.
  "atomic":  fp32 zero buffer + atomic adds per slot, then a cast; refused while deterministic.
Deterministic mode: set_deterministic(True) or torch.use_deterministic_algorithms(True).
"""

import math
import os

import torch
from torch import Tensor

try:  # triton is needed on CUDA (and for the interpreter); CPU-only installs run the reference
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
try:  # programmatic dependent launch (Hopper and later): moe_decode chains its launches with it at 1 token
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover - triton absent (or too old: requirements.txt asks for 3.6+)
    gdc_launch_dependents = gdc_wait = None


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
# *_block_d: the value columns per program (0: the whole row in one program); smaller tiles mean fewer registers
# and more programs (with fwd_sdot and without fwd_xcore the forward may take fewer: the largest power of two
# dividing an MCS core, _fwd_tile). bwd_rows: value rows per backward program (0: by shape, 32 or 16 with
# bwd_block_i 16 or 32; set both to fix them, as bench.py's sweep does). bwd_zero_fill: zero the gradient with a
# memset and let tiles without slots write nothing, instead of every program writing its rows (zeros included).
# bwd_value_tile: the sorted backward reads each tile's R value rows once and picks the slots' rows from them (a
# one-hot dot) instead of gathering a value row per slot: for tables whose rows are selected several times per step
# (the UltraMem-151M step: 4.3 slots per row, 201.4 against 208.7 ms per step on the H200, session 8: on in
# config/ultramem_151m.py's lookup_config); off by default (1.5-1.8x slower on uniform random indices, no
# faster for the small models; docs/BENCHMARKS.md). fwd_cols_inner / bwd_cols_inner: the
# forward's / the sorted backward's column tiles of one token / row tile are consecutive programs of a 1-D grid,
# so that they run at about the same time: a selected value row is then read whole (1 KB at 512 bf16 columns)
# within a short time instead of a quarter at a time in four passes over the tokens; the token's indices are
# read four times close together (L1/L2) rather than far apart. Timed in session 8 (one key for both then): the
# forward 6% faster on shape (a), 3% slower on (b), the backward within noise at its best tiles; in session 12's
# sweep (b)'s best backward tile was 4.82 ms with it against 4.13 without (docs/BENCHMARKS.md): the backward's
# stays off, except with bwd_sdot. fwd_sdot (bf16 values) / bwd_sdot (bf16 output gradients): the forward /
# backward puts the MCS scores into the one-hot operand and feeds the value / output-gradient tile to the tensor
# cores unconverted (_lookup_fwd_kernel, _lookup_bwd_sorted_kernel); with bf16 scores in one dot. bwd_sdot is
# taken where the backward's column tile lies inside one MCS core, as fwd_sdot with the forward's, bwd_block_d or
# else the largest power of two of 64 or more dividing the core (_core_tile), and then with the column tiles side
# by side (in the other order it was no faster: 5.24 against 5.21 ms per column on shape (a), session 13).
# Defaults: the best of bench.py's sweeps at 32,768 tokens on both shapes (docs/KERNELS.md). Session 12
# (2026-11-30): fwd_sdot with fwd_cols_inner took shape (a) from 815.6 to 627.4 us (3.72 TB/s useful), and (b)
# from 1,431 to 1,313 us at 64 columns (its cores of 192 columns then hold whole tiles), in one sweep. Session 13
# (same day): one dot for bf16 scores, (a) 600 us, (b) 1,130-1,200 us; bwd_sdot, (a)'s backward 5.11 -> 4.49 ms
# (twice each, alternated); on (b) it was not taken (128-column tiles cross its cores; at 64 columns it was no
# faster, 4.20 against 4.15 ms). Session 14: with bwd_sdot the backward's loop carries the next step's row
# numbers, (a) 4.55 -> 4.19 ms, and (b) takes bwd_sdot at 64 columns, 4.13 -> 3.93 ms (twice each, alternated).
# Session 15: fwd_tokens, a forward program's tokens taken one after the other (_fwd_tokens: where that leaves
# enough programs), 2; fwd_xcore, the forward's fwd_sdot path for tiles across MCS cores (_fwd_tile), taking (b) at
# 128 columns instead of 64; fwd_xcore_cols_inner, fwd_cols_inner for fwd_xcore's tiles, off; fwd_block_k_few, the
# slots per step at decode sizes (FWD_FEW_PROGRAMS). Together, alternated with the old code: (a) 601 -> 578 us, (b)
# 1,130 -> 984 us (side by side) and 966 us (the 2-D grid); docs/BENCHMARKS.md.
# bwd_split_scores (session 15, on unless bwd_value_tile is): the sorted backward leaves the score gradients to
# _lookup_bwd_scores_kernel, shaped like the forward (one program per token, whole value rows, bwd_gs_block_k slots
# x bwd_gs_block_d columns at a time, written in slot order), and gathers no value rows itself. The sorted kernel
# gathered each slot's value row in 128 B pieces (shape (b)) for the score gradients alone, and they cost a (column
# tiles, T*K, h) fp32 buffer, its sum and a permutation back. H200, 32,768 tokens, alternated: (a) 4,117-4,133 ->
# 3,068-3,075 us, (b) 3,909-3,929 -> 2,993-2,998 us (docs/BENCHMARKS.md). bench.py --mode=kernels checks both
# settings against float64 and times the other beside the default (bwd_split).
# Session 16: bwd_prep, the per-slot inputs put in row order by one kernel (_bwd_prep_kernel) instead of six PyTorch
# ones: (b) 3,004-3,009 -> 2,908 us, (a) 3,100 -> 3,044 us (alternated twice). bwd_split_warps, the sorted kernel's
# warps on the bwd_sdot path (bf16 output gradients) when it computes no score gradients (bwd_split_scores): 2;
# bf16 (b) 2,908 -> 2,634 us, (a) 3,045 -> 2,940 us (the sweep over warps x rows x slots per step, whose best tiles
# at 2 warps are the ones bwd_rows=0 picks; 1 warp: (b) 2,601, (a) 3,104 us). With fp32 values (the per-column
# path) 2 warps were slower, (b) 5,468 -> 5,702 us, (a) 6,306 -> 6,702 us: it keeps bwd_warps (4), as do the
# other paths. bwd_gs_warps, the score kernel's warps: 4 (its sweep over warps x slots x columns found the
# defaults best within 0.4%).
# bwd_max_slots (session 18): the most slots one sorted-backward program takes. A row tile with more (rows that many
# tokens select: real text makes some rows hot, and in bench.py's UltraMem-151M training step, after ten steps on
# one batch of random tokens, every token selects the same 160 rows) is split into pieces of at most that many, whose
# fp32 sums _bwd_combine_kernel adds in order (deterministic); 0: one program per tile, however long. H200, the
# 151M's recorded indices (scripts/lookup_balance.py): per layer, bf16 values 3.2-3.7 -> 2.6-2.7 ms, fp32 6.3-7.0 ->
# 5.1-5.2 ms; 1,024, 2,048 and 4,096 within 2% of each other; the step 181.4 -> 176.2-177.1 ms. On uniform indices
# nothing is split. Session 19: the pieces placed without a scan (_bwd_work: cuts at the multiples of S in the sorted
# slots), which dropped session 18's two item kernels and their cumsum (docs/BENCHMARKS.md, session 19).
# (An index prefetch in the forward, the next slot block's indices loaded while this block's rows are in
# flight, was swept twice and never the best: removed in session 6; session 14 carried the next step's indices,
# session 15 also its gathered rows, a step ahead: both slower, docs/KERNELS.md.)
CONFIG = {"fwd_block_k": 32, "fwd_warps": 4, "fwd_block_d": 128, "fwd_stages": 1,
          "bwd_rows": 0, "bwd_block_i": 16, "bwd_warps": 4, "bwd_block_d": 128, "bwd_zero_fill": False,
          "bwd_value_tile": False, "fwd_cols_inner": True, "bwd_cols_inner": False, "fwd_sdot": True,
          "bwd_sdot": True, "atomic_warps": 4, "fwd_tokens": 2, "fwd_xcore": True,
          "fwd_block_k_few": 64, "fwd_xcore_cols_inner": False, "bwd_split_scores": True, "bwd_gs_block_k": 16,
          "bwd_gs_block_d": 128, "bwd_gs_warps": 4, "bwd_prep": True,
          "bwd_split_warps": 2, "bwd_max_slots": 2048}


def parse_config(spec: str) -> dict:
    """"key=int,key=int" (train.py's and bench.py's lookup_config) -> those CONFIG entries, checked: known keys,
    integer values, 0 or 1 for the switches. Raises ValueError, naming the bad item. Set them with
    CONFIG.update(...)."""
    got = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, eq, val = item.partition("=")
        if not eq or key not in CONFIG:
            raise ValueError(f"lookup_config: {item!r} is not key=value with a key of kernels.CONFIG ({', '.join(CONFIG)})")
        try:
            v = int(val)
        except ValueError:
            raise ValueError(f"lookup_config: {key}={val!r} is not an integer") from None
        if isinstance(CONFIG[key], bool):
            if v not in (0, 1):
                raise ValueError(f"lookup_config: {key} takes 0 or 1, got {v}")
            v = bool(v)
        got[key] = v
    return got


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


def _config_key(config: dict) -> str:
    """What picks an op's kernels and launch parameters (its config dict, and this module's implementation,
    backward scheme, deterministic mode, output poisoning and FWD_FEW_PROGRAMS), as one string. Every public
    function here passes it to its custom op, which ignores it: it is there so that a compiled graph records the
    configuration it was traced with. Inductor expands a triton_op into its kernel launches when it compiles the
    graph, reading the configuration then; without the key in the graph, torch.compile's caches (AOTAutogradCache,
    on by default) would hand a run with another lookup_config or deterministic mode the kernels compiled for an
    earlier run (seen on the H200 in session 16: a run with bwd_value_tile=1 ran the kernels of the run before it,
    with 0). Dynamo reads the globals while tracing the caller, so a change within a process recompiles too."""
    cfg = ",".join(f"{k}={v}" for k, v in config.items())
    return f"{_IMPL}|{_BWD_SCHEME}|{is_deterministic()}|{POISON_OUTPUTS}|{FWD_FEW_PROGRAMS}|{cfg}"


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
    def _score_dot(hit, s, v, acc, SPLIT: tl.constexpr):
        # acc += (hit * s) @ v: hit (E_PAD, BLOCK_K) the slots' one-hot blocks, s (1, BLOCK_K) their scores (or
        # (E_PAD, BLOCK_K), a score per row of the operand), v
        # (BLOCK_K, BLOCK_D) bf16 values, unconverted. The (E_PAD, BLOCK_K) fp32 operand is split into bf16 hi + lo
        # (16 of its 24 mantissa bits), or, for bf16 scores (memory.py's, with bf16 values), exact in one bf16 part
        # and one dot; SPLIT=False (the interpreter, whose bf16 dot is broken) takes fp32
        a = tl.where(hit, s.to(tl.float32), 0.0)
        if not SPLIT:
            return tl.dot(a, v.to(tl.float32), acc, input_precision="ieee")
        if s.dtype == tl.bfloat16:
            return tl.dot(a.to(tl.bfloat16), v, acc)
        a_hi = a.to(tl.bfloat16)
        acc = tl.dot(a_hi, v, acc)
        return tl.dot((a - a_hi.to(tl.float32)).to(tl.bfloat16), v, acc)

    @triton.jit
    def _pick_rows(pick, t_hi, t_mid, t_lo, SPLIT: tl.constexpr, V16: tl.constexpr):
        # the rows of a value tile chosen by the one-hot pick (BLOCK_I, R) -> (BLOCK_I, BLOCK_D) fp32, exactly:
        # every output is one product with 1.0. t_hi is the tile itself for 16-bit values (one tensor-core dot);
        # for fp32 values t_hi + t_mid + t_lo are its three bf16 parts, which carry all 24 mantissa bits. SPLIT=False
        # (the interpreter): t_hi is the tile, a plain fp32 product
        # (one return, after constexpr if / elif / else: Triton still type-checks code after a constexpr-taken
        # return, and a bf16 x fp16 dot there failed to compile for fp16 values)
        if not SPLIT:
            out = tl.dot(pick.to(tl.float32), t_hi.to(tl.float32), input_precision="ieee")
        elif V16:
            out = tl.dot(pick.to(t_hi.dtype), t_hi)
        else:
            p = pick.to(tl.bfloat16)
            out = tl.dot(p, t_hi)
            out = tl.dot(p, t_mid, out)
            out = tl.dot(p, t_lo, out)
        return out

    @triton.jit
    def _grid_pos(n_ct, COLS_INNER: tl.constexpr):
        # (token or row tile as int64, column tile) of this program: from a 1-D grid whose n_ct column tiles of
        # one token / row tile are consecutive (COLS_INNER), or from a 2-D grid (tokens / row tiles, n_ct)
        if COLS_INNER:
            pid = tl.program_id(0)
            row, col = (pid // n_ct).to(tl.int64), pid % n_ct
        else:
            row, col = tl.program_id(0).to(tl.int64), tl.program_id(1)
        return row, col

    @triton.jit
    def _slot_ids(rows_ptr, blocks_ptr, base, k0, K, BLOCK_K: tl.constexpr):
        # a token's slots k0 .. k0 + BLOCK_K - 1: their positions, mask (slots past K), virtual blocks (-1 when
        # masked) and physical rows
        ks = k0 + tl.arange(0, BLOCK_K)
        kmask = ks < K
        b = tl.load(blocks_ptr + base + ks, mask=kmask, other=-1)
        r = tl.load(rows_ptr + base + ks, mask=kmask, other=0).to(tl.int64)
        return ks, kmask, b, r

    @triton.jit
    def _slot_block(rows_ptr, blocks_ptr, scores_ptr, base, k0, K, core, H: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_D: tl.constexpr):
        # a token's slots k0 .. k0 + BLOCK_K - 1: their virtual blocks, physical rows and the (BLOCK_K, BLOCK_D)
        # tile of MCS scores (each column takes its core's score); slots past K are masked out
        ks, kmask, b, r = _slot_ids(rows_ptr, blocks_ptr, base, k0, K, BLOCK_K)
        s = tl.zeros((BLOCK_K, BLOCK_D), dtype=tl.float32)
        for c in tl.static_range(H):
            s_c = tl.load(scores_ptr + (base + ks) * H + c, mask=kmask, other=0.0).to(tl.float32)
            s = tl.where(core[None, :] == c, s_c[:, None], s)
        return b, r, s, kmask

    @triton.jit
    def _lookup_fwd_kernel(values_ptr, rows_ptr, blocks_ptr, scores_ptr, out_ptr, T, K, Dv, chunk, n_ct,
                           E: tl.constexpr, H: tl.constexpr, E_PAD: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_D: tl.constexpr, SPLIT: tl.constexpr, COLS_INNER: tl.constexpr,
                           SDOT: tl.constexpr, TPP: tl.constexpr, XCORE: tl.constexpr, E_P: tl.constexpr):
        # one program per (token, BLOCK_D value columns): BLOCK_K selected rows at a time, each column
        # weighted by the MCS score of its core, then pooled into the E virtual blocks by a one-hot
        # (E_PAD, BLOCK_K) matmul. COLS_INNER: a 1-D grid in which the n_ct column tiles of a token are
        # consecutive programs, so they run at about the same time and read each selected row whole between
        # them; otherwise grid (tokens, n_ct), where tile j of every token runs before tile j + 1 of any token.
        # SDOT (bf16 values, the tile inside one MCS core): the scores go into the small operand instead, the
        # (E_PAD, BLOCK_K) one-hot times the slots' scores, and the value tile goes from the load to the tensor
        # cores as it is (bf16 is exact there): no fp32 copy of the tile and no per-element multiply or split, the
        # same accuracy (16 mantissa bits of each score, exact products). (Tiles across a core boundary, one such
        # product per core over its columns, were timed in session 12 and lost, also where no tile crossed; one
        # program per MCS core, its columns padded to a power of two, in session 13: 2% faster on shape (a), 2%
        # slower on (b), not kept: docs/KERNELS.md.)
        # With bf16 scores (memory.py casts them to the values' dtype) there is no lo part: one dot (_score_dot).
        # XCORE (with SDOT; fwd_xcore, a tile across MCS core boundaries): the small operand's rows are (core c,
        # block e) pairs, row c * E_P + e holding the one-hot of block e times core c's scores (E_PAD >= H_P * E_P
        # rows; the tensor cores take 16 rows at least, so for E=4, h=2 no more than SDOT's), one dot as SDOT's,
        # the big tile as loaded; at the token's end each column keeps the rows of its own core. So any tile width
        # takes this path: on shape (b) 128 columns (256 B of each row per program) instead of the 64 that fit in
        # its cores, 986 against 1,103 us (session 15).
        # TPP: the program's tokens, TPP consecutive ones, one after the other
        g, j = _grid_pos(n_ct, COLS_INNER)
        cols = j * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = cols < Dv
        core = cols // chunk  # (BLOCK_D,) which MCS score weights each column
        eids = tl.arange(0, E_PAD)
        for t in range(g * TPP, tl.minimum(g * TPP + TPP, T)):
            base = t * K
            acc = tl.zeros((E_PAD, BLOCK_D), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                if XCORE:  # operand row c * E_P + e: block e weighted by core c's scores (rows past H * E_P zero)
                    ks, kmask, b, r = _slot_ids(rows_ptr, blocks_ptr, base, k0, K, BLOCK_K)
                    v = tl.load(values_ptr + r[:, None] * Dv + cols[None, :], mask=kmask[:, None] & cmask[None, :],
                                other=0.0)
                    c_r = eids // E_P
                    sw = tl.zeros((E_PAD, BLOCK_K), dtype=scores_ptr.dtype.element_ty)  # the scores' dtype
                    for c in tl.static_range(H):
                        s_c = tl.load(scores_ptr + (base + ks) * H + c, mask=kmask, other=0.0)
                        sw = tl.where((c_r == c)[:, None], s_c[None, :], sw)
                    acc = _score_dot(((eids % E_P)[:, None] == b[None, :]) & (c_r < H)[:, None], sw, v, acc, SPLIT)
                elif SDOT:
                    ks, kmask, b, r = _slot_ids(rows_ptr, blocks_ptr, base, k0, K, BLOCK_K)
                    s = tl.load(scores_ptr + (base + ks) * H + (j * BLOCK_D) // chunk, mask=kmask, other=0.0)
                    v = tl.load(values_ptr + r[:, None] * Dv + cols[None, :], mask=kmask[:, None] & cmask[None, :],
                                other=0.0)
                    acc = _score_dot(eids[:, None] == b[None, :], s[None, :], v, acc, SPLIT)
                else:
                    b, r, s, kmask = _slot_block(rows_ptr, blocks_ptr, scores_ptr, base, k0, K, core, H, BLOCK_K,
                                                 BLOCK_D)
                    v = tl.load(values_ptr + r[:, None] * Dv + cols[None, :], mask=kmask[:, None] & cmask[None, :],
                                other=0.0)
                    acc = _segment_dot(eids[:, None] == b[None, :], v.to(tl.float32) * s, acc, SPLIT)
            if XCORE:  # each column from the rows of its core
                acc3 = tl.reshape(acc, (E_PAD // E_P, E_P, BLOCK_D))
                cid = tl.arange(0, E_PAD // E_P)[:, None, None]
                res = tl.sum(tl.where(cid == core[None, None, :], acc3, 0.0), axis=0)  # (E_P, BLOCK_D)
                es = tl.arange(0, E_P)
                out = out_ptr + (t * E + es[:, None]) * Dv + cols[None, :]
                tl.store(out, res.to(out_ptr.dtype.element_ty), mask=(es[:, None] < E) & cmask[None, :])
            else:
                out = out_ptr + (t * E + eids[:, None]) * Dv + cols[None, :]
                tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(eids[:, None] < E) & cmask[None, :])

    @triton.jit
    def _bwd_prep_kernel(perm_ptr, blocks_ptr, scores_ptr, grows_ptr, sscores_ptr, NK, K, E: tl.constexpr,
                         H: tl.constexpr, H_P: tl.constexpr, BLOCK: tl.constexpr):
        # the sorted backward's per-slot inputs in row order (bwd_prep), one pass instead of six PyTorch kernels:
        # for sorted position i with slot p = perm[i] (slot p is token p // K, its k-th choice),
        # grows[i] = (p // K) * E + blocks[p] (the slot's output-gradient row) and sscores[i] = scores[p]
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = i < NK
        p = tl.load(perm_ptr + i, mask=m, other=0)
        b = tl.load(blocks_ptr + p, mask=m, other=0)
        tl.store(grows_ptr + i, ((p // K) * E + b).to(tl.int32), mask=m)
        hs = tl.arange(0, H_P)
        m2 = m[:, None] & (hs < H)[None, :]
        s = tl.load(scores_ptr + p[:, None] * H + hs[None, :], mask=m2, other=0.0)
        tl.store(sscores_ptr + i[:, None] * H + hs[None, :], s, mask=m2)

    @triton.jit
    def _bwd_slot_rows(srows_ptr, grows_ptr, idx, end):
        # the sorted backward's slots idx (masked past end): their value rows and output-gradient rows, int64
        imask = idx < end
        row = tl.load(srows_ptr + idx, mask=imask, other=0).to(tl.int64)
        grow = tl.load(grows_ptr + idx, mask=imask, other=0).to(tl.int64)
        return row, grow

    @triton.jit
    def _bwd_work(pid, srows_ptr, toffs_ptr, NK, tiles, S, C, R: tl.constexpr):
        # the sorted backward's program pid -> (tile, start, end, part): its row tile (-1: nothing to do), its slots
        # start:end (int64: per-slot offsets idx * H are computed from them) and its scratch part (-1: it writes the
        # tile's rows itself). No scan and no search: the slots (in row order, NK of them) are cut at every multiple
        # of S (chunk boundaries c * S, c < C = ceil(NK / S)), and only tiles of more than S slots are split there.
        # Programs 0 .. tiles-1 take a tile from its first slot: all of it (part -1), or for a split tile up to its
        # first boundary c0 (part C + c0). Program tiles + c takes the piece from boundary c * S to the next or to
        # its tile's end (part c), if that boundary lies inside a split tile, found from its slot's row (srows);
        # else nothing. So a split tile's pieces are parts C + c0, c0, c0 + 1, ... in slot order, each at most S.
        # _bwd_work_reference is the same in PyTorch (the tests check its invariants, and compare the two).
        is_tile = pid < tiles
        b = (pid - tiles).to(tl.int64) * S  # this boundary program's boundary
        inside = (~is_tile) & (b > 0) & (b < NK)
        tile = tl.where(is_tile, pid, tl.load(srows_ptr + b, mask=inside, other=0) // R)
        t_lo = tl.load(toffs_ptr + tile).to(tl.int32)  # int32 arithmetic (NK < 2**31): 64-bit division is slow
        t_hi = tl.load(toffs_ptr + tile + 1).to(tl.int32)
        b32 = b.to(tl.int32)  # (wraps for the tile programs, which do not use it)
        split = t_hi - t_lo > S
        c0 = t_lo // S + 1  # the tile's first boundary after its first slot, c0 * S = t_lo + S - t_lo % S
        start = tl.where(is_tile, t_lo, b32)
        # the ends as start + a length, so that nothing near 2**31 overflows: min(t_hi, c0 * S), min(t_hi, b + S)
        end = tl.where(is_tile, tl.where(split, t_lo + tl.minimum(t_hi - t_lo, S - t_lo % S), t_hi),
                       b32 + tl.minimum(S, t_hi - b32))
        part = tl.where(is_tile, tl.where(split, C + c0, -1), pid - tiles)
        live = is_tile | (inside & split & (t_lo < b32))
        return (tl.where(live, tile, -1), start.to(tl.int64), tl.where(live, end, start).to(tl.int64),
                tl.where(live, part, -1))

    @triton.jit
    def _lookup_bwd_sorted_kernel(gout_ptr, values_ptr, sscores_ptr, grows_ptr, srows_ptr, toffs_ptr,
                                  gvalues_ptr, scratch_ptr, gs_part_ptr, N, NK, Dv, chunk, n_ct, tiles, S, C,
                                  H: tl.constexpr,
                                  R: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr,
                                  SPLIT: tl.constexpr, SKIP_EMPTY: tl.constexpr, VTILE: tl.constexpr,
                                  V16: tl.constexpr, COLS_INNER: tl.constexpr, SDOT: tl.constexpr,
                                  CARRY: tl.constexpr, GS: tl.constexpr):
        # one program per (piece of work, BLOCK_D value columns). The slots are in row order (a stable sort): slot i
        # has value row srows[i], output-gradient row grows[i] (t * E + block) and scores sscores[i], so that every
        # per-slot load is contiguous and only the two row gathers are indirect. A program's work (_bwd_work) is a
        # tile of R consecutive physical rows and a range start:end of its slots (toffs: the tiles' slot offsets):
        # all of them, or, for a tile with more than S = bwd_max_slots slots (rows that many tokens select), one
        # piece of at most S, so that no program's loop is much longer than the others'. The slots are reduced in
        # that fixed order by a one-hot (R, BLOCK_I) matmul. A whole tile's rows are written once (zeros where no
        # slot selected it), so no zero fill and no atomics; a piece (part >= 0) writes its fp32 sums to
        # scratch[part], and _bwd_combine_kernel adds a tile's pieces in order.
        # SKIP_EMPTY: the caller zero-filled, and a tile without slots writes
        # nothing. Score gradients, in slot order: this program's columns' share, per core, into
        # gs_part[column tile]. VTILE: the tile's R value rows are read once, contiguously (where it has slots), and
        # each slot's row is picked from them by a one-hot dot, instead of gathered per slot: fewer bytes where rows
        # are selected more than once (R rows against R x slots-per-row gathers), more where most are not.
        # SDOT (bwd_sdot; bf16 output gradients, the tile inside one MCS core, taken with COLS_INNER): as the
        # forward's fwd_sdot, the slots' scores go into the one-hot operand and the bf16 output-gradient
        # rows into the dot as loaded (no per-element score tile, multiply or split); the score gradients' row sums
        # need no per-core select, and the other cores' shares of this column tile are written as zeros.
        # GS: the score gradients here; without it (bwd_split_scores) _lookup_bwd_scores_kernel computes them and
        # this kernel gathers no value rows (VTILE is then off).
        # CARRY (taken with SDOT): each step loads the next step's value and output-gradient row numbers at its
        # end and carries them into the loop's next turn, instead of loading its own at its start. The same loads
        # in the same order, compiled differently: with SDOT 8% faster on shape (a) (and on (b) at 64 columns),
        # without it 18% slower on shape (b) (H200, session 14, docs/BENCHMARKS.md)
        pid, j = _grid_pos(n_ct, COLS_INNER)  # (program, column tile); COLS_INNER as in the forward
        tile, start, end, part = _bwd_work(pid, srows_ptr, toffs_ptr, NK, tiles, S, C, R)
        n0 = tl.maximum(tile, 0).to(tl.int64) * R
        cols = j * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = cols < Dv
        core = cols // chunk
        rids = tl.arange(0, R)
        gs_part = gs_part_ptr + j.to(tl.int64) * NK * H
        acc = tl.zeros((R, BLOCK_D), dtype=tl.float32)
        if VTILE:
            vt_mask = ((n0 + rids) < N)[:, None] & cmask[None, :] & ((rids * 0 + start) < end)[:, None]
            t_hi = tl.load(values_ptr + (n0 + rids)[:, None] * Dv + cols[None, :], mask=vt_mask, other=0.0)
            t_mid = t_hi
            t_lo = t_hi
            if SPLIT and not V16:  # fp32 values: three bf16 parts, split once per program
                vt = t_hi
                t_hi = vt.to(tl.bfloat16)
                rest = vt - t_hi.to(tl.float32)
                t_mid = rest.to(tl.bfloat16)
                t_lo = (rest - t_mid.to(tl.float32)).to(tl.bfloat16)
        if CARRY:
            idx = start + tl.arange(0, BLOCK_I)
            row, grow = _bwd_slot_rows(srows_ptr, grows_ptr, idx, end)
        for i0 in range(start, end, BLOCK_I):
            if not CARRY:
                idx = i0 + tl.arange(0, BLOCK_I)
                row, grow = _bwd_slot_rows(srows_ptr, grows_ptr, idx, end)
            imask = idx < end
            m2 = imask[:, None] & cmask[None, :]
            g_in = tl.load(gout_ptr + grow[:, None] * Dv + cols[None, :], mask=m2, other=0.0)
            g = g_in.to(tl.float32)
            if GS:
                if VTILE:
                    pick = (rids[None, :] == (row - n0)[:, None]) & imask[:, None]  # (BLOCK_I, R)
                    v = _pick_rows(pick, t_hi, t_mid, t_lo, SPLIT, V16)
                else:
                    v = tl.load(values_ptr + row[:, None] * Dv + cols[None, :], mask=m2, other=0.0).to(tl.float32)
                gv = g * v
            onehot = (rids[:, None] == (row - n0)[None, :]) & imask[None, :]
            if SDOT:
                c_tile = (j * BLOCK_D) // chunk
                if GS:
                    gs_row = tl.sum(gv, axis=1)
                    for c in tl.static_range(H):
                        tl.store(gs_part + idx * H + c, tl.where(c == c_tile, gs_row, 0.0), mask=imask)
                s_t = tl.load(sscores_ptr + idx * H + c_tile, mask=imask, other=0.0)
                acc = _score_dot(onehot, s_t[None, :], g_in, acc, SPLIT)  # (R, BLOCK_D)
            else:
                s = tl.zeros((BLOCK_I, BLOCK_D), dtype=tl.float32)
                for c in tl.static_range(H):
                    in_c = core[None, :] == c
                    s_c = tl.load(sscores_ptr + idx * H + c, mask=imask, other=0.0).to(tl.float32)
                    s = tl.where(in_c, s_c[:, None], s)
                    if GS:
                        tl.store(gs_part + idx * H + c, tl.sum(tl.where(in_c, gv, 0.0), axis=1), mask=imask)
                acc = _segment_dot(onehot, g * s, acc, SPLIT)  # (R, BLOCK_D)
            if CARRY:
                idx = idx + BLOCK_I
                row, grow = _bwd_slot_rows(srows_ptr, grows_ptr, idx, end)
        out = gvalues_ptr + (n0 + rids)[:, None] * Dv + cols[None, :]
        # (the scalar conditions broadcast by `rids * 0 +`: the interpreter rejects a vector & scalar mask)
        rmask = ((n0 + rids) < N) & ((rids * 0 + tile) >= 0)
        if SKIP_EMPTY:
            rmask = rmask & (rids * 0 + start < end)
        if part < 0:  # one store executed (two masked stores slowed shape (a)'s short tiles: 2,941 -> 3,434 us)
            tl.store(out, acc.to(gvalues_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])
        else:
            piece = scratch_ptr + (part.to(tl.int64) * R + rids)[:, None] * Dv + cols[None, :]
            tl.store(piece, acc, mask=rmask[:, None] & cmask[None, :])

    @triton.jit
    def _bwd_combine_kernel(scratch_ptr, srows_ptr, toffs_ptr, gvalues_ptr, N, NK, Dv, S, C, R: tl.constexpr,
                            BLOCK_D: tl.constexpr):
        # the value gradients of the row tiles that the sorted backward split into pieces (bwd_max_slots, _bwd_work):
        # one program per (chunk boundary c, BLOCK_D columns). The program of a split tile's first boundary c0 adds
        # the tile's pieces' fp32 sums in slot order (deterministic), scratch[C + c0], then scratch[c0 + q] for each
        # boundary inside the tile, and writes its rows once; the others do nothing
        c = tl.program_id(0)
        b = c.to(tl.int64) * S
        inside = (b > 0) & (b < NK)
        tile = tl.load(srows_ptr + b, mask=inside, other=0) // R
        t_lo = tl.load(toffs_ptr + tile)
        t_hi = tl.load(toffs_ptr + tile + 1)
        first = inside & (t_hi - t_lo > S) & (t_lo < b) & (b - S <= t_lo)
        n = tl.where(first, (t_hi - 1) // S - t_lo // S, 0)  # the boundaries inside the tile
        rids = tl.arange(0, R)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        cmask = cols < Dv
        live = (rids * 0 + first.to(tl.int32)) != 0  # (the interpreter rejects a vector & scalar mask)
        acc = tl.load(scratch_ptr + ((C + c).to(tl.int64) * R + rids)[:, None] * Dv + cols[None, :],
                      mask=live[:, None] & cmask[None, :], other=0.0)
        for q in range(0, n.to(tl.int32)):
            acc += tl.load(scratch_ptr + ((c + q).to(tl.int64) * R + rids)[:, None] * Dv + cols[None, :],
                           mask=cmask[None, :], other=0.0)
        n0 = tile.to(tl.int64) * R
        rmask = ((n0 + rids) < N) & live
        tl.store(gvalues_ptr + (n0 + rids)[:, None] * Dv + cols[None, :], acc.to(gvalues_ptr.dtype.element_ty),
                 mask=rmask[:, None] & cmask[None, :])

    @triton.jit
    def _lookup_bwd_scores_kernel(gout_ptr, values_ptr, rows_ptr, blocks_ptr, gscores_ptr, K, Dv, chunk,
                                  E: tl.constexpr, H: tl.constexpr, H_P: tl.constexpr, BLOCK_K: tl.constexpr,
                                  BLOCK_D: tl.constexpr, N_CHUNKS: tl.constexpr):
        # the score gradients alone (bwd_split_scores), shaped like the forward: one program per token, BLOCK_K
        # slots at a time, each slot's value row gathered whole (N_CHUNKS tiles of BLOCK_D columns, unrolled, so
        # their loads are in flight together) against its output-gradient row (the token's E rows, from L1/L2):
        # gscores[t, k, c] = sum over core c's columns of values[rows[t, k]] * grad_out[t, blocks[t, k]], in fp32,
        # in a fixed order, written in slot order (no partial sums, no permutation)
        t = tl.program_id(0).to(tl.int64)
        hs = tl.arange(0, H_P)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            b = tl.load(blocks_ptr + t * K + ks, mask=kmask, other=0).to(tl.int64)
            r = tl.load(rows_ptr + t * K + ks, mask=kmask, other=0).to(tl.int64)
            acc = tl.zeros((BLOCK_K, H_P), dtype=tl.float32)
            for ch in tl.static_range(N_CHUNKS):
                cols = ch * BLOCK_D + tl.arange(0, BLOCK_D)
                core = cols // chunk
                m2 = kmask[:, None] & (cols < Dv)[None, :]
                v = tl.load(values_ptr + r[:, None] * Dv + cols[None, :], mask=m2, other=0.0).to(tl.float32)
                g = tl.load(gout_ptr + (t * E + b)[:, None] * Dv + cols[None, :], mask=m2, other=0.0).to(tl.float32)
                p = v * g
                for c in tl.static_range(H):
                    part = tl.sum(tl.where(core[None, :] == c, p, 0.0), axis=1)
                    acc = tl.where(hs[None, :] == c, acc + part[:, None], acc)
            tl.store(gscores_ptr + (t * K + ks)[:, None] * H + hs[None, :], acc,
                     mask=kmask[:, None] & (hs < H)[None, :])

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
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
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
    if rows.numel() >= 2 ** 31:  # the sorted backward's slot positions and rows are 32-bit
        raise ValueError(f"mem_lookup: {rows.numel()} slots in one call; at most 2**31 - 1 (split the batch)")


def _block_d(Dv: int, key: str) -> int:
    """Columns per program: CONFIG[key] (a power of two), or the whole row (0), never more than the row."""
    full = triton.next_power_of_2(Dv)
    return min(CONFIG[key], full) if CONFIG[key] else full


def _core_tile(Dv: int, h: int, block_d: int, sdot: bool) -> tuple[int, bool]:
    """(columns per program, scores in the one-hot operand) for a pass whose sdot path is allowed (`sdot`): that path
    needs tiles inside one MCS core: block_d if it divides the core (or h is 1: one core), else the largest power of
    two dividing the core if that is 64 or more (shape (b): cores of 192 columns, 64-column tiles), else the
    per-column path at block_d."""
    chunk = Dv // h
    if not sdot:
        return block_d, False
    if h == 1 or chunk % block_d == 0:
        return block_d, True
    tile = chunk & -chunk  # the largest power of two dividing the core
    return (tile, True) if tile >= 64 else (block_d, False)


FWD_FEW_PROGRAMS = 4096  # the forward's programs (at one token per program and fwd_block_d columns: _fwd_few)
# below which (decode sizes) it keeps tiles inside the MCS cores (_fwd_tile) and takes fwd_block_k_few slots per
# step; and the programs that several tokens per program must leave (_fwd_tokens)


def _fwd_few(T: int, Dv: int) -> bool:
    """Whether the forward's programs are few (decode sizes): T tokens x fwd_block_d column tiles under
    FWD_FEW_PROGRAMS."""
    return T * triton.cdiv(Dv, _block_d(Dv, "fwd_block_d")) < FWD_FEW_PROGRAMS


def _fwd_tile(Dv: int, h: int, dtype: torch.dtype, T: int | None = None) -> tuple[int, bool, bool]:
    """The forward's (columns per program, fwd_sdot taken, across MCS cores) for T tokens (None: many): fwd_sdot for
    bf16 values; with fwd_xcore at fwd_block_d, the tile across core boundaries where it does not lie inside one
    core, unless the programs would be few (under FWD_FEW_PROGRAMS: decode sizes); else _core_tile's rule.
    On shape (b), cores of 192 columns, at 32,768 tokens: 64 columns with fwd_sdot took 1,313 us against 1,378 us
    for 128 columns without (session 12); 128 columns across the cores 986 us against 1,103-1,215 us for 64 inside
    them (session 15). At 1 and 64 tokens 64 columns inside them were faster: 10.0 / 11.9 against 10.8 / 12.7 us
    (CUDA graph, 32 slots per step)."""
    sdot, block_d = bool(CONFIG["fwd_sdot"]) and dtype == torch.bfloat16, _block_d(Dv, "fwd_block_d")
    if sdot and CONFIG["fwd_xcore"] and h > 1 and (Dv // h) % block_d and (T is None or not _fwd_few(T, Dv)):
        return block_d, True, True
    return (*_core_tile(Dv, h, block_d, sdot), False)


def _fwd_tokens(T: int, n_ct: int) -> int:
    """The forward's tokens per program: CONFIG["fwd_tokens"], fewer where that would leave under
    FWD_FEW_PROGRAMS programs (about 31 per SM of the H200; decode sizes take one token per program).
    Session 15 (H200, 32,768 tokens): 4 tokens per program with 64 slots per step took shape (b) from 1,211 to
    1,104 us, (a) from 591 to 581 us; with fwd_xcore on (b) 1 to 8 tokens per program were within 1% (982-991 us),
    2 and 4 the best on (b) and (a) respectively, within 1% of each other."""
    return max(1, min(CONFIG["fwd_tokens"], T * n_ct // FWD_FEW_PROGRAMS))


def _bwd_sdot(Dv: int, h: int, block_d: int, grad_dtype: torch.dtype) -> bool:
    """Whether the sorted backward puts the scores into its one-hot operand (CONFIG["bwd_sdot"]) at a column tile of
    block_d: bf16 output gradients and the tile inside one MCS core (h is 1, or block_d divides the core's Dv / h
    columns)."""
    return _core_tile(Dv, h, block_d, bool(CONFIG["bwd_sdot"]) and grad_dtype == torch.bfloat16) == (block_d, True)


def _bwd_tile(Dv: int, h: int, grad_dtype: torch.dtype) -> tuple[int, bool]:
    """The sorted backward's (columns per program, bwd_sdot taken): _core_tile with bwd_block_d, bwd_sdot for bf16
    output gradients. On shape (b) the 64-column tile with bwd_sdot took 3.93 ms against 4.13 ms for 128 columns
    without (session 14, with the loop that carries the next step's row numbers; before it, 4.20 against 4.15 ms)."""
    return _core_tile(Dv, h, _block_d(Dv, "bwd_block_d"), bool(CONFIG["bwd_sdot"]) and grad_dtype == torch.bfloat16)


def _bwd_split() -> bool:
    """Whether the sorted backward leaves the score gradients to _lookup_bwd_scores_kernel: bwd_split_scores, unless
    the value tile (bwd_value_tile, which reads the value rows for them in the sorted kernel) is asked for."""
    return bool(CONFIG["bwd_split_scores"]) and not CONFIG["bwd_value_tile"]


def _lookup_triton(values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor, E: int) -> Tensor:
    T, K = rows.shape
    N, Dv = values.shape
    h = scores.shape[-1]
    out = _empty(T, E, Dv, dtype=values.dtype, device=values.device)
    if T == 0:
        return out
    BLOCK_D, sdot, xcore = _fwd_tile(Dv, h, values.dtype, T)
    chunk = Dv // h
    E_P = triton.next_power_of_2(E)
    n_ct = triton.cdiv(Dv, BLOCK_D)
    # the grid's order: with tiles across the cores the 2-D grid was faster (shape (b), 966 against 984 us), inside
    # them the column tiles side by side (shape (a), 578 against 600 us; session 15)
    inner = bool(CONFIG["fwd_xcore_cols_inner" if xcore else "fwd_cols_inner"])
    tpp = _fwd_tokens(T, n_ct)
    groups = triton.cdiv(T, tpp)
    # few programs (decode sizes): more slots per step, fewer dependent round trips per program. Session 15, shape
    # (b) at 1 / 64 tokens under a CUDA graph: 8.7 / 10.9 us with 64 slots against 10.0 / 11.9 with 32
    block_k = CONFIG["fwd_block_k_few" if _fwd_few(T, Dv) else "fwd_block_k"]
    _launch(_lookup_fwd_kernel, (groups * n_ct,) if inner else (groups, n_ct), values.is_cuda, values.contiguous(),
            rows.contiguous(), blocks.contiguous(), scores.contiguous(), out, T, K, Dv, chunk, n_ct, E=E, H=h,
            E_PAD=max(16, triton.next_power_of_2(h) * E_P if xcore else E_P), BLOCK_K=block_k,
            BLOCK_D=BLOCK_D, SPLIT=values.is_cuda, COLS_INNER=inner, SDOT=sdot, TPP=tpp, XCORE=xcore, E_P=E_P,
            num_warps=CONFIG["fwd_warps"], num_stages=CONFIG["fwd_stages"])
    return out


def _bwd_chunks(NK: int, S: int) -> tuple[int, int]:
    """(S for the kernels, C): the sorted backward's chunk boundaries c * S, c < C, for NK slots and S =
    bwd_max_slots; S = 0 (no splitting): C = 0 and NK + 1 for the kernels (no tile has more slots). Static shapes
    only, so that nothing waits for the device."""
    return (S, triton.cdiv(NK, S)) if S > 0 else (NK + 1, 0)


def _bwd_work_reference(toffs: Tensor, sorted_rows: Tensor, S: int, R: int) -> Tensor:
    """_bwd_work for every program, with PyTorch ops, for the tests: (tiles + C, 4) int64 rows (tile, start, end,
    part) from the tiles' slot offsets toffs (tiles + 1,), the sorted rows and S = bwd_max_slots (> 0)."""
    tiles, NK = len(toffs) - 1, len(sorted_rows)
    C = triton.cdiv(NK, S)
    pid = torch.arange(tiles + C, device=toffs.device)
    is_tile = pid < tiles
    b = (pid - tiles) * S
    inside = ~is_tile & (b > 0) & (b < NK)
    tile = torch.where(is_tile, pid, sorted_rows[b.clamp(0, max(NK - 1, 0))].long() // R if NK else pid * 0)
    tile = torch.where(is_tile | inside, tile, 0)
    t_lo, t_hi = toffs[tile], toffs[tile + 1]
    split = t_hi - t_lo > S
    c0 = t_lo // S + 1
    start = torch.where(is_tile, t_lo, b)
    end = torch.where(is_tile, torch.where(split, torch.minimum(t_hi, c0 * S), t_hi), torch.minimum(b + S, t_hi))
    part = torch.where(is_tile, torch.where(split, C + c0, -1), pid - tiles)
    live = is_tile | (inside & split & (t_lo < b))
    return torch.stack([torch.where(live, tile, -1), start, torch.where(live, end, start),
                        torch.where(live, part, -1)], 1)


def _lookup_bwd_triton(grad_out: Tensor, values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor,
                       E: int) -> tuple[Tensor, Tensor]:
    T, K = rows.shape
    N, Dv = values.shape
    h = scores.shape[-1]
    on_cuda = values.is_cuda
    grad_out, values, blocks, scores = grad_out.contiguous(), values.contiguous(), blocks.contiguous(), scores.contiguous()
    if _BWD_SCHEME == "atomic" and not is_deterministic():
        gscores = _empty(T, K, h, dtype=torch.float32, device=values.device)
        gvalues = torch.zeros(N, Dv, dtype=torch.float32, device=values.device)
        if T > 0:
            _launch(_lookup_bwd_atomic_kernel, (T * K,), on_cuda, grad_out, values, rows.contiguous(), blocks, scores,
                    gvalues, gscores, K, Dv, Dv // h, E=E, H=h, BLOCK_D=triton.next_power_of_2(Dv),
                    num_warps=CONFIG["atomic_warps"])
        return gvalues.to(values.dtype), gscores.to(scores.dtype)
    flat = rows.reshape(-1).to(torch.int32)  # N < 2**31; 32-bit keys sort faster
    sorted_rows, perm = torch.sort(flat, stable=True)  # stable: a fixed summation order per row
    R, BLOCK_I = CONFIG["bwd_rows"], CONFIG["bwd_block_i"]
    if R == 0:  # by the slots per value row: where rows are hit many times, smaller row tiles with more slots in
        # flight. Measured: the second v4 sweep, 4.10 against 4.72 ms on shape (b), 8 slots per row, while (a),
        # 0.5 per row, is faster with 32 x 16. The UltraMem-151M step (4.3 per row) does not rank them: its
        # backward took 23.9-28.5 ms for 4 layers across runs of either tile (2026-11-29, docs/BENCHMARKS.md).
        R, BLOCK_I = (16, 32) if T * K >= 2 * N else (32, 16)
    tiles = triton.cdiv(N, R)
    bounds = torch.arange(0, tiles + 1, device=values.device, dtype=torch.int32) * R
    toffs = torch.searchsorted(sorted_rows, bounds)  # (tiles + 1,) int64: the slots of rows [R*i, R*(i+1))
    S, C = _bwd_chunks(T * K, CONFIG["bwd_max_slots"])  # tiles of more than S slots split at the C boundaries
    BLOCK_D, sdot = _bwd_tile(Dv, h, grad_out.dtype)
    col_tiles = triton.cdiv(Dv, BLOCK_D)
    # the slots' per-slot inputs in row order, so the kernel reads them contiguously
    if CONFIG["bwd_prep"] and T * K > 0:  # one kernel instead of six PyTorch ones
        grows = _empty(T * K, dtype=torch.int32, device=values.device)
        sscores = _empty(T * K, h, dtype=scores.dtype, device=values.device)
        _launch(_bwd_prep_kernel, (triton.cdiv(T * K, 1024),), on_cuda, perm, blocks, scores, grows, sscores, T * K,
                K, E=E, H=h, H_P=triton.next_power_of_2(h), BLOCK=1024, num_warps=4)
    else:
        grows = (torch.div(perm, K, rounding_mode="floor") * E + blocks.reshape(-1)[perm]).to(torch.int32)
        sscores = scores.reshape(T * K, h)[perm]
    # the score gradients by _lookup_bwd_scores_kernel, unless the value tile is asked for (it serves them here)
    split = _bwd_split()
    # each column tile's share of the score gradients (one element where unused: no null pointer for Triton)
    gs_part = _empty(*((1,) if split else (col_tiles, T * K, h)), dtype=torch.float32, device=values.device)
    zero_fill = CONFIG["bwd_zero_fill"]
    gvalues = (torch.zeros if zero_fill else _empty)(N, Dv, dtype=values.dtype, device=values.device)
    # the pieces' fp32 sums: parts c and C + c for boundary c (one element where no tile can be split)
    scratch = _empty(*((2 * C, R, Dv) if C else (1,)), dtype=torch.float32, device=values.device)
    if N > 0:
        inner = bool(CONFIG["bwd_cols_inner"]) or sdot  # bwd_sdot with the column tiles side by side
        _launch(_lookup_bwd_sorted_kernel, ((tiles + C) * col_tiles,) if inner else (tiles + C, col_tiles), on_cuda,
                grad_out, values, sscores, grows, sorted_rows, toffs, gvalues, scratch, gs_part, N, T * K, Dv, Dv // h,
                col_tiles, tiles, S, C, H=h,
                R=R, BLOCK_I=BLOCK_I, BLOCK_D=BLOCK_D, SPLIT=on_cuda, SKIP_EMPTY=zero_fill,
                VTILE=bool(CONFIG["bwd_value_tile"]), V16=values.dtype in (torch.bfloat16, torch.float16),
                SDOT=sdot, COLS_INNER=inner, CARRY=sdot, GS=not split,
                num_warps=CONFIG["bwd_split_warps" if split and sdot else "bwd_warps"])
        if C:
            _launch(_bwd_combine_kernel, (C, triton.cdiv(Dv, 128)), on_cuda, scratch, sorted_rows, toffs, gvalues, N,
                    T * K, Dv, S, C, R=R, BLOCK_D=128, num_warps=4)
    if split:
        gscores = _empty(T * K, h, dtype=torch.float32, device=values.device)
        if T > 0:
            bd = _block_d(Dv, "bwd_gs_block_d")
            _launch(_lookup_bwd_scores_kernel, (T,), on_cuda, grad_out, values, rows.contiguous(), blocks, gscores, K,
                    Dv, Dv // h, E=E, H=h, H_P=triton.next_power_of_2(h), BLOCK_K=CONFIG["bwd_gs_block_k"],
                    BLOCK_D=bd, N_CHUNKS=triton.cdiv(Dv, bd), num_warps=CONFIG["bwd_gs_warps"])
        return gvalues, gscores.view(T, K, h).to(scores.dtype)
    gs_sorted = gs_part[0] if col_tiles == 1 else gs_part.sum(0)  # a fixed order: deterministic
    gscores = torch.empty_like(gs_sorted)
    gscores[perm] = gs_sorted  # back to slot order (index_put without accumulation: deterministic)
    gscores = gscores.view(T, K, h)
    return gvalues, gscores.to(scores.dtype)


# ---------------------------------------------------------------------------------------------------
# Custom ops: forward, backward, autograd

@torch.library.triton_op("ultramem::mem_lookup", mutates_args=())
def _mem_lookup_op(values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor, E: int, config: str) -> Tensor:
    # config: _config_key(CONFIG) at the call (unused here; it keys compiled graphs), as in the other ops
    if _use_triton(values):
        return _lookup_triton(values, rows, blocks, scores, E)
    return mem_lookup_reference(values, rows, blocks, scores, E)


@torch.library.triton_op("ultramem::mem_lookup_bwd", mutates_args=())
def _mem_lookup_bwd_op(grad_out: Tensor, values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor,
                       E: int, config: str) -> tuple[Tensor, Tensor]:
    if _use_triton(values):
        return _lookup_bwd_triton(grad_out, values, rows, blocks, scores, E)
    return mem_lookup_bwd_reference(grad_out, values, rows, blocks, scores, E)


def _setup_context(ctx, inputs, output):
    values, rows, blocks, scores, E, config = inputs
    ctx.save_for_backward(values, rows, blocks, scores)
    ctx.E, ctx.config = E, config


def _backward(ctx, grad_out):
    values, rows, blocks, scores = ctx.saved_tensors
    grad_values, grad_scores = torch.ops.ultramem.mem_lookup_bwd(grad_out, values, rows, blocks, scores, ctx.E,
                                                                 ctx.config)
    return (grad_values if ctx.needs_input_grad[0] else None, None, None,
            grad_scores if ctx.needs_input_grad[3] else None, None, None)


_mem_lookup_op.register_autograd(_backward, setup_context=_setup_context)


def mem_lookup(values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor, E: int) -> Tensor:
    """The one entry point memory.py calls: the custom op (Triton on CUDA, reference on CPU)."""
    _check(values, rows, blocks, scores, E)
    return torch.ops.ultramem.mem_lookup(values, rows, blocks, scores, E, _config_key(CONFIG))


def mem_lookup_backward(grad_out: Tensor, values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor,
                        E: int) -> tuple[Tensor, Tensor]:
    """(value gradients, score gradients) of mem_lookup for grad_out: the backward custom op as autograd calls it,
    for the benchmarks. Time the kernels through the ops (this and mem_lookup), not _lookup_triton or
    _lookup_bwd_triton directly: outside an op, wrap_triton sends each eager launch through torch's
    higher-order-op dispatch, which the op's eager path skips (session 19: 1.57 against about 0.7 ms of kernels for
    shape (b)'s backward at 4,096 tokens, H200)."""
    _check(values, rows, blocks, scores, E)
    return torch.ops.ultramem.mem_lookup_bwd(grad_out, values, rows, blocks, scores, E, _config_key(CONFIG))


# ===================================================================================================
# Row-wise top-k indices for the memory layers' retrieval
#
#     topk_indices(x, k, sorted=True, impl="auto") -> (..., k) int64    the custom op `ultramem::topk_indices`
#
# The indices of the k largest entries of each row of x (..., L); no gradient (the retrieval takes indices
# under no_grad and gathers what needs a gradient). sorted=True: by value, largest first (torch.topk's
# order); sorted=False: any order (the kernel's is increasing index; ties go to the lower index). Why:
# torch.topk's radix select reads a row several times over several kernels (42 ms of a 276 ms
# UltraMem-151M step, docs/BENCHMARKS.md). Two kernels, one program per row, over order-preserving integer keys:
# - the filter kernel (TOPK_CONFIG["filter"], the default where k is at most half its groups): a lower bound of
#   the k-th largest from the maxima of disjoint groups of the row, then the positions of the keys at or above it
#   (about 1.2-1.5 k on random rows) compacted in index order, and the exact selection on those alone. The row is
#   read a block at a time, so its length is not padded to a power of two. 2.4-3.3x faster than torch.topk on the
#   UltraMem-151M's training rows (65,536 of 2,200 and 6,400) and 2.0-4.1x at decoding's sizes (docs/KERNELS.md).
# - the register kernel: the whole row (padded to a power of two, L up to 16,384) in registers, the k-th largest
#   by a radix select (TOPK_CONFIG["bits"] bits per pass), the winners' positions by a prefix sum; slower than
#   torch.topk on long rows (1.6x at 2,200 and 6,400), kept for larger k.
# Keys order values as torch.topk does, except that -0.0 ranks below +0.0 and a NaN ranks by its sign bit (above
# +inf if positive, below -inf if negative; torch.topk ranks every NaN highest).
# impl: "torch" (torch.topk), "triton" (the kernels), or "auto" (the memory layers' default, mem_topk): the
# kernels on CUDA where they were measured faster, torch.topk elsewhere (topk_auto_impl).

TOPK_MAX_L = 16384
# bits per search pass (1: 32 reductions of one count; 2: 16 of four; 4 or 8: 8 or 4 histograms of 16 or 256
# bins over the keys that share the prefix so far; half as many passes on bf16 rows) and the register kernel's
# warps per row (0: one per 512 elements, 1 to 16). Swept on the H200 (docs/KERNELS.md, 2026-11-29 run 2): 4 bits
# with a warp per 512 elements was the register kernel's best on all four training shapes.
# The filter kernel (filter=1; it needs bits 4 or 8, histogram passes): `block` elements read per step, `groups`
# for the lower bound (k must be at most groups / 2, else the register kernel runs: with k near the groups the bound
# lets most of the row survive), `cap` survivors at most for the fast path (more: the selection runs over the whole
# row, a block at a time; cap is raised to 2 k's power of two), `filter_warps` (0: 4 for at most TOPK_AUTO_ROWS
# rows, decoding, else 2); block, groups and cap powers of two. Swept on the H200 (docs/KERNELS.md, session 17:
# blocks of 128-2,048, 128 or 256 groups, 1-8 warps, 4 or 8 bits): blocks of 512 with 2 warps were best or within 5%
# on the training rows of 6,400 (bf16, fp32), blocks of 128 15-28% faster on rows of 1,136 and 2,200 (not taken: 128
# groups at most there, too few for the 151M's grids), 4 warps at decode.
TOPK_CONFIG = {"bits": 4, "warps": 0, "filter": 1, "block": 512, "groups": 256, "cap": 256, "filter_warps": 0}
# "auto" picks the kernel wherever the filter kernel applies (k <= groups / 2; measured at k = 32-80); else the
# register kernel for rows of at most TOPK_AUTO_L or for at most TOPK_AUTO_ROWS rows, torch.topk otherwise. Measured
# on the H200 (docs/KERNELS.md, 2026-11-29): the register kernel wins at 1,024 and 1,136 (2.5x, 1.3x) and loses at
# 2,200 and 6,400 (1.4x, 1.6x); at decoding's sizes (4 and 256 rows of 3,576, 2 and 128 rows of 1,764, timed per
# call in a CUDA graph) it takes 6-15 us against torch.topk's 14-43 us. The row bound covers decoding at batch
# 1,024 (4,096 rows of 3,576).
TOPK_AUTO_L, TOPK_AUTO_ROWS = 1536, 4096


def topk_indices_reference(x: Tensor, k: int, sorted: bool = True) -> Tensor:
    """torch.topk's indices of each row's k largest, largest first if sorted, else in any order (ties may
    pick other equal entries than the kernel). Unsorted saves torch a sorting kernel after the selection."""
    return torch.topk(x, k, dim=-1, sorted=sorted).indices


if triton is not None:

    @triton.jit
    def _topk_keys(x, KEY_BITS: tl.constexpr):
        # order-preserving unsigned keys: negative floats get all bits flipped, positive ones the sign bit set.
        # KEY_BITS 16 (bf16 rows): only the keys' top 16 bits differ between values, so they are searched alone
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        key = tl.where((bits >> 31) == 1, ~bits, bits | 0x80000000)
        if KEY_BITS == 16:
            key = key >> 16
        return key

    @triton.jit
    def _topk_radix_hist(key, live, prefix, p: tl.constexpr, BITS: tl.constexpr, KEY_BITS: tl.constexpr):
        # radix pass p's histogram: the live keys that share the prefix found so far (pass 0: all of them; a shift
        # by the keys' full width would be undefined), binned by their next BITS bits
        shift = KEY_BITS - BITS * (p + 1)
        if p == 0:
            on = live
        else:
            on = live & ((key >> (shift + BITS)) == (prefix >> (shift + BITS)))
        return tl.histogram(((key >> shift) & ((1 << BITS) - 1)).to(tl.int32), 1 << BITS, mask=on)

    @triton.jit
    def _topk_radix_digit(hist, need, prefix, p: tl.constexpr, BITS: tl.constexpr, KEY_BITS: tl.constexpr):
        # the largest digit with at least `need` keys at or above it extends the prefix; returns the prefix and how
        # many keys are still needed at or below it (those above it are winners)
        digits = tl.arange(0, 1 << BITS).to(tl.uint32)
        at_or_above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist  # per digit; [0] >= need
        d = tl.max(tl.where(at_or_above >= need, digits, 0), axis=0)
        return prefix | (d << (KEY_BITS - BITS * (p + 1))), need - tl.sum(tl.where(digits > d, hist, 0), axis=0)

    @triton.jit
    def _topk_kth(key, live, k, BITS: tl.constexpr, KEY_BITS: tl.constexpr):
        # the k-th largest of the live keys (at least k are live), found BITS bits at a time from the top: the
        # largest prefix with at least k live keys at or above it
        prefix = tl.zeros((), dtype=tl.uint32)
        if BITS <= 2:  # counting by comparison: a (2**BITS, n) matrix of compares per pass
            digits = tl.arange(0, 1 << BITS).to(tl.uint32)
            for p in tl.static_range(KEY_BITS // BITS):
                cand = prefix | (digits << (KEY_BITS - BITS * (p + 1)))  # (2**BITS,): digit 0 is the prefix itself
                count = tl.sum(((key[None, :] >= cand[:, None]) & live[None, :]).to(tl.int32), axis=1)  # [0] >= k
                prefix = tl.max(tl.where(count >= k, cand, 0), axis=0)
        else:  # counting by histogram (radix select), BITS bits per pass
            need = k
            for p in tl.static_range(KEY_BITS // BITS):
                prefix, need = _topk_radix_digit(_topk_radix_hist(key, live, prefix, p, BITS, KEY_BITS), need, prefix,
                                                 p, BITS, KEY_BITS)
        return prefix

    @triton.jit
    def _topk_write(key, live, idx, kth, n_eq, seen, written, out_row):
        # writes, in the order given (increasing index), the positions idx of every live key above kth and of the
        # keys equal to it while fewer than n_eq have been (seen: the equal keys before these; written: the
        # positions written before); returns both counts after these keys
        equal = (key == kth) & live
        take = ((key > kth) & live) | (equal & (seen + tl.cumsum(equal.to(tl.int32), axis=0) <= n_eq))
        pos = written + tl.cumsum(take.to(tl.int32), axis=0) - 1
        tl.store(out_row + pos, idx.to(tl.int64), mask=take)
        return seen + tl.sum(equal.to(tl.int32), axis=0), written + tl.sum(take.to(tl.int32), axis=0)

    @triton.jit
    def _topk_take(key, live, idx, k, kth, out_row):
        # writes the positions idx of every live key above kth and of the first k - (number above) equal to it
        zero = tl.zeros((), dtype=tl.int32)
        _topk_write(key, live, idx, kth, k - tl.sum(((key > kth) & live).to(tl.int32), axis=0), zero, zero, out_row)

    @triton.jit
    def _topk_kernel(x_ptr, out_ptr, L, k, BLOCK_L: tl.constexpr, BITS: tl.constexpr, KEY_BITS: tl.constexpr):
        # one program per row, the whole row in registers: the k-th largest key (_topk_kth), then every key
        # above it and the first k - (number above) keys equal to it, in index order
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK_L)
        mask = offs < L
        key = tl.where(mask, _topk_keys(tl.load(x_ptr + row * L + offs, mask=mask, other=0.0), KEY_BITS), 0)
        _topk_take(key, mask, offs, k, _topk_kth(key, mask, k, BITS, KEY_BITS), out_ptr + row * k)

    @triton.jit
    def _topk_filter_kernel(x_ptr, out_ptr, scratch_ptr, L, k, BLOCK: tl.constexpr, GROUPS: tl.constexpr,
                            CAP: tl.constexpr, BITS: tl.constexpr, KEY_BITS: tl.constexpr):
        # one program per row, read BLOCK elements at a time. (1) A lower bound t0 of the k-th largest key: the
        # k-th largest of the maxima of GROUPS disjoint groups of the row (k groups have a maximum >= t0, so k
        # keys are >= t0). (2) The survivors (keys >= t0: every winner and every key tied with the k-th) have
        # their positions written in index order to this row's CAP slots of scratch. (3) If at most CAP survived
        # (1.2-1.5 k on random rows and on the UltraMem-151M's at init), the selection runs on them alone; otherwise
        # on the whole row, a block at a time (ties, adversarial orders). Either way the result is _topk_kernel's.
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * L
        out_row = out_ptr + row * k
        scr = scratch_ptr + row * CAP
        offs = tl.arange(0, BLOCK)
        gmax = tl.zeros([BLOCK], dtype=tl.uint32)
        for start in range(0, L, BLOCK):  # element i belongs to column i % BLOCK: BLOCK strided groups
            m = start + offs < L
            gmax = tl.maximum(gmax, tl.where(m, _topk_keys(tl.load(x_row + start + offs, mask=m, other=0.0),
                                                           KEY_BITS), 0))
        g = tl.max(tl.reshape(gmax, [GROUPS, BLOCK // GROUPS]), axis=1)  # GROUPS runs of columns
        t0 = _topk_kth(g, tl.arange(0, GROUPS) < GROUPS, k, BITS, KEY_BITS)
        count = tl.zeros((), dtype=tl.int32)
        for start in range(0, L, BLOCK):
            m = start + offs < L
            key = _topk_keys(tl.load(x_row + start + offs, mask=m, other=0.0), KEY_BITS)
            s = (key >= t0) & m
            pos = count + tl.cumsum(s.to(tl.int32), axis=0) - 1
            tl.store(scr + pos, start + offs, mask=s & (pos < CAP))
            count += tl.sum(s.to(tl.int32), axis=0)
        tl.debug_barrier()  # the survivors' positions, written by every thread, are read by others
        if count <= CAP:
            c = tl.arange(0, CAP)
            live = c < count
            idx = tl.load(scr + c, mask=live, other=0)
            key = tl.where(live, _topk_keys(tl.load(x_row + idx, mask=live, other=0.0), KEY_BITS), 0)
            _topk_take(key, live, idx, k, _topk_kth(key, live, k, BITS, KEY_BITS), out_row)
        else:  # _topk_kth's radix select over the whole row, each pass's histogram summed over the blocks, then
            # the same writes, a block at a time
            prefix = tl.zeros((), dtype=tl.uint32)
            need = k
            for p in tl.static_range(KEY_BITS // BITS):
                hist = tl.zeros([1 << BITS], dtype=tl.int32)
                for start in range(0, L, BLOCK):
                    m = start + offs < L
                    key = _topk_keys(tl.load(x_row + start + offs, mask=m, other=0.0), KEY_BITS)
                    hist += _topk_radix_hist(key, m, prefix, p, BITS, KEY_BITS)
                prefix, need = _topk_radix_digit(hist, need, prefix, p, BITS, KEY_BITS)
            seen = tl.zeros((), dtype=tl.int32)
            written = tl.zeros((), dtype=tl.int32)
            for start in range(0, L, BLOCK):  # need: how many keys equal to the k-th are taken, the first ones
                m = start + offs < L
                key = _topk_keys(tl.load(x_row + start + offs, mask=m, other=0.0), KEY_BITS)
                seen, written = _topk_write(key, m, start + offs, prefix, need, seen, written, out_row)


def _topk_warps(BLOCK_L: int) -> int:
    return TOPK_CONFIG["warps"] or min(16, max(1, BLOCK_L // 512))


def _topk_filter_shape(L: int, k: int) -> tuple[int, int, int] | None:
    """(BLOCK, GROUPS, CAP) of the filter kernel for rows of L and top k, or None where it does not apply
    (TOPK_CONFIG["filter"] off, histogram passes off (bits < 3), or k above half the groups)."""
    c = TOPK_CONFIG
    if not c["filter"] or c["bits"] < 3:
        return None
    block = min(c["block"], 1 << (L - 1).bit_length())  # powers of two
    groups = min(c["groups"], block)
    if 2 * k > groups:
        return None
    return block, groups, max(c["cap"], 1 << (2 * k - 1).bit_length())


def _check_topk_config() -> None:
    """TOPK_CONFIG's values that the kernels can run: bits dividing 16 (every key bit searched), powers of two."""
    c = TOPK_CONFIG
    pow2 = lambda v: isinstance(v, int) and v > 0 and v & (v - 1) == 0
    bad = [f"bits={c['bits']} (1, 2, 4 or 8)"] if c["bits"] not in (1, 2, 4, 8) else []
    bad += [f"{key}={c[key]} (a power of two)" for key in ("block", "groups", "cap") if not pow2(c[key])]
    bad += [f"{key}={c[key]} (0 or a power of two up to 16)" for key in ("warps", "filter_warps")
            if not (c[key] == 0 or pow2(c[key]) and c[key] <= 16)]
    if bad:
        raise ValueError(f"kernels.TOPK_CONFIG: {', '.join(bad)}")


def _topk_triton(x: Tensor, k: int) -> Tensor:
    L = x.shape[-1]
    rows = x.numel() // L if L else 0
    out = _empty(*x.shape[:-1], k, dtype=torch.int64, device=x.device)
    if rows == 0 or k == 0:
        return out
    key_bits = 16 if x.dtype == torch.bfloat16 else 32
    shape = _topk_filter_shape(L, k)
    if shape is not None:
        block, groups, cap = shape
        scratch = torch.empty(rows, cap, dtype=torch.int32, device=x.device)
        _launch(_topk_filter_kernel, (rows,), x.is_cuda, x.contiguous(), out, scratch, L, k, BLOCK=block,
                GROUPS=groups, CAP=cap, BITS=TOPK_CONFIG["bits"], KEY_BITS=key_bits,
                num_warps=TOPK_CONFIG["filter_warps"] or (4 if rows <= TOPK_AUTO_ROWS else 2))
        return out
    BLOCK_L = triton.next_power_of_2(L)
    _launch(_topk_kernel, (rows,), x.is_cuda, x.contiguous(), out, L, k, BLOCK_L=BLOCK_L, BITS=TOPK_CONFIG["bits"],
            KEY_BITS=key_bits, num_warps=_topk_warps(BLOCK_L))
    return out


@torch.library.triton_op("ultramem::topk_indices", mutates_args=())
def _topk_indices_op(x: Tensor, k: int, config: str) -> Tensor:
    if _use_triton(x):
        return _topk_triton(x, k)
    return topk_indices_reference(x, k)


def _topk_kernel_takes(L: int, k: int, dtype: torch.dtype) -> bool:
    """Whether a kernel takes the top k of rows of L: a float dtype of 16 or 32 bits, and L at most 2**30 for the
    filter kernel (it reads a block at a time) or at most TOPK_MAX_L for the register kernel."""
    fits = L <= 2**30 if _topk_filter_shape(L, k) is not None else L <= TOPK_MAX_L  # (int32 block offsets)
    return fits and dtype in (torch.float32, torch.bfloat16, torch.float16)


def topk_auto_impl(shape: tuple[int, ...], k: int, dtype: torch.dtype, cuda: bool) -> str:
    """impl="auto"'s choice for the top k of rows of the given shape (..., L) and dtype: "triton" on CUDA where the
    kernels take the rows (_topk_kernel_takes, triton installed) and the filter kernel applies (k at most half its
    groups) or the rows are short or few (TOPK_AUTO_L, TOPK_AUTO_ROWS), else "torch" (on the CPU
    always: there the custom op runs torch.topk anyway)."""
    L = shape[-1]
    rows = math.prod(shape[:-1])
    if not (cuda and triton is not None and _topk_kernel_takes(L, k, dtype)):
        return "torch"
    filtered = _topk_filter_shape(L, k) is not None
    return "triton" if filtered or L <= TOPK_AUTO_L or rows <= TOPK_AUTO_ROWS else "torch"


def topk_indices(x: Tensor, k: int, sorted: bool = True, impl: str = "auto") -> Tensor:
    """Indices (..., k) int64 of each row's k largest entries of x (..., L), largest first if sorted, else
    in any order; no gradient. impl "torch": torch.topk; "triton": the custom op (the kernel on CUDA, the
    reference on the CPU; see the section header), re-sorted by value if sorted; "auto": topk_auto_impl's
    choice between the two."""
    L = x.shape[-1]
    if not 0 < k <= L:
        raise ValueError(f"topk_indices: k={k} must be in [1, L={L}]")
    x = x.detach()
    if impl == "auto":
        impl = topk_auto_impl(tuple(x.shape), k, x.dtype, x.is_cuda)
    if impl == "torch":
        return topk_indices_reference(x, k, sorted)
    if impl != "triton":
        raise ValueError(f"topk_indices: impl must be 'auto', 'torch' or 'triton', got {impl!r}")
    _check_topk_config()
    if not _topk_kernel_takes(L, k, x.dtype):
        raise ValueError(f"topk_indices: the kernels take rows of float32/bf16/fp16 (at most {TOPK_MAX_L} for k above "
                         f"half of TOPK_CONFIG's groups), got {L} x {x.dtype} with k={k}")
    idx = torch.ops.ultramem.topk_indices(x, k, _config_key(TOPK_CONFIG))
    if sorted:  # the k winners by value, largest first; stable, so equal values keep index order
        idx = idx.gather(-1, x.gather(-1, idx).argsort(dim=-1, descending=True, stable=True))
    return idx


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
def _moe_grouped_mm_op(x: Tensor, w: Tensor, offs: Tensor, gelu: bool, config: str) -> Tensor:
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
    return torch.ops.ultramem.moe_grouped_mm(x, w, offs, gelu, _config_key(MOE_CONFIG))


# ===================================================================================================
# Gathered matrix-vector products for MoE decoding of a few tokens
#
#     moe_gather_mm(x, w, ids, x_div=1) -> (M, N) in fp32      the custom op `ultramem::moe_gather_mm`
#
# out[m] = x[m // x_div] @ w[ids[m]]: every output row names its own expert, so there is no sort, no
# offsets, no gather of x and no un-permute. For the MoE layer at 1-4 tokens, where moe_grouped_mm's
# path (router, top-k, sort, offsets, gather, two projections, un-permute, weighting) is ten or so small
# kernels whose fixed cost exceeds the experts' read (docs/BENCHMARKS.md, issue 5). The layer then takes
# the router, its top-k, two of these and the weighted sum. Rows are the token-slots (N*k; x_div = k lets
# the first projection read the token rows directly). A row reads its expert's weights itself: two rows
# with one expert read it twice (rare at decode sizes, and L2 may serve the second), so this path is for
# small batches only (model.py's moe_impl="gather"). Split-K: n_split programs per (row, BLOCK_N columns)
# each take a contiguous share of K, and their fp32 partials are summed after the kernel in a fixed order,
# so that a single row still fills the GPU. Inference only, like moe_grouped_mm.

# Launch parameters for the H200: the best of the 108-configuration sweep at 1 and 2 tokens (both projections of
# the MoE-1.6B layer, CUDA graph, 2026-11-29 session 7: 35.0 / 52.6 us, 1.87x / 1.45x their read floor, against
# 49.8 / 79.3 us at the first guess, block_n 64, block_k 128, 4 warps, 4 programs per SM, reduce_once False;
# docs/BENCHMARKS.md, `scripts/bench_moe.py --compile --impls=gather --tune --gather_tune_tokens=1,2`).
# reduce_once: accumulate the (BLOCK_K, BLOCK_N) products elementwise and reduce over K once at the end, instead
# of a cross-thread reduction per K step (a GEMV's usual layout; more registers). It was in the 12 best
# configurations of the sweep, and the per-step reduction in none of them.
MOE_GATHER_CONFIG = {"block_n": 32, "block_k": 64, "warps": 8, "programs_per_sm": 2, "sms": 132, "reduce_once": True}


def moe_gather_mm_reference(x: Tensor, w: Tensor, ids: Tensor, x_div: int = 1) -> Tensor:
    """x (M / x_div, K), w (G, K, N), ids (M,) integer in [0, G) -> (M, N) float32 (float64 for float64
    inputs): row m is x[m // x_div] @ w[ids[m]], accumulated in that precision. Traceable."""
    acc = torch.promote_types(x.dtype, torch.float32)
    xs = x[torch.arange(ids.shape[0], device=x.device) // x_div].to(acc)  # (M, K)
    return torch.bmm(xs.unsqueeze(1), w[ids].to(acc)).squeeze(1)  # (M, N)


def _k_splits(M: int, N: int, K: int, block_n: int, block_k: int, programs: int,
              min_k_steps: int = 1) -> tuple[int, int]:
    """(K splits, K per split, a multiple of block_k) from static shapes, for the MoE decode kernels' split K:
    enough programs (`programs`: per SM x SMs) over M rows x N / block_n column tiles, with at least min_k_steps
    block_k steps per split."""
    tiles = max(1, M * triton.cdiv(N, block_n))
    want = max(1, min(triton.cdiv(programs, tiles), triton.cdiv(K, block_k * min_k_steps)))
    per = triton.cdiv(triton.cdiv(K, want), block_k) * block_k
    return triton.cdiv(K, per), per


def _moe_gather_splits(M: int, N: int, K: int) -> tuple[int, int]:
    """moe_gather_mm's (n_split, K per split): programs_per_sm per SM, at most one split per BLOCK_K."""
    cfg = MOE_GATHER_CONFIG
    return _k_splits(M, N, K, cfg["block_n"], cfg["block_k"], cfg["programs_per_sm"] * cfg["sms"])


if triton is not None:

    @triton.jit
    def _moe_gather_kernel(x_ptr, w_ptr, ids_ptr, part_ptr, M, N, K, k_per_split, sxm, sxk, swg, swk, swn,
                           X_DIV: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           REDUCE_ONCE: tl.constexpr):
        # one program per (row m, BLOCK_N output columns, K split): stream w[ids[m], split's K, n-tile] and
        # reduce it against x's row in fp32 (a matrix-vector product: no tensor-core tile for one row)
        m = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        split = tl.program_id(2)
        nmask = cols < N
        e = tl.load(ids_ptr + m).to(tl.int64)
        x_row = x_ptr + (m // X_DIV).to(tl.int64) * sxm
        w_e = w_ptr + e * swg + cols[None, :] * swn
        k_start = split * k_per_split
        k_end = tl.minimum(k_start + k_per_split, K)
        if REDUCE_ONCE:
            acc2 = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < k_end
            a = tl.load(x_row + ks * sxk, mask=kmask, other=0.0).to(tl.float32)
            b = tl.load(w_e + ks.to(tl.int64)[:, None] * swk, mask=kmask[:, None] & nmask[None, :], other=0.0)
            if REDUCE_ONCE:
                acc2 += a[:, None] * b.to(tl.float32)
            else:
                acc += tl.sum(a[:, None] * b.to(tl.float32), axis=0)
        if REDUCE_ONCE:
            acc = tl.sum(acc2, axis=0)
        tl.store(part_ptr + (split.to(tl.int64) * M + m) * N + cols, acc, mask=nmask)


def _moe_gather_check(x: Tensor, w: Tensor, ids: Tensor, x_div: int) -> None:
    if x.dim() != 2 or w.dim() != 3 or ids.dim() != 1 or x.shape[1] != w.shape[1] or x_div < 1 \
            or x.shape[0] * x_div != ids.shape[0]:
        raise ValueError(f"moe_gather_mm: bad shapes x {tuple(x.shape)}, w {tuple(w.shape)}, ids {tuple(ids.shape)}, "
                         f"x_div {x_div} (need x (M / x_div, K), w (G, K, N), ids (M,))")
    if x.dtype != w.dtype or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"moe_gather_mm: x and w must share a dtype of bf16, fp16 or fp32, got {x.dtype}, {w.dtype}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"moe_gather_mm: ids must be int32 or int64, got {ids.dtype}")


def _moe_gather_mm_triton(x: Tensor, w: Tensor, ids: Tensor, x_div: int) -> Tensor:
    M = ids.shape[0]
    K, N = w.shape[1], w.shape[2]
    if M == 0 or N == 0 or K == 0:
        return torch.zeros(M, N, dtype=torch.float32, device=x.device)
    cfg = MOE_GATHER_CONFIG
    n_split, per = _moe_gather_splits(M, N, K)
    part = _empty(n_split, M, N, dtype=torch.float32, device=x.device)
    # w keeps its strides: a copy would read every expert
    _launch(_moe_gather_kernel, (M, triton.cdiv(N, cfg["block_n"]), n_split), x.is_cuda, x, w, ids.contiguous(), part,
            M, N, K, per, x.stride(0), x.stride(1), w.stride(0), w.stride(1), w.stride(2), X_DIV=x_div,
            BLOCK_N=cfg["block_n"], BLOCK_K=cfg["block_k"], REDUCE_ONCE=bool(cfg["reduce_once"]),
            num_warps=cfg["warps"])
    return part[0] if n_split == 1 else part.sum(0)


@torch.library.triton_op("ultramem::moe_gather_mm", mutates_args=())
def _moe_gather_mm_op(x: Tensor, w: Tensor, ids: Tensor, x_div: int, config: str) -> Tensor:
    if _use_triton(x):
        return _moe_gather_mm_triton(x, w, ids, x_div)
    return moe_gather_mm_reference(x, w, ids, x_div)


def moe_gather_mm(x: Tensor, w: Tensor, ids: Tensor, x_div: int = 1) -> Tensor:
    """out[m] = x[m // x_div] @ w[ids[m]] in float32 (see the section header): the custom op, Triton on
    CUDA, the reference on the CPU. Inference only: raises RuntimeError if grad mode is on and x or w
    requires grad."""
    _moe_gather_check(x, w, ids, x_div)
    if torch.is_grad_enabled() and (x.requires_grad or w.requires_grad):
        raise RuntimeError("moe_gather_mm is inference only (no autograd formula): call it under "
                           "torch.no_grad() or torch.inference_mode(), or pass tensors that do not require grad")
    return torch.ops.ultramem.moe_gather_mm(x, w, ids, x_div, _config_key(MOE_GATHER_CONFIG))


# ===================================================================================================
# The MoE layer's decode step for a few tokens, fused into three launches (four, chained, at 1 token)
#
#     moe_decode(x, router_w, w_fc, w_proj, top_k, renorm) -> (N, D) in x.dtype
#         the custom op `ultramem::moe_decode` (`ultramem::moe_decode_pdl` at 1 token)
#
# The whole layer for N tokens (N * top_k token-slots up to MOE_DECODE_MAX_SLOTS): x (N, D), router_w (E, D)
# (nn.Linear's weight), w_fc (E, D, F), w_proj (E, F, D). Why: at 1-4 tokens the layer's bandwidth floor is
# 18-68 us (two to eight experts of the MoE-1.6B shape), and the unfused path's ten or so small kernels
# (router GEMV, softmax, top-k, renormalisation, the two gathered projections, their split-K sums, GeLU, cast,
# weighting) cost 15-30 us on top of kernels that stream at 1.9x their floor (docs/BENCHMARKS.md, issue 5).
#   logits, grid (N, E):                          x[t] . router_w[e] in fp32, a row per program; it also zeroes
#                                                 what the next two need zeroed (arrival counters; the output).
#   fc,     grid (slots, F / fc_block_n, splits): h = GeLU(x @ w_fc[e]), rounded to w's dtype (the unfused path's
#                                                 rounding of the hidden activations).
#   proj,   grid (slots, D / block_n, splits):    y[t] = sum_j weight(t, j) * h[slot t*k+j] @ w_proj[e(t, j)], fp32.
# There is no routing kernel: every program of fc and proj loads the (N, E) logits (a few KB, from L2) and runs
# the softmax and top-k of all the slots itself (_moe_slots; the first index on ties). A program takes token-slot
# j's expert e and, if no earlier slot chose e, all the slots that chose e (one BLOCK_M tile; padding rows are
# masked loads, which read nothing): it streams w[e]'s (K split, BLOCK_N) block once through tl.dot. So an
# expert is read once however many of the batch's tokens chose it, with no sort and no host synchronisation; the
# programs of a repeated expert's later slots do no K steps.
# Split K: both projections split K so that a single token fills the GPU (programs_per_sm per SM, taking every
# slot's expert as distinct; at least min_k_steps BLOCK_K steps per program; fc_splits forces fc's count).
# - fc's finishing step: a program stores its fp32 partials, then counts its arrival on its unit (a slot's column
#   tile, `splits` arrivals); the program that arrives last sums the unit's partials in split order, applies GeLU
#   and stores h. So h does not depend on which program arrives last, and no reduction launch is needed.
# - proj (proj_atomic, the default): each program adds its partials, times the slot's top-k weight, into the fp32
#   output with atomic adds (zeroed by the logits launch). The order of the additions varies, so the output may
#   differ in the last bits between calls. In deterministic mode (set_deterministic, or
#   torch.use_deterministic_algorithms) proj finishes as fc does instead: its unit is a token's column tile, with
#   top_k x splits arrivals, and the last arriver applies the top-k weighting. Bitwise reproducible: checked over
#   calls and CUDA-graph replays by scripts/bench_moe.py. The atomic adds took 1.5-2 us less at 1 token (session
#   14, docs/BENCHMARKS.md): scripts/bench_moe_parts.py timed the last-arriver step at 1.1-1.6 us per launch and the
#   atomic adds at 0-0.1 us.
# Tried and dropped (docs/BENCHMARKS.md): fc's partials summed and put through GeLU in proj's K loop (session 11's
# first version, proj 73.0 us alone at 1 token; again in session 14, the layer 53.9 against 29.2 us: loads that
# feed the dot through arithmetic are not pipelined); programmatic dependent launch between the three (31.7 us at
# its best, no gain); the three phases in one persistent launch whose programs take work items by an atomic
# ticket (46.2 us); and the other one-launch designs of sessions 12-13.
# The output is summed in fp32 and rounded to x.dtype at the end (the unfused path's y.to(x.dtype)); with `residual`
# (Block.forward's residual stream) that is added to the fp32 sums first, so the block's add needs no launch of its
# own (on the PDL path the cast adds it; otherwise the add outside the op, which Inductor fuses with the cast).
# Programmatic dependent launch (PDL), at up to MOE_DECODE_CONFIG["pdl_max_tokens"] tokens on Hopper and later: the
# launches are chained so that each starts while the one before is still running and waits (griddepcontrol.wait)
# only where it reads that one's output. A fourth launch rounds the output to x.dtype. The order:
#   logits: prefetches its router row into L2, waits for the kernel before it (which wrote x), then lets fc launch
#           (session 21: launched at logits' start, fc's programs were placed unevenly on the SMs; the layer took
#           0.6 us longer than with this order and the prefetch);
#   fc:     waits for the logits first (its routing reads them); lets proj launch after its K loop;
#   proj:   routes (the logits are complete: fc let it launch only after its own wait) and sets up its pointers, lets
#           the cast launch, then waits for fc (h, and the zeroed output) before its K loop;
#   cast:   lets the next launch start, waits for proj, adds the residual (if any), rounds to x.dtype.
# Waiting for a launch implies that every launch before it is complete. Before its wait a program writes nothing (so
# buffers the allocator hands on are never written early) and reads nothing that a launch still running may write:
# only proj reads before its wait, the logits, complete by then; the weights are read after the waits too (logits'
# prefetch into L2 is a hint that reads into the coherent L2, never a stale value).
# Session 20 (docs/BENCHMARKS.md): at 1 token the layer went from 30.8 to 28.2 us (each launch's start overlaps the
# end of the one before, and the cast, 1.5 us as an Inductor kernel after the launches, takes 0.7 us), the whole
# MoE-1.6B decode step from 1.888 to 1.756 ms. At 2 tokens the layer alone went from 47.0 to 45.2 us but the decode
# step from 2.437 to 2.514 ms; at 4 tokens the layer was 3 us slower (83.2 against 79.8 us: proj's programs, placed
# while fc's still hold the SMs, spread unevenly). So PDL is taken at 1 token only.
# Session 21: %smid stamps showed fc's programs placed 2 to 4 per SM (on 120-130 SMs) when logits let fc launch at
# its start, while the previous launches still held SMs; a K loop took 9.3 us with 2 programs on its SM, 10.4 with 4.
# Letting fc launch after logits' wait placed them 2 or 3 per SM on all 132, and with the router row prefetched the
# layer went from 28.1 to 27.5 us (1.47x). Stream-K fc and proj launches (every program an equal share of the K
# steps, scripts/exp_moe_streamk.py) were 1.9-5.2 us slower at 1 token and 2.6-10 us at 2 and 4: not taken.
# Triton launches with PDL only through its own launcher, which torch.compile's handling of triton_op does not
# reach (Inductor failed to compile the kernel launched with launch_pdl, session 20), so the PDL path is a plain
# custom op that torch.compile calls as it is (the CUDA graph captures its four launches).
# Inference only, like the other MoE kernels. The reference is the same layer in PyTorch (model.moe_route's
# routing, then moe_gather_mm_reference's row products).

# Launch parameters of the fc and proj kernels, for the H200 (132 SMs): fc_block_n fc's output columns per
# program, block_n proj's; block_k, warps and stages both kernels' (fc_stages, if not 0, fc's); fc_splits fc's K
# splits (0: by programs_per_sm and min_k_steps). The tile sizes are the best by the sum of x floor at 1, 2 and 4
# tokens of a 72-configuration sweep (scripts/bench_moe.py --compile --impls=fused,triton --tune=fused, 2026-11-30,
# session 11; docs/BENCHMARKS.md); in session 14's sweeps of proj_atomic, fc_block_n, block_n, fc_splits and
# fc_stages at 1, 2 and 4 tokens these defaults were the best: 29.0 / 44.9 / 76.9 us, 1.57 / 1.25 / 1.13x the floor.
# pdl_max_tokens: up to how many tokens the launches are chained by programmatic dependent launch (0: never).
MOE_DECODE_CONFIG = {"fc_block_n": 64, "block_n": 64, "block_k": 64, "warps": 4, "stages": 4, "programs_per_sm": 2,
                     "sms": 132, "min_k_steps": 2, "proj_atomic": True, "fc_splits": 0, "fc_stages": 0,
                     "pdl_max_tokens": 1}
MOE_DECODE_MAX_SLOTS = 32  # token-slots (tokens x top_k) one program's tile holds: 16 tokens at top-2


def moe_decode_reference(x: Tensor, router_w: Tensor, w_fc: Tensor, w_proj: Tensor, top_k: int,
                         renorm: bool) -> Tensor:
    """x (N, D), router_w (E, D), w_fc (E, D, F), w_proj (E, F, D) -> (N, D) float32 (float64 for float64
    inputs): softmax(x @ router_w.T) in fp32, its top_k (renormalised to sum 1 if renorm), and the sum of the
    chosen experts' gelu(x @ w_fc[e]) @ w_proj[e] times their weights, the hidden rounded to w_fc's dtype."""
    acc = torch.promote_types(x.dtype, torch.float32)
    N, k = x.shape[0], top_k
    probs = (x.to(acc) @ router_w.to(acc).T).softmax(dim=-1)  # (N, E)
    weights, experts = probs.topk(k, dim=-1)  # (N, k)
    if renorm:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    ids = experts.reshape(-1)  # (N*k,) slot j of token t at t*k + j
    h = torch.nn.functional.gelu(moe_gather_mm_reference(x, w_fc, ids, k)).to(w_fc.dtype)  # (N*k, F)
    ys = moe_gather_mm_reference(h, w_proj, ids)  # (N*k, D)
    return (ys.view(N, k, -1) * weights.unsqueeze(-1)).sum(dim=1)


def _moe_decode_splits(M: int, N: int, K: int, block_n: int, splits: int = 0) -> tuple[int, int]:
    """moe_decode's (K splits, K per split) for M token-slots, N output columns in tiles of block_n, K inputs:
    `splits` if not 0 (fewer if K has fewer block_k steps), else enough for programs_per_sm per SM."""
    cfg = MOE_DECODE_CONFIG
    if splits:
        per = triton.cdiv(triton.cdiv(K, splits), cfg["block_k"]) * cfg["block_k"]
        return triton.cdiv(K, per), per
    return _k_splits(M, N, K, block_n, cfg["block_k"], cfg["programs_per_sm"] * cfg["sms"], cfg["min_k_steps"])


if triton is not None:

    @triton.jit
    def _prefetch_l2(ptrs):
        # a prefetch of each pointer's line into L2, a hint with no result (the int32 zeros returned are for Triton).
        # One line of PTX: Inductor copies this source into its own module, where an escaped newline in the string
        # became a real one (a syntax error, session 21)
        return tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                         is_pure=False, pack=1)

    @triton.jit
    def _moe_logits_kernel(x_ptr, rw_ptr, logits_ptr, cnt_ptr, n_cnt, out_ptr, n_out, E, D, sxm, sxd, swe, swd,
                           BLOCK_D: tl.constexpr, BLOCK_Z: tl.constexpr, PDL: tl.constexpr):
        # program (token t, expert e): the router logit x[t] . router_w[e] in fp32, one row read per program; the
        # programs also zero the n_cnt arrival counters of fc and proj and the n_out elements of the fp32 output
        # (0 unless proj accumulates it by atomic adds), for the next two launches. PDL: the router row prefetched
        # into L2 (coherent: a kernel still running before this one cannot leave a stale line there), then wait for
        # the launch before this one (x), then let fc launch: launched earlier, fc's programs would be placed while
        # the previous launches' programs still hold SMs, unevenly (session 21)
        t = tl.program_id(0)
        e = tl.program_id(1)
        if PDL:
            for d0 in range(0, D, BLOCK_D):
                _prefetch_l2(rw_ptr + e.to(tl.int64) * swe + tl.minimum(d0 + tl.arange(0, BLOCK_D // 32) * 32, D - 1)
                             * swd)
            gdc_wait()
            gdc_launch_dependents()
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            dmask = ds < D
            xv = tl.load(x_ptr + t.to(tl.int64) * sxm + ds * sxd, mask=dmask, other=0.0)
            wv = tl.load(rw_ptr + e.to(tl.int64) * swe + ds * swd, mask=dmask, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)
        tl.store(logits_ptr + t * E + e, tl.sum(acc, axis=0))
        pid = t * E + e
        n_prog = tl.num_programs(0) * E
        for z0 in range(pid * BLOCK_Z, n_cnt, n_prog * BLOCK_Z):
            zs = z0 + tl.arange(0, BLOCK_Z)
            tl.store(cnt_ptr + zs, tl.zeros((BLOCK_Z,), dtype=tl.int32), mask=zs < n_cnt)
        for z0 in range(pid * BLOCK_Z, n_out, n_prog * BLOCK_Z):
            zs = z0 + tl.arange(0, BLOCK_Z)
            tl.store(out_ptr + zs, tl.zeros((BLOCK_Z,), dtype=tl.float32), mask=zs < n_out)

    @triton.jit
    def _moe_slots(logits_ptr, M, E, TOP_K: tl.constexpr, RENORM: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_E: tl.constexpr):
        # the routing of the M = N * TOP_K token-slots from the (N, E) logits: slot r = t * TOP_K + j is token t's
        # j-th choice. Row r of a (BLOCK_M, BLOCK_E) tile holds token r // TOP_K's logits (a few KB from L2), so
        # every row runs the top-k itself and keeps its own pick, with no exchange between rows. The top-k is by
        # repeated max over the logits themselves (exact, so fc's and proj's programs, compiled apart, pick alike;
        # the first index on ties), the weights are the softmax's (exp(l - max) / sum, as torch's). A NaN logit
        # matches no maximum: the index is clamped to E - 1, so the weights stay in bounds (the output is NaN, as
        # the unfused path's would be). Returns the slots' experts (BLOCK_M,) int32, -1 on padding rows, and their
        # weights (BLOCK_M,) fp32.
        rows = tl.arange(0, BLOCK_M)
        es = tl.arange(0, BLOCK_E)
        rmask = rows < M
        emask = (es < E)[None, :]
        lg = tl.load(logits_ptr + (rows // TOP_K)[:, None] * E + es[None, :], mask=rmask[:, None] & emask, other=0.0)
        lg = tl.where(emask, lg, float("-inf"))
        p = tl.exp(lg - tl.max(lg, axis=1)[:, None])
        p = p / tl.sum(p, axis=1)[:, None]
        j_r = rows % TOP_K
        slot_e = tl.zeros((BLOCK_M,), dtype=tl.int32)
        slot_w = tl.zeros((BLOCK_M,), dtype=tl.float32)
        total = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for j in tl.static_range(TOP_K):
            best = tl.max(lg, axis=1)
            idx = tl.minimum(tl.min(tl.where(lg == best[:, None], es[None, :], BLOCK_E), axis=1), E - 1)
            w = tl.sum(tl.where(es[None, :] == idx[:, None], p, 0.0), axis=1)  # p[r, idx[r]]
            slot_e = tl.where(j_r == j, idx, slot_e)
            slot_w = tl.where(j_r == j, w, slot_w)
            total += w
            lg = tl.where(es[None, :] == idx[:, None], float("-inf"), lg)  # taken
        if RENORM:
            slot_w = slot_w / total
        return tl.where(rmask, slot_e, -1), slot_w

    @triton.jit
    def _moe_decode_mm_kernel(x_ptr, w_ptr, logits_ptr, part_ptr, cnt_ptr, out_ptr, M, N, K, E, k_per_split, sxm, sxk,
                              swg, swk, swn, TOP_K: tl.constexpr, RENORM: tl.constexpr, FC: tl.constexpr,
                              N_SPLITS: tl.constexpr, ATOMIC: tl.constexpr, DOT_FP32: tl.constexpr,
                              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                              BLOCK_E: tl.constexpr, PDL: tl.constexpr):
        # program (token-slot j, BLOCK_N columns, K split); see the section header. FC: x is the tokens (the row of
        # slot r is r // TOP_K) and out the hidden h (M, N) in w's dtype; else x is h and out y (M / TOP_K, N) fp32,
        # accumulated by atomic adds (ATOMIC; zeroed by the logits launch) or finished by the last-arriving program.
        # PDL: fc waits for the logits before its routing; proj routes first and waits for fc before its K loop
        if PDL and FC:
            gdc_wait()
        j = tl.program_id(0)
        nt = tl.program_id(1)
        split = tl.program_id(2)
        rows = tl.arange(0, BLOCK_M)
        slot_e, slot_w = _moe_slots(logits_ptr, M, E, TOP_K, RENORM, BLOCK_M, BLOCK_E)
        e = tl.sum(tl.where(rows == j, slot_e, 0), axis=0)
        first = tl.sum(((slot_e == e) & (rows < j)).to(tl.int32), axis=0) == 0  # no earlier slot chose e
        same = slot_e == tl.where(first, e, -2)  # (BLOCK_M,): the slots this program computes (padding rows hold -1)
        cols = nt * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = cols < N
        k_start = split * k_per_split
        k_end = tl.where(first, tl.minimum(k_start + k_per_split, K), k_start)  # a later slot of e: no K steps
        x_rows = x_ptr + (rows // (TOP_K if FC else 1)).to(tl.int64)[:, None] * sxm
        w_e = w_ptr + e.to(tl.int64) * swg + cols[None, :] * swn
        if PDL and not FC:  # the cast may launch (it waits for this launch); h and the zeroed output need fc done
            gdc_launch_dependents()
            gdc_wait()
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < k_end
            a = tl.load(x_rows + ks[None, :] * sxk, mask=same[:, None] & kmask[None, :], other=0.0)
            b = tl.load(w_e + ks.to(tl.int64)[:, None] * swk, mask=kmask[:, None] & nmask[None, :], other=0.0)
            if DOT_FP32:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        if PDL and FC:  # proj may launch: its programs route and then wait for this launch to complete
            gdc_launch_dependents()
        n_tiles = tl.num_programs(1)
        omask = same[:, None] & nmask[None, :]
        part = part_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :]  # + split * M * N: split's partials
        if FC and N_SPLITS == 1:  # the whole sum is here: GeLU, rounded to w's dtype
            h = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
            tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], h.to(out_ptr.dtype.element_ty),
                     mask=omask)
        elif FC:
            # unit: (slot j, column tile), N_SPLITS arrivals, from j's programs only. Store this split's partials,
            # then count the arrival; the program that arrives last sums the unit's partials in split order
            # (deterministic), applies GeLU and stores h. Release: every thread's stores precede the barrier, the
            # barrier the (acq_rel, gpu-scope) atomic; acquire: the atomic precedes the barrier, the barrier the
            # loads, which bypass L1 (.cg). A branch (the condition is one value for the program), so that the
            # programs that do not finish skip the sum
            tl.store(part + split.to(tl.int64) * M * N, acc, mask=omask)
            tl.debug_barrier()
            old = tl.atomic_add(cnt_ptr + j * n_tiles + nt, 1, mask=first)
            tl.debug_barrier()
            if first & (old == N_SPLITS - 1):
                hsum = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for s in tl.static_range(N_SPLITS):
                    hsum += tl.load(part + s * M * N, mask=omask, other=0.0, cache_modifier=".cg")
                h = 0.5 * hsum * (1.0 + tl.math.erf(hsum * 0.7071067811865476))
                tl.store(out_ptr + rows.to(tl.int64)[:, None] * N + cols[None, :], h.to(out_ptr.dtype.element_ty),
                         mask=omask)
        elif ATOMIC:  # y[t] += weight of slot r x this split's partial, for each slot r = t*k+j of e here
            tok = rows // TOP_K
            tl.atomic_add(out_ptr + tok.to(tl.int64)[:, None] * N + cols[None, :], acc * slot_w[:, None], mask=omask,
                          sem="relaxed")
        else:
            # unit: (token t, column tile), TOP_K x N_SPLITS arrivals: one per split from each of t's experts; as fc's,
            # but a program's rows may finish different tokens (masks, not a branch): the last arriver of a token sums
            # its partials in a fixed order and applies the top-k weighting
            tl.store(part + split.to(tl.int64) * M * N, acc, mask=omask)
            tl.debug_barrier()
            tok = rows // TOP_K
            old = tl.atomic_add(cnt_ptr + tok * n_tiles + nt, 1, mask=same)  # one arrival per slot row
            fin = same & (old == TOP_K * N_SPLITS - 1)  # row r: token r // TOP_K is complete, finish it here
            tl.debug_barrier()
            y = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for jj in tl.static_range(TOP_K):  # y[t] = sum_jj weight of slot t*k+jj x the sum of its partials
                r2 = tok * TOP_K + jj
                w2 = tl.sum(tl.where(rows[None, :] == r2[:, None], slot_w[None, :], 0.0), axis=1)  # slot_w[r2]
                ys = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for s in tl.static_range(N_SPLITS):
                    ys += tl.load(part_ptr + (s * M + r2).to(tl.int64)[:, None] * N + cols[None, :],
                                  mask=fin[:, None] & nmask[None, :], other=0.0, cache_modifier=".cg")
                y += w2[:, None] * ys
            tl.store(out_ptr + tok.to(tl.int64)[:, None] * N + cols[None, :], y, mask=fin[:, None] & nmask[None, :])


    @triton.jit
    def _moe_cast_kernel(src_ptr, res_ptr, dst_ptr, n, RES: tl.constexpr, BLOCK: tl.constexpr):
        # the PDL chain's last launch: the next launch may start now; then proj's fp32 output, plus the residual
        # stream if RES, rounded to dst's dtype
        gdc_launch_dependents()
        gdc_wait()
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        y = tl.load(src_ptr + offs, mask=offs < n)
        if RES:
            y += tl.load(res_ptr + offs, mask=offs < n).to(tl.float32)
        tl.store(dst_ptr + offs, y.to(dst_ptr.dtype.element_ty), mask=offs < n)


def _moe_decode_check(x: Tensor, router_w: Tensor, w_fc: Tensor, w_proj: Tensor, top_k: int,
                      residual: Tensor | None = None) -> None:
    N, D = x.shape if x.dim() == 2 else (-1, -1)
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or not residual.is_contiguous()):
        raise ValueError(f"moe_decode: residual must be a contiguous {tuple(x.shape)} {x.dtype} tensor like x, got "
                         f"{tuple(residual.shape)} {residual.dtype}")
    if x.dim() != 2 or router_w.dim() != 2 or w_fc.dim() != 3 or w_proj.dim() != 3 or router_w.shape[1] != D \
            or w_fc.shape[:2] != (router_w.shape[0], D) or w_proj.shape != (w_fc.shape[0], w_fc.shape[2], D):
        raise ValueError(f"moe_decode: bad shapes x {tuple(x.shape)}, router_w {tuple(router_w.shape)}, w_fc "
                         f"{tuple(w_fc.shape)}, w_proj {tuple(w_proj.shape)} (need x (N, D), router_w (E, D), "
                         f"w_fc (E, D, F), w_proj (E, F, D))")
    if not 1 <= top_k <= router_w.shape[0]:
        raise ValueError(f"moe_decode: top_k={top_k} must be in 1..{router_w.shape[0]} (the experts)")
    if N * top_k > MOE_DECODE_MAX_SLOTS:
        raise ValueError(f"moe_decode: {N} tokens x top_{top_k} = {N * top_k} token-slots, more than "
                         f"MOE_DECODE_MAX_SLOTS={MOE_DECODE_MAX_SLOTS} (use moe_grouped_mm for larger batches)")
    if not (x.dtype == w_fc.dtype == w_proj.dtype) or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"moe_decode: x, w_fc and w_proj must share a dtype of bf16, fp16 or fp32, got "
                         f"{x.dtype}, {w_fc.dtype}, {w_proj.dtype}")


def _moe_decode_atomic() -> bool:
    """Whether moe_decode's proj accumulates its output with atomic adds (MOE_DECODE_CONFIG["proj_atomic"], not in
    deterministic mode) rather than by the last-arriving program of each unit (bitwise reproducible)."""
    return bool(MOE_DECODE_CONFIG["proj_atomic"]) and not is_deterministic()


def _moe_decode_pdl(x: Tensor) -> bool:
    """Whether moe_decode chains its launches by programmatic dependent launch for x (N, D): on CUDA, with the
    Triton kernels, N <= MOE_DECODE_CONFIG["pdl_max_tokens"], on Hopper or later."""
    return (x.is_cuda and gdc_wait is not None and 0 < x.shape[0] <= MOE_DECODE_CONFIG["pdl_max_tokens"]
            and _use_triton(x) and _sm90_or_later(x.get_device()))


@torch.compiler.assume_constant_result
def _sm90_or_later(device: int) -> bool:
    return torch.cuda.get_device_capability(device) >= (9, 0)


def _moe_decode_launches(x: Tensor, router_w: Tensor, w_fc: Tensor, w_proj: Tensor, top_k: int,
                         renorm: bool, pdl: bool = False, residual: Tensor | None = None) -> tuple[Tensor, list]:
    """The layer's output and the launches that fill it, in order, as callables: moe_decode runs them all;
    bench_moe.py times them added one by one. Without PDL: the fp32 output (N, D) and three launches (logits, fc,
    proj; the caller rounds to x.dtype, residual unused); with it (launched directly, not through wrap_triton): the
    output in x.dtype, plus residual if given, and a fourth launch, the cast that adds it."""
    N, D = x.shape
    E, _, Fh = w_fc.shape
    M = N * top_k
    out = _empty(N, D, dtype=torch.float32, device=x.device)
    if N == 0:  # (never on the PDL path: _moe_decode_pdl wants a token)
        return out, []
    cfg, cuda, dev = MOE_DECODE_CONFIG, x.is_cuda, x.device
    s_fc, per_fc = _moe_decode_splits(M, Fh, D, cfg["fc_block_n"], cfg["fc_splits"])
    s_pj, per_pj = _moe_decode_splits(M, D, Fh, cfg["block_n"])
    t_fc, t_pj = triton.cdiv(Fh, cfg["fc_block_n"]), triton.cdiv(D, cfg["block_n"])
    atomic = _moe_decode_atomic()
    logits = _empty(N, E, dtype=torch.float32, device=dev)
    # arrival counters: fc's (if it splits K), then proj's (one unused where it adds atomically: proj's slice is never
    # empty, so Triton gets a pointer inside the allocation)
    n_cfc = M * t_fc if s_fc > 1 else 0
    cnt = _empty(n_cfc + (1 if atomic else N * t_pj), dtype=torch.int32, device=dev)
    h = _empty(M, Fh, dtype=w_fc.dtype, device=dev)  # the slots' hidden activations, after GeLU
    # the split partials (one element where unused: no null pointer for Triton)
    part_fc = _empty(*((s_fc, M, Fh) if s_fc > 1 else (1,)), dtype=torch.float32, device=dev)
    part_pj = _empty(*((1,) if atomic else (s_pj, M, D)), dtype=torch.float32, device=dev)
    mm = dict(TOP_K=top_k, RENORM=renorm, DOT_FP32=x.dtype == torch.float32 or not cuda,
              BLOCK_M=max(16, triton.next_power_of_2(M)), BLOCK_K=cfg["block_k"],
              BLOCK_E=max(16, triton.next_power_of_2(E)), num_warps=cfg["warps"], num_stages=cfg["stages"])
    if pdl:  # Triton's own launcher (see the section header), every launch chained to the one before
        launch, pdl_kw = (lambda kernel, grid, _cuda, *args, **kw: kernel[grid](*args, **kw)), \
            dict(PDL=True, launch_pdl=True)
    else:  # PDL passed all the same: torch.compile's trace of a wrap_triton launch wants every argument given
        launch, pdl_kw = _launch, dict(PDL=False)
    # the expert weights keep their strides: a copy would read every expert
    launches = [
        lambda: launch(_moe_logits_kernel, (N, E), cuda, x, router_w, logits, cnt, cnt.numel(), out,
                       out.numel() if atomic else 0, E, D, x.stride(0), x.stride(1), router_w.stride(0),
                       router_w.stride(1), BLOCK_D=min(2048, max(32, triton.next_power_of_2(D))), BLOCK_Z=128,
                       num_warps=4, **pdl_kw),
        lambda: launch(_moe_decode_mm_kernel, (M, t_fc, s_fc), cuda, x, w_fc, logits, part_fc, cnt, h, M, Fh, D, E,
                       per_fc, x.stride(0), x.stride(1), w_fc.stride(0), w_fc.stride(1), w_fc.stride(2), FC=True,
                       N_SPLITS=s_fc, ATOMIC=False, BLOCK_N=cfg["fc_block_n"],
                       **{**mm, "num_stages": cfg["fc_stages"] or cfg["stages"]}, **pdl_kw),
        lambda: launch(_moe_decode_mm_kernel, (M, t_pj, s_pj), cuda, h, w_proj, logits, part_pj, cnt[n_cfc:], out,
                       M, D, Fh, E, per_pj, h.stride(0), h.stride(1), w_proj.stride(0), w_proj.stride(1),
                       w_proj.stride(2), FC=False, N_SPLITS=s_pj, ATOMIC=atomic, BLOCK_N=cfg["block_n"], **mm,
                       **pdl_kw),
    ]
    if not pdl:
        return out, launches
    y = _empty(N, D, dtype=x.dtype, device=dev)
    res = residual if residual is not None else y  # a pointer either way; read only with RES
    return y, launches + [lambda: _moe_cast_kernel[(triton.cdiv(N * D, 1024),)](
        out, res, y, N * D, RES=residual is not None, BLOCK=1024, num_warps=4, launch_pdl=True)]


def _moe_decode_triton(x: Tensor, router_w: Tensor, w_fc: Tensor, w_proj: Tensor, top_k: int,
                       renorm: bool, pdl: bool = False, residual: Tensor | None = None) -> Tensor:
    out, launches = _moe_decode_launches(x, router_w, w_fc, w_proj, top_k, renorm, pdl, residual)
    for launch in launches:
        launch()
    return out


@torch.library.triton_op("ultramem::moe_decode", mutates_args=())
def _moe_decode_op(x: Tensor, router_w: Tensor, w_fc: Tensor, w_proj: Tensor, top_k: int, renorm: bool,
                   config: str) -> Tensor:
    # the fp32 sums; moe_decode rounds them to x.dtype outside the op, where the cast can fuse with what follows
    if _use_triton(x):
        return _moe_decode_triton(x, router_w, w_fc, w_proj, top_k, renorm)
    return moe_decode_reference(x, router_w, w_fc, w_proj, top_k, renorm)


@torch.library.custom_op("ultramem::moe_decode_pdl", mutates_args=())
def _moe_decode_pdl_op(x: Tensor, router_w: Tensor, w_fc: Tensor, w_proj: Tensor, top_k: int, renorm: bool,
                       residual: Tensor | None, config: str) -> Tensor:
    # the same layer with its launches chained by PDL (CUDA only), in x.dtype, plus residual if given: opaque to
    # torch.compile, which calls it as it is
    return _moe_decode_triton(x, router_w, w_fc, w_proj, top_k, renorm, pdl=True, residual=residual)


@_moe_decode_pdl_op.register_fake
def _(x, router_w, w_fc, w_proj, top_k, renorm, residual, config):
    return x.new_empty(x.shape)


def moe_decode(x: Tensor, router_w: Tensor, w_fc: Tensor, w_proj: Tensor, top_k: int, renorm: bool,
               residual: Tensor | None = None) -> Tensor:
    """The MoE layer for a few tokens, routing included (see the section header): (N, D) in x.dtype, summed in
    fp32. With residual ((N, D), x's dtype): residual + the layer, added to the fp32 sums and rounded once (as
    Block.forward takes it: the PDL chain's last launch does the add, so no kernel follows the chain for it). The
    custom op, Triton on CUDA (its launches chained by PDL at up to MOE_DECODE_CONFIG["pdl_max_tokens"] tokens on
    Hopper and later), the reference on the CPU. Inference only: raises RuntimeError if grad mode is on and an input
    requires grad."""
    _moe_decode_check(x, router_w, w_fc, w_proj, top_k, residual)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, router_w, w_fc, w_proj)):
        raise RuntimeError("moe_decode is inference only (no autograd formula): call it under "
                           "torch.no_grad() or torch.inference_mode(), or pass tensors that do not require grad")
    if _moe_decode_pdl(x):  # already added and rounded, by the chain's last launch
        return torch.ops.ultramem.moe_decode_pdl(x, router_w, w_fc, w_proj, top_k, renorm, residual,
                                                 _config_key(MOE_DECODE_CONFIG))
    y = torch.ops.ultramem.moe_decode(x, router_w, w_fc, w_proj, top_k, renorm, _config_key(MOE_DECODE_CONFIG))
    return (y if residual is None else y + residual.to(y.dtype)).to(x.dtype)


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
                                  sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, qk_scale: tl.constexpr, REP: tl.constexpr,
                                  D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr,
                                  DOT_FP32: tl.constexpr):
        # one program per (batch b, KV head kv, split): the REP * T query rows (row = r * T + t is query head
        # kv * REP + r, token t) against the split's share of the n_tiles BLOCK_S-tiles of positions, with
        # an online softmax in base 2 (qk_scale = log2(e) / sqrt(D), a constexpr: as a plain float argument,
        # torch.compile's launcher typed it fp64 and the fp32 accumulator then failed to compile). DOT_FP32
        # takes both products in fp32 ("ieee"): for fp32 inputs, and in the interpreter, whose bf16 dot is
        # broken in triton 3.9
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
def _decode_attention_op(q: Tensor, k: Tensor, v: Tensor, input_pos: Tensor, config: str) -> Tensor:
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
    return torch.ops.ultramem.decode_attention(q, k, v, input_pos, _config_key(DECODE_ATTN_CONFIG))
