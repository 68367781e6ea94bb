"""
Memory layers: UltraMem (Huang et al., arXiv 2411.12364) and the PKM baseline (Lample et al. 2019).

One module, MemoryLayer, reads like spec section 3 in data-flow order: (query conv) -> query -> q/k norm
-> row/column scores -> TDQKR (rank-1 pre-selection, exact Tucker scores of the m x m candidates, final
top-m) -> virtual-address shuffle -> IVE decode + MCS weighting + pooling per virtual block
(kernels.mem_lookup) -> projection. Every row of the paper's Table 2 is one named option below, so that
memory="ultramem" with all of them switched off is PKM, and memory="pkm" is that baseline preset.
Where the paper and the authors' released code disagree (spec 13), the option defaults to the paper and a
comment says which is which. Placement (spec 2): "i:j/..." reads block i's normalised FFN input and adds
the output to the residual stream after block j; GPT.forward does the routing.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import kernels

# the options memory="pkm" fixes (Table 2's first row, the XLM PKM); memory="ultramem" reads them
PKM_PRESET = dict(mem_softmax=True, mem_value_proj=False, mem_share_query=False, mem_qk_norm="none",
                  mem_expand=1, mem_tdqkr=False, mem_cores=1, mem_init="pkm", mem_value_lr_mult=1.0,
                  mem_qconv=0, mem_tucker_alpha=0.0)


@dataclass
class MemoryConfig:
    memory: str = "none"  # "none" | "pkm" (Lample et al. baseline) | "ultramem"
    # placement and sizes (both kinds)
    mem_layers: str = ""  # "i:j/i2:j2/..." (spec 2) or "full" (i:i for every block); "" = one at the middle block
    mem_replace_ffn: bool = False  # the memory takes the place of block i's MLP (PKM "in place of"; needs i == j)
    mem_knum: int = 64  # sqrt(N): N = knum^2 physical values per layer
    mem_kdim: int = 64  # D_k, key / query dimension of one side (row or column)
    mem_heads: int = 2  # H, key sets ("PKM heads"); each picks m values, heads are summed
    mem_topm: int = 16  # m per head: m*H value rows are read per token
    mem_vdim: int = 0  # D_v; 0 = n_embd / 2 with the value projection ("half vdim"), n_embd without
    # UltraMem's steps, Table 2's rows in order (spec 2); the defaults are the full UltraMem
    mem_softmax: bool = False  # "+rm softmax": False = raw scores used linearly (Csordas et al.); True = PKM softmax
    mem_value_proj: bool = True  # "+half vdim+proj": Linear(E*D_v -> D) after pooling (needed for IVE)
    mem_share_query: bool = True  # "+share query": one (q_row, q_col) for all H heads, like GQA
    # mem_layers: "+split big mem&skip" is a placement string ("2:5/6:9/...") in place of one middle layer
    mem_qk_norm: str = "layer"  # "+query/key LN": "layer" (paper: LN) | "rms" (code: RMSNorm) | "none"
    mem_expand: int = 4  # "+IVE": E virtual blocks (a perfect square); 1 = off (no projectors, no shuffle)
    mem_tdqkr: bool = True  # "+TDQKR": Tucker scores S_row^T C S_col; False = PKM's additive s_row + s_col
    mem_rank: int = 2  # r, Tucker rank
    mem_cores: int = 2  # "+MCS": h Tucker cores, core c scales slice c of the value; 1 = off
    mem_init: str = "paper"  # "+improved init": "paper" (V ~ N(0, E/(2mHL)), MC-tuned norms) | "code" | "pkm"
    mem_value_lr_mult: float = 10.0  # "+value lr decay": T -> 1 linearly; 10 paper (as read by SEC), 4 code / V2
    mem_qconv: int = 5  # "+query conv": causal depthwise conv kernel; paper's size unknown (lucidrains 5); 0 = off; absent in code
    mem_tucker_alpha: float = 0.001  # Tucker aux loss weight (paper); 0 = off (the released code has it commented out)
    mem_tucker_tau: float = 0.15  # its margin tau
    mem_topk: str = "auto"  # the retrieval's top-m (PKM and TDQKR): "auto" | "torch" (torch.topk) | "triton"
    # (kernels.topk_indices' kernels). "auto": the kernels on CUDA wherever they were measured faster (the filter
    # kernel: every m up to 128, 2.4-3.3x torch.topk on the UltraMem-151M's training rows), torch.topk on the CPU
    # and for larger m on many long rows; kernels.topk_auto_impl, measured in docs/KERNELS.md
    mem_lookup_dtype: str = "param"  # the dtype in which the lookup reads the value table. "param" (default): its
    # own (fp32 master weights in training: 4-byte gathers on the kernels' fp32 paths). "autocast": under autocast the
    # table is cast to the autocast dtype first, as autocast casts a linear layer's weight, so the lookup gathers
    # bf16 rows, as the authors' kernel does (it reads a bf16 copy of the fp32 master values that the optimizer
    # keeps; the paper does not say). The cast reads and writes the whole table in every forward and its backward
    # casts the bf16 value gradient back to fp32 (the code accumulates it in fp32): about 14 bytes per table element
    # per micro-batch against 4 saved per slot and element gathered, so it pays where a batch selects each row more
    # than about 2.5 times (tokens x slots / rows; UltraMem-151M's 16 x 2,048 tokens: 4.3, and its step took 165.5
    # against 178.0 ms on the H200, docs/BENCHMARKS.md, session 19; config/ultramem_151m.py sets it) and costs where
    # it selects fewer (the 680M and 1.6B configs: about 1 and 0.2)
    mem_decode: str = "fused"  # TDQKR's retrieval in eval mode without gradient (decoding, evaluation): "fused"
    # (tdqkr_retrieve_fused) one score matmul and one pre-selection top-k, from contiguous buffers: fewer launches
    # per layer and step; "plain" runs the training path's code (as does the init's calibration, so the weights
    # do not depend on this). Fused is the default since session 10: on the H200 its compiled graphs agree with
    # eager for every TDQKR table size of config/small/ and for the paper's three sizes (scripts/diag_compiled_eval.py,
    # which checks both paths; an older fused path was compiled wrong there, session 9), and it decodes UltraMem-1.6B
    # 0.06-0.10 ms per step faster at batch 1-64 (docs/BENCHMARKS.md, "Session 10")

    def __post_init__(self):
        if self.memory not in ("none", "pkm", "ultramem"):
            raise ValueError(f"memory must be 'none', 'pkm' or 'ultramem', got {self.memory!r}")
        if self.memory == "pkm":  # the baseline preset: its step options are fixed, see PKM_PRESET
            defaults = {f.name: f.default for f in fields(MemoryConfig)}
            for k, v in PKM_PRESET.items():
                if getattr(self, k) != defaults[k] and getattr(self, k) != v:
                    raise ValueError(f"memory='pkm' fixes {k}={v!r}; use memory='ultramem' to switch Table 2's steps")
                setattr(self, k, v)
        if self.memory == "none":
            return
        root = math.isqrt(self.mem_expand) if self.mem_expand > 0 else 0
        n = root * self.mem_knum  # row (= column) keys
        checks = [
            (min(self.mem_knum, self.mem_kdim, self.mem_heads, self.mem_topm, self.mem_rank, self.mem_cores) > 0,
             "mem_knum, mem_kdim, mem_heads, mem_topm, mem_rank and mem_cores must be positive"),
            (root > 0 and root * root == self.mem_expand, f"mem_expand={self.mem_expand} must be a perfect square (IVE: E in 1, 4, 9, 16, ...)"),
            (self.mem_topm <= n, f"mem_topm={self.mem_topm} is larger than the number of row keys sqrt(mem_expand)*mem_knum={n}"),
            (self.mem_qk_norm in ("layer", "rms", "none"), f"mem_qk_norm must be 'layer', 'rms' or 'none', got {self.mem_qk_norm!r}"),
            (self.mem_topk in ("auto", "torch", "triton"), f"mem_topk must be 'auto', 'torch' or 'triton', got {self.mem_topk!r}"),
            (self.mem_decode in ("plain", "fused"), f"mem_decode must be 'plain' or 'fused', got {self.mem_decode!r}"),
            (self.mem_lookup_dtype in ("param", "autocast"),
             f"mem_lookup_dtype must be 'param' or 'autocast', got {self.mem_lookup_dtype!r}"),
            (self.mem_init in ("paper", "code", "pkm"), f"mem_init must be 'paper', 'code' or 'pkm', got {self.mem_init!r}"),
            (self.mem_init != "paper" or self.mem_qk_norm != "none", "mem_init='paper' tunes the query/key norm weights: needs mem_qk_norm"),
            (self.mem_tdqkr or self.mem_cores == 1, "mem_cores > 1 (MCS) needs mem_tdqkr=True"),
            (self.mem_expand == 1 or self.mem_value_proj, "mem_expand > 1 (IVE) needs mem_value_proj=True (the projectors W_p)"),
            (self.mem_vdim >= 0 and self.mem_vdim % self.mem_cores == 0,
             f"mem_vdim={self.mem_vdim} must be divisible by mem_cores={self.mem_cores} (MCS slices)"),
            (self.mem_qconv >= 0, f"mem_qconv must be >= 0, got {self.mem_qconv}"),
            (self.mem_value_lr_mult > 0, f"mem_value_lr_mult must be positive, got {self.mem_value_lr_mult}"),
            (self.mem_tucker_alpha >= 0, f"mem_tucker_alpha must be >= 0, got {self.mem_tucker_alpha}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass
class MemoryUnit:
    src: int  # reads block src's normalised FFN input
    dst: int  # output is added to the residual stream right after block dst
    replaces_ffn: bool  # takes the place of block src's MLP (PKM "in place of"); needs src == dst
    module: nn.Module


def parse_placement(spec: str, n_layer: int) -> list[tuple[int, int]]:
    """ "i:j/i2:j2" -> [(i, j), (i2, j2)]; "full" -> [(0, 0), ..., (L-1, L-1)]; "" -> the middle block."""
    if spec == "full":
        return [(i, i) for i in range(n_layer)]
    if spec == "":
        return [(n_layer // 2, n_layer // 2)]
    pairs = []
    for part in spec.split("/"):
        try:
            i, j = (int(s) for s in part.split(":"))
        except ValueError:
            raise ValueError(f"mem_layers: bad entry {part!r} in {spec!r}; expected 'i:j/i2:j2/...' or 'full'") from None
        if not (0 <= i < n_layer and 0 <= j < n_layer):
            raise ValueError(f"mem_layers: {part!r} is outside the model's blocks 0..{n_layer - 1}")
        if i > j:
            raise ValueError(f"mem_layers: {part!r} reads block {i} but adds after block {j}: src must be <= dst")
        pairs.append((i, j))
    return pairs


def build_memory_layers(config) -> list[MemoryUnit]:
    if config.memory == "none":
        return []
    pairs = parse_placement(config.mem_layers, config.n_layer)
    if config.mem_replace_ffn and any(i != j for i, j in pairs):
        raise ValueError(f"mem_replace_ffn needs src == dst for every unit (a memory in place of block i's MLP), got {config.mem_layers!r}")
    return [MemoryUnit(i, j, config.mem_replace_ffn, MemoryLayer(config)) for i, j in pairs]


# ----------------------------------------------------------------------------------------------------
# retrieval: pure functions of the row/column scores (spec 3 steps 3-5, spec 4), tested on their own


def head_scores(q: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """q (T, H, 2, D_k), keys (H, 2, n, r, D_k) -> the row and the column scores s_row, s_col (T, H, n, r):
    each head's row and column queries against its row and column keys. One plain GEMM per head and side (H
    is small) rather than a batched matmul, so that the keys' gradient, a reduction over all T tokens, gets
    cuBLAS's split-K kernels; the two sides stay separate tensors (one stacked tensor costs the backward a
    copy of its gradient: 2.3 ms of the UltraMem-151M step, measured 2026-11-29). The same code with and
    without gradient: a no-gradient variant that returned strided views of one batched matmul, followed by
    one stacked pre-selection top-k, was compiled wrong on the H200 (session 9, docs/RESULTS.md);
    tdqkr_retrieve_fused is the decode path with one matmul."""
    T, H = q.shape[:2]
    n, r, Dk = keys.shape[2:]
    return tuple(torch.stack([q[:, a, b] @ keys[a, b].reshape(n * r, Dk).t() for a in range(H)], dim=1).view(T, H, n, r)
                 for b in range(2))


def pkm_retrieve(s_row: Tensor, s_col: Tensor, m: int, topk: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """PKM product keys: s_row, s_col (T, H, n) -> row, col (T, H, m) and scores (T, H, m, 1) of the top-m
    of the additive grid s_row[i] + s_col[j] (exact: the top-m sums use only the m best rows and columns),
    in no particular order (the lookup sums over the slots and the softmax does not care: no sort).
    topk: kernels.topk_indices' implementation; the scores are gathered, so they carry the gradient."""
    ir = kernels.topk_indices(s_row, m, False, topk)  # (T, H, m)
    ic = kernels.topk_indices(s_col, m, False, topk)
    grid = (s_row.gather(-1, ir).unsqueeze(-1) + s_col.gather(-1, ic).unsqueeze(-2)).flatten(2)  # (T, H, m*m)
    top = kernels.topk_indices(grid, m, False, topk)  # (T, H, m)
    return ir.gather(2, top // m), ic.gather(2, top % m), grid.gather(-1, top).unsqueeze(-1)


def tdqkr_retrieve(s_row: Tensor, s_col: Tensor, cores: Tensor, u: Tensor, t: Tensor, m: int,
                   topk: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """TDQKR with MCS (spec 4.2, 6): s_row, s_col (T, H, n, r); cores (H, h, r, r); u, t (H, r) the leading
    singular vectors of the summed core. Rows/columns are pre-selected by the rank-1 scores u^T S_row,
    t^T S_col; the m x m candidates get their exact per-core scores S_row^T C^(c) S_col; the final top-m is
    taken on the sum over cores. Returns row, col (T, H, m) and
    per-core scores (T, H, m, h), in no particular order (nothing downstream reads it: no sort kernel).
    topk: kernels.topk_indices' implementation for the top-m ("auto", "torch" or "triton"). Rows and columns
    are pre-selected in two top-m calls, with or without gradient (see head_scores for the stacked call's
    miscompilation).

    The rank r is small (2-4), so every contraction over it is a broadcast multiply and a sum, which
    Inductor fuses, not a matmul: cuBLAS runs matmuls with an inner size of 2 far from the bandwidth limit
    (the UltraMem-151M profile in docs/BENCHMARKS.md: a small-tile batched GEMM, 9 ms per layer at 32K
    tokens, one call per layer, as the einsum over the candidate grid was). Only the selection
    (rank-1 scores, the summed m x m grid) is computed without gradient; the per-core scores of the m winners
    are recomputed from gathered rows, so the backward never touches an (m x m x h) tensor."""
    T, H, n, r = s_row.shape
    with torch.no_grad():  # the pre-selection yields indices only, in any order
        pre_r = _rdot(s_row, u.to(s_row.dtype)[None, :, None, :])  # (T, H, n) rank-1 scores
        pre_c = _rdot(s_col, t.to(s_col.dtype)[None, :, None, :])
        sel_r, sel_c = kernels.topk_indices(pre_r, m, False, topk), kernels.topk_indices(pre_c, m, False, topk)
    sr = s_row.gather(2, sel_r.unsqueeze(-1).expand(T, H, m, r))  # (T, H, m, r)
    sc = s_col.gather(2, sel_c.unsqueeze(-1).expand(T, H, m, r))
    return _tucker_top(sel_r, sel_c, sr, sc, cores.to(sr.dtype).transpose(-1, -2)[None, :, :, None], m, topk)


def _tucker_top(sel_r: Tensor, sel_c: Tensor, sr: Tensor, sc: Tensor, cores_t: Tensor, m: int,
                topk: str) -> tuple[Tensor, Tensor, Tensor]:
    """TDQKR's exact step on the pre-selected candidates, for two leading dims (B0, B1) in either order
    (tdqkr_retrieve: token, head; tdqkr_retrieve_fused: head, token): sel_r, sel_c (B0, B1, m) the candidates'
    rows and columns, sr, sc (B0, B1, m, r) their scores, cores_t the cores transposed, C^(c)^T, broadcastable to
    (B0, B1, h, 1, r, r). Returns row, col (B0, B1, m) and the winners' per-core scores (B0, B1, m, h)."""
    B0, B1, _, r = sr.shape
    h = cores_t.shape[2]
    # A[., ., c, i, l] = sum_k S_row[i, k] C^(c)[k, l]: the candidate rows through each core
    a = _rdot(sr[:, :, None, :, None, :], cores_t)  # (B0, B1, h, m, r)
    with torch.no_grad():  # grid[i, j] = sum_l (sum_c A[c, i, l]) S_col[j, l]: the summed Tucker scores, in the
        # scores' dtype (CUDA autocast runs torch.sum in fp32, which made the 151M step's grid top-k read fp32 rows:
        # torch.topk's radix select then takes 4 passes, not 2; the pre-selection already selects in bf16)
        grid = _rdot(a.sum(2)[:, :, :, None, :], sc[:, :, None, :, :]).to(sr.dtype)  # (B0, B1, m, m)
        top = kernels.topk_indices(grid.flatten(2), m, False, topk)  # (B0, B1, m) into the m*m candidates
    i, j = top // m, top % m
    ai = a.gather(3, i[:, :, None, :, None].expand(B0, B1, h, m, r))  # (B0, B1, h, m, r) the winners' rows
    sj = sc.gather(2, j.unsqueeze(-1).expand(B0, B1, m, r))  # (B0, B1, m, r) and columns
    scores = _rdot(ai, sj[:, :, None]).transpose(2, 3)  # (B0, B1, m, h)
    return sel_r.gather(2, i), sel_c.gather(2, j), scores


def tdqkr_retrieve_fused(q: Tensor, keys: Tensor, cores: Tensor, u: Tensor, t: Tensor, m: int,
                         topk: str = "auto") -> tuple[Tensor, Tensor, Tensor]:
    """head_scores + tdqkr_retrieve without gradient (mem_decode="fused"), from q (T, H, 2, D_k) and keys
    (H, 2, n, r, D_k), with one batched matmul for every head's row and column scores and one top-m call for both
    pre-selections: the same selection and scores up to the rounding of the matmul's sums (bf16 near-ties may pick
    other slots; tests compare them in fp32/fp64). Every tensor stays in the matmul's (head, side, token) order, so
    no strided view of its output is stacked (the variant that did was compiled wrong on the H200: head_scores)."""
    T, H = q.shape[:2]
    n, r, Dk = keys.shape[2:]
    s = torch.bmm(q.permute(1, 2, 0, 3).reshape(2 * H, T, Dk), keys.reshape(2 * H, n * r, Dk).transpose(1, 2))
    s = s.view(H, 2, T, n, r)  # contiguous: [head, side, token] rows
    pre = _rdot(s, torch.stack([u, t], 1).to(s.dtype)[:, :, None, None, :])  # (H, 2, T, n) rank-1 scores
    # the implementation the plain path's two calls get ("auto" decides on the rows per side, not the stacked 2x)
    pre_impl = kernels.topk_auto_impl((H, T, n), m, pre.dtype, pre.is_cuda) if topk == "auto" else topk
    sel = kernels.topk_indices(pre, m, False, pre_impl)  # (H, 2, T, m) rows' and columns' candidates, one call
    g = s.gather(3, sel.unsqueeze(-1).expand(H, 2, T, m, r))  # (H, 2, T, m, r) their scores
    cores_t = cores.to(s.dtype).transpose(-1, -2)[:, None, :, None]  # (H, 1, h, 1, r, r)
    rows, cols, scores = _tucker_top(sel[:, 0], sel[:, 1], g[:, 0], g[:, 1], cores_t, m, topk)  # (H, T, ...)
    return rows.transpose(0, 1), cols.transpose(0, 1), scores.transpose(0, 1)


def _rdot(x: Tensor, y: Tensor) -> Tensor:
    """sum_l x[..., l] * y[..., l] with broadcasting, for a small last (rank) dimension: one product per l
    (eager holds one output-sized temporary, not the broadcast product; Inductor fuses the whole sum)."""
    return sum(x[..., l] * y[..., l] for l in range(x.shape[-1]))


def tucker_aux_loss(cores: Tensor, alpha: float, tau: float) -> Tensor:
    """alpha/(r-1) * sum_{i>=2} relu(lambda_i - tau)^2 of the summed core's singular values (spec 4.3),
    averaged over heads (as the code's mean)."""
    lam = torch.linalg.svdvals(cores.float().sum(1))  # (H, r), descending
    return alpha * F.relu(lam[:, 1:] - tau).square().mean()


# ----------------------------------------------------------------------------------------------------
# the layer


class MemoryLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        D = c.n_embd
        self.D, self.H, self.m, self.Dk, self.E = D, c.mem_heads, c.mem_topm, c.mem_kdim, c.mem_expand
        self.N = c.mem_knum ** 2  # physical values
        self.n = math.isqrt(self.E) * c.mem_knum  # row (= column) keys: the grid has n^2 = E*N virtual slots
        self.r = c.mem_rank if c.mem_tdqkr else 1
        self.h = c.mem_cores if c.mem_tdqkr else 1
        self.Dv = c.mem_vdim or (D // 2 if c.mem_value_proj else D)
        self.tdqkr, self.softmax, self.qk_norm, self.init = c.mem_tdqkr, c.mem_softmax, c.mem_qk_norm, c.mem_init
        self.value_lr_mult, self.alpha, self.tau = c.mem_value_lr_mult, c.mem_tucker_alpha, c.mem_tucker_tau
        self.n_layer, self.kconv, self.topk, self.decode = c.n_layer, c.mem_qconv, c.mem_topk, c.mem_decode
        self.lookup_dtype = c.mem_lookup_dtype
        if self.Dv % self.h:
            raise ValueError(f"value dim {self.Dv} must be divisible by mem_cores={self.h} (MCS slices)")
        if not c.mem_value_proj and self.Dv != D:
            raise ValueError(f"without mem_value_proj the values are added to the residual: mem_vdim must be n_embd={D}, got {self.Dv}")
        self.Hq = 1 if c.mem_share_query else self.H  # query heads
        self.conv = nn.Parameter(torch.empty(D, 1, self.kconv)) if self.kconv else None  # (D, 1, K) depthwise
        self.query_proj = nn.Linear(D, self.Hq * 2 * self.Dk, bias=False)
        self.keys = nn.Parameter(torch.empty(self.H, 2, self.n, self.r, self.Dk))  # (H, row|col, n, r, D_k)
        # one affine weight for q_row and q_col, one for all keys (code); no bias
        norm_w = (lambda: nn.Parameter(torch.ones(self.Dk))) if self.qk_norm != "none" else (lambda: None)
        self.query_norm, self.key_norm = norm_w(), norm_w()
        self.cores = nn.Parameter(torch.empty(self.H, self.h, self.r, self.r)) if self.tdqkr else None
        self.values = nn.Parameter(torch.empty(self.N, self.Dv))  # the sparse parameters
        self.value_proj = nn.Linear(self.E * self.Dv, D, bias=False) if c.mem_value_proj else None
        # virtual-address shuffle (IVE; identity without it), rank-1 selection vectors: persistent buffers
        self.register_buffer("perm", torch.randperm(self.E * self.N) if self.E > 1 else torch.arange(self.N))
        self.register_buffer("u", torch.zeros(self.H, self.r))
        self.register_buffer("t", torch.zeros(self.H, self.r))
        self.register_buffer("conv_cache", None, persistent=False)  # set by setup_cache
        self.register_buffer("keys_cache", None, persistent=False)  # the normalised keys, set by setup_cache
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        Dk, E, Dv = self.Dk, self.E, self.Dv
        if self.conv is not None:  # identity: starts as the plain query (the paper's init is unknown)
            self.conv.zero_()[:, 0, -1] = 1.0
        if self.cores is not None:
            self.cores.uniform_(0.0, 1.0)  # code
        if self.value_proj is not None:
            nn.init.normal_(self.value_proj.weight, std=(E * Dv) ** -0.5)  # code
        if self.qk_norm != "none":  # the code's constants; the paper's init below replaces them
            self.query_norm.fill_(Dk ** -0.33)
            self.key_norm.fill_(Dk ** -0.33)
        if self.init == "pkm":  # XLM: keys uniform like nn.Linear, values N(0, D_v^-1/2)
            self.query_proj.reset_parameters()
            self.keys.uniform_(-(Dk ** -0.5), Dk ** -0.5)
            self.values.normal_(std=Dv ** -0.5)
        else:  # the code's constants
            nn.init.normal_(self.query_proj.weight, std=Dk ** -0.5)
            self.keys.normal_(std=Dk ** -0.5)
            self.values.normal_(std=0.02)
        self.refresh()
        if self.init == "paper":
            self.paper_init()

    @torch.no_grad()
    def paper_init(self) -> None:
        """Spec 7.1: V ~ N(0, E/(2 m H L)) so the output variance matches an MLP branch's; key-norm weight
        1/sqrt(D_k) makes row/column scores ~ N(0, 1); the query-norm weight is then tuned by a seeded
        Monte Carlo (random inputs through the real scoring) so that the mean top-m score is ~1."""
        self.values.normal_(std=math.sqrt(self.E / (2 * self.m * self.H * self.n_layer)))
        self.key_norm.fill_(self.Dk ** -0.5)
        self.query_norm.fill_(1.0)
        if self.keys.is_meta:
            return
        x = torch.randn(64, self.D, generator=torch.Generator().manual_seed(0), device="cpu").to(self.keys.device)
        mean = self.retrieve(x)[2].sum(-1).float().mean().item()  # scores (T, H, m, h) summed over cores
        if mean > 0:  # a Tucker score is a product of a row and a column score: each side gets the sqrt
            self.query_norm.fill_(mean ** -0.5 if self.tdqkr else 1.0 / mean)

    @torch.no_grad()
    def refresh(self) -> None:
        """Rank-1 selection vectors (spec 4.2): u, t = leading left/right singular vectors of the summed core
        per head, in fp32, with the sign of (u, t) kept continuous with the previous pair (first time:
        u sums to >= 0)."""
        if self.cores is None or self.cores.is_meta:
            return
        U, _, Vh = torch.linalg.svd(self.cores.float().sum(1))  # (H, r, r)
        u, t = U[:, :, 0], Vh[:, 0, :]  # (H, r)
        first = (self.u == 0).all(dim=-1, keepdim=True)  # (H, 1)
        keep = ((u - self.u).abs().sum(-1) + (t - self.t).abs().sum(-1) <= (u + self.u).abs().sum(-1) + (t + self.t).abs().sum(-1))
        sign = torch.where(first.squeeze(-1), torch.where(u.sum(-1) >= 0, 1.0, -1.0), torch.where(keep, 1.0, -1.0))[:, None]
        self.u.copy_(u * sign)
        self.t.copy_(t * sign)

    @torch.no_grad()
    def setup_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device) -> None:
        """State for cached decoding: the keys normalised once (decoding does not change them: set up the
        caches again after loading other weights, as GPT.generate does at every call), and the query conv's
        last inputs, a ring of kconv positions (position p in slot p % kconv), so it costs B x kconv x D, not
        a KV cache's B x max_len x D."""
        self.keys_cache = self._norm(self.keys, self.key_norm).to(dtype)
        if self.conv is not None:
            self.conv_cache = torch.zeros(batch_size, self.kconv, self.D, dtype=dtype, device=device)  # (B, K, D)

    # ---------------------------------------------------------------------------------------------
    def query_conv(self, x: Tensor, input_pos: Tensor | None) -> Tensor:
        """Causal depthwise Conv1d along the sequence, before the query projection. x (B, T, D)."""
        K = self.kconv
        if input_pos is None:
            return F.conv1d(F.pad(x.transpose(1, 2), (K - 1, 0)), self.conv.to(x.dtype), groups=self.D).transpose(1, 2)
        # cached decoding: input_pos holds consecutive positions p0..p0+T-1 (a prefill chunk or one token);
        # the K-1 inputs before p0 come from the ring (zeros before position 0, as the padding above)
        B, T = x.shape[:2]
        prev = input_pos[:1] - torch.arange(K - 1, 0, -1, device=x.device)  # (K-1,) positions p0-K+1..p0-1
        past = self.conv_cache[:B, prev % K] * (prev >= 0)[None, :, None]  # (B, K-1, D)
        xe = torch.cat([past.to(x.dtype), x], dim=1)  # (B, K-1+T, D)
        last = min(T, K)  # the chunk's last K inputs go to the ring (distinct slots)
        slots = (torch.arange(B, device=x.device)[:, None], (input_pos[T - last:] % K)[None, :])
        self.conv_cache.index_put_(slots, x[:, T - last:].to(self.conv_cache.dtype))  # not through a [:B] view (KVCache)
        w = self.conv[:, 0].to(x.dtype)  # (D, K): the same correlation as F.conv1d, as K shifted products
        return sum(xe[:, k:k + T] * w[:, k] for k in range(K))  # that Inductor fuses with the ring's reads

    def _norm(self, x: Tensor, w: Tensor | None) -> Tensor:
        if self.qk_norm == "layer":
            return F.layer_norm(x, (self.Dk,), w)
        return F.rms_norm(x, (self.Dk,), w) if self.qk_norm == "rms" else x

    def retrieve(self, x: Tensor, cached: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """x (T, D) -> row, col (T, H, m) and per-core scores (T, H, m, h): spec 3 steps 1-5. cached: the
        normalised keys of setup_cache (decoding), else normalised here."""
        T = x.shape[0]
        q = self._norm(self.query_proj(x).view(T, self.Hq, 2, self.Dk), self.query_norm)
        q = q.expand(T, self.H, 2, self.Dk)  # (T, H, 2, D_k): shared query -> every head reads the same
        keys = self.keys_cache if cached else self._norm(self.keys, self.key_norm)  # (H, 2, n, r, D_k)
        if self.tdqkr and self.decode == "fused" and not self.training and not torch.is_grad_enabled():
            return tdqkr_retrieve_fused(q, keys.to(q.dtype), self.cores, self.u, self.t, self.m, self.topk)
        s_row, s_col = head_scores(q, keys.to(q.dtype))  # (T, H, n, r) each
        if self.tdqkr:
            return tdqkr_retrieve(s_row, s_col, self.cores, self.u, self.t, self.m, self.topk)
        return pkm_retrieve(s_row.squeeze(-1), s_col.squeeze(-1), self.m, self.topk)

    def select(self, h: Tensor, input_pos: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """h (B, T, D) -> shuffled virtual addresses (B*T, H*m) in [0, E*N) and their per-core weights
        (B*T, H*m, h) (raw Tucker scores, or the PKM softmax over each head's m)."""
        x = self.query_conv(h, input_pos) if self.conv is not None else h
        # cached decoding reads the keys normalised once by setup_cache (a step would otherwise normalise the
        # whole key table: at 1.6B, 29 MB read and written per layer, a quarter of the layer's kernel time)
        cached = input_pos is not None and self.keys_cache is not None and not torch.is_grad_enabled()
        row, col, scores = self.retrieve(x.reshape(-1, self.D), cached)  # (T, H, m), (T, H, m, h)
        if self.softmax:
            scores = scores.float().softmax(dim=2)
        addr = self.perm[(row * self.n + col).flatten(1)]  # (T, H*m) shuffled virtual addresses
        return addr, scores.flatten(1, 2)

    def forward(self, h: Tensor, input_pos: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        B, T, D = h.shape
        addr, scores = self.select(h, input_pos)  # (B*T, H*m), (B*T, H*m, h)
        values = self.values
        if self.lookup_dtype == "autocast" and torch.is_autocast_enabled(values.device.type):
            values = values.to(torch.get_autocast_dtype(values.device.type))  # mem_lookup_dtype: as F.linear's weight
        # IVE decode (physical row, virtual block), MCS weighting and pooling per virtual block: one call
        pooled = kernels.mem_lookup(values, addr % self.N, addr // self.N, scores.to(values.dtype), self.E)  # (B*T, E, D_v)
        y = self.value_proj(pooled.flatten(1)) if self.value_proj is not None else pooled[:, 0]  # (B*T, D)
        aux = {}
        inference = not self.training and not torch.is_grad_enabled()  # decoding: nothing would use the loss,
        # and its SVD (cuSOLVER on CUDA) would run in every layer at every step, as MoE's routing losses would
        if self.alpha > 0 and self.cores is not None and self.r > 1 and not inference:
            with torch.autocast(h.device.type, enabled=False):
                aux["tucker"] = tucker_aux_loss(self.cores, self.alpha, self.tau)
        return y.view(B, T, D), aux

    # ---------------------------------------------------------------------------------------------
    def param_tags(self) -> dict[str, dict]:
        """The values learn at mem_value_lr_mult x the base rate, decaying linearly to 1x (spec 7.2); they
        keep weight decay (code)."""
        return {"values": {"lr_mult": (self.value_lr_mult, 1.0), "weight_decay": True}}

    def activated_params(self) -> int:
        """Read per token: everything dense (query, all keys, cores, norms, projection) and m*H value rows."""
        dense = sum(p.numel() for name, p in self.named_parameters() if name != "values")
        return dense + self.H * self.m * self.Dv

    def flops_per_token(self) -> float:
        """Forward FLOPs per token: conv, query projection, row/column scores over all keys (the key table
        once), rank-1 pre-selection, per-core grid on the m x m candidates, pooling of m*H rows, projection."""
        H, m, r, h, n = self.H, self.m, self.r, self.h, self.n
        f = 2 * self.D * self.kconv + 2 * self.query_proj.weight.numel() + 2 * self.keys.numel()
        f += 2 * 2 * H * n * r + 2 * h * H * (m * r * r + m * m * r) if self.tdqkr else H * m * m
        f += 2 * H * m * self.Dv
        if self.value_proj is not None:
            f += 2 * self.value_proj.weight.numel()
        return float(f)
