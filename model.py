"""
The transformer: config, attention, dense MLP, MoE, block, GPT.

Read top to bottom in the order data flows. Memory layers (PKM, UltraMem) live in memory.py and plug in
beside the blocks (see GPT.forward); everything a comparison needs (parameter and FLOP counters, MFU,
optimizer groups, KV-cache decoding) is here so that dense, MoE and memory models are measured alike.

Positions: rotary by default (the authors' release is an OLMo fork, which uses RoPE; it costs no
parameters, so dense/MoE/UltraMem counts are not skewed by a position table). `pos_emb="learned"` gives
GPT-2's learned table, used by config/gpt2_small.py to compare like for like with nanoGPT.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import flex_attention

import kernels
from memory import MemoryConfig


@dataclass
class GPTConfig(MemoryConfig):
    # the memory-layer settings (memory = "none" | "pkm" | "ultramem", mem_*) are inherited from
    # memory.MemoryConfig so that memory.py owns them; everything is one flat namespace for configs.
    block_size: int = 1024  # longest sequence (training context and KV-cache limit)
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 0  # grouped-query attention: key/value heads; 0 means n_head (plain multi-head)
    n_embd: int = 768
    mlp_hidden: int = 0  # dense MLP inner width; 0 means 4 * n_embd
    dropout: float = 0.0
    bias: bool = False  # biases in linears and LayerNorms
    pos_emb: str = "rope"  # "rope" | "learned"
    rope_theta: float = 10000.0
    init_std: float = 0.02
    tie_weights: bool = True
    ffn: str = "dense"  # "dense" | "moe"
    # MoE (ffn = "moe"): top-k routing over moe_num_experts experts of the dense MLP's shape
    moe_num_experts: int = 32
    moe_top_k: int = 2
    moe_hidden: int = 0  # expert inner width; 0 means mlp_hidden
    moe_renorm: bool = True  # renormalise the k chosen router weights to sum to 1
    moe_aux_coef: float = 0.01  # Switch/GShard load-balancing loss coefficient
    moe_z_coef: float = 0.0  # router z-loss coefficient (ST-MoE); 0 disables
    moe_impl: str = "auto"  # "auto" (CUDA: fused for 1-MOE_FUSED_MAX_TOKENS tokens and triton up to 1024 when
    # decoding, else grouped; CPU: loop) | "grouped" | "triton" | "loop" | inference of a few tokens: "fused" (the
    # whole layer, routing included, in kernels.moe_decode) or "gather" (kernels.moe_gather_mm)
    # cached decoding's attention (docs/BENCHMARKS.md, decode): "sdpa" (masked scaled_dot_product_attention)
    # | "matmul" (two batched matmuls) | "flex" (FlexAttention's split-KV decoding; compile the step)
    # | "triton" (kernels.decode_attention: split-KV, inference only)
    attn_decode: str = "sdpa"

    def __post_init__(self):
        super().__post_init__()
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.mlp_hidden == 0:
            self.mlp_hidden = 4 * self.n_embd
        if self.moe_hidden == 0:
            self.moe_hidden = self.mlp_hidden
        checks = [
            (self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}"),
            (self.n_head % self.n_kv_head == 0, f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head}"),
            (self.pos_emb in ("rope", "learned"), f"pos_emb must be 'rope' or 'learned', got {self.pos_emb!r}"),
            (self.pos_emb != "rope" or (self.n_embd // self.n_head) % 2 == 0, "rope needs an even head dimension"),
            (self.ffn in ("dense", "moe"), f"ffn must be 'dense' or 'moe', got {self.ffn!r}"),
            (0 < self.moe_top_k <= self.moe_num_experts, f"moe_top_k={self.moe_top_k} must be in 1..moe_num_experts={self.moe_num_experts}"),
            (self.moe_impl in ("auto", "grouped", "triton", "fused", "gather", "loop"),
             f"moe_impl must be 'auto', 'grouped', 'triton', 'fused', 'gather' or 'loop', got {self.moe_impl!r}"),
            (self.attn_decode in ("sdpa", "matmul", "flex", "triton"),
             f"attn_decode must be 'sdpa', 'matmul', 'flex' or 'triton', got {self.attn_decode!r}"),
            (self.ffn != "moe" or not self.bias, "MoE experts have no biases: use bias=False with ffn='moe'"),
            (self.ffn != "moe" or self.moe_impl == "loop" or (self.n_embd % 8 == 0 and self.moe_hidden % 8 == 0),
             f"grouped MoE needs n_embd={self.n_embd} and moe_hidden={self.moe_hidden} to be multiples of 8 (16-byte bf16 rows)"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (min(self.block_size, self.vocab_size, self.n_layer, self.n_embd) > 0, "block_size, vocab_size, n_layer and n_embd must be positive"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        """Build from a flat dict (a training config or a checkpoint), ignoring keys that are not model settings."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ----------------------------------------------------------------------------------------------------
# attention


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (T, hd/2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # x: (B, T, H, hd); cos, sin: (T, hd/2). Rotates the two halves of each head (GPT-NeoX layout).
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).type_as(x)


class KVCache(nn.Module):
    """A static, preallocated key/value cache (gpt-fast style): decoding writes at input_pos in place."""

    def __init__(self, batch_size: int, max_len: int, n_kv_head: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        # k, v: (B, KV, T, hd) written at positions input_pos (T,) of the first B sequences. One index_put on
        # the whole buffer: writing through the view self.k[:B] compiles (when B < the cache's batch) to a
        # copy of the view out of the cache and back, 4x its size per step (measured: 7 us per K or V write at
        # batch 1 of a batch-64 MHA cache on the H200)
        B, KV, T = k.shape[:3]
        idx = (torch.arange(B, device=k.device)[:, None, None], torch.arange(KV, device=k.device)[None, :, None],
               input_pos[None, None, :])
        self.k.index_put_(idx, k.to(self.k.dtype))
        self.v.index_put_(idx, v.to(self.v.dtype))
        return self.k[:B], self.v[:B]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.n_embd // config.n_head
        qkv_dim = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.attn_decode = config.attn_decode
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None, input_pos: Tensor | None, mask: Tensor | None) -> Tensor:
        B, T, C = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=-1)
        q, k, v = q.view(B, T, self.n_head, hd), k.view(B, T, self.n_kv_head, hd), v.view(B, T, self.n_kv_head, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
        if input_pos is None:  # training / full forward: causal flash attention over the sequence
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_head != self.n_head,
            )
        else:  # cached decoding: attend over the whole static cache, masked to positions <= input_pos
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, KV, S, hd)
            k, v = k.to(q.dtype), v.to(q.dtype)
            rep = self.n_head // self.n_kv_head
            if self.attn_decode == "triton":  # kernels.decode_attention: split-KV Triton kernel, GQA native
                y = kernels.decode_attention(q, k, v, input_pos)
            elif self.attn_decode == "flex":  # FlexAttention: split-KV decoding kernel, GQA without copies
                def causal(score, b, h, q_idx, kv_idx):  # the cache's positions after input_pos: -inf
                    return torch.where(kv_idx <= input_pos[q_idx], score, float("-inf"))
                y = flex_attention(q, k, v, score_mod=causal, enable_gqa=rep > 1)
            else:
                if rep > 1:
                    # GQA without copying the cache: the rep query heads that share a KV head become rep*T
                    # query rows of that head (heads h = g*rep + r, as repeat_interleave pairs them), so
                    # attention reads each cached K/V row once instead of materialising rep copies.
                    q = q.reshape(B, self.n_kv_head, rep * T, hd)
                    mask = mask.repeat(1, 1, rep, 1)  # (1, 1, T, S) -> rows r*T + t
                if self.attn_decode == "matmul":  # two batched matmuls around a masked fp32 softmax
                    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # (B, KV, rep*T, S)
                    att = att.float().masked_fill(~mask, float("-inf")).softmax(dim=-1).to(q.dtype)
                    y = att @ v
                else:
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                y = y.view(B, self.n_head, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.c_proj(y))


# ----------------------------------------------------------------------------------------------------
# feed-forward: dense MLP and mixture of experts. Every feed-forward returns (output, aux losses).


class MLP(nn.Module):
    """The paper's dense MLP: two linears with a GeLU between."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x)))), {}


def moe_route(logits: Tensor, k: int, renorm: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Router logits (N, E), fp32 -> (probs (N, E), top-k weights (N, k), top-k expert ids (N, k))."""
    probs = logits.softmax(dim=-1)
    weights, experts = probs.topk(k, dim=-1)
    if renorm:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, weights, experts


def moe_experts_loop(x: Tensor, w_fc: Tensor, w_proj: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
    """Reference experts: a Python loop over experts with boolean masks. x (N, D), w_fc (E, D, F),
    w_proj (E, F, D), weights / experts (N, k) -> (N, D) in fp32. Eager only (data-dependent shapes)."""
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for e in range(w_fc.shape[0]):
        tok, slot = (experts == e).nonzero(as_tuple=True)  # the tokens routed to e, and in which of k slots
        h = F.gelu(x[tok] @ w_fc[e]) @ w_proj[e]  # (n_e, D)
        y.index_add_(0, tok, h.float() * weights[tok, slot, None])
    return y


def moe_experts_grouped(x: Tensor, w_fc: Tensor, w_proj: Tensor, weights: Tensor, experts: Tensor,
                        triton: bool = False) -> Tensor:
    """Dropless grouped experts: the N*k token-slots sorted by expert, one torch._grouped_mm per projection,
    then un-permuted and summed with the router weights. Same signature and result as moe_experts_loop;
    no Python loop over experts, no host synchronisation, static shapes (compiles with fullgraph=True and
    captures in a CUDA graph). Empty groups are zero-row problems: the kernel has no tile for them, so an
    expert that no token chose is not read. Runs in bf16 on every device: on CUDA only bf16 takes the
    grouped kernel (CUTLASS, sm90/sm100; other dtypes fall back to a per-expert loop that syncs with the
    host) and torch.compile's shape function accepts only bf16. A model held in bf16 (decoding) casts
    nothing; fp32 weights (training under autocast) are cast once per step, as autocast casts a linear's.
    triton=True: kernels.moe_grouped_mm instead (a weight-streaming Triton kernel for decoding: inference
    only, GeLU fused; same result up to the GeLU's rounding)."""
    N, k = experts.shape
    E = w_fc.shape[0]
    dt = torch.bfloat16
    flat = experts.reshape(-1)  # (N*k,) expert of each token-slot, slot j of token t at t*k + j
    sorted_e, order = flat.sort(stable=True)  # (N*k,)
    # offs[e] = rows of experts 0..e: the int32 cumulative row ends _grouped_mm takes; offs[-1] = N*k
    offs = torch.searchsorted(sorted_e, torch.arange(E, device=x.device), right=True).to(torch.int32)  # (E,)
    xs = x.to(dt).index_select(0, order // k)  # (N*k, D) token rows in expert order
    if triton:
        h = kernels.moe_grouped_mm(xs, w_fc.to(dt), offs, gelu=True)  # (N*k, F)
        ys = kernels.moe_grouped_mm(h, w_proj.to(dt), offs)  # (N*k, D)
    else:
        h = F.gelu(torch._grouped_mm(xs, w_fc.to(dt), offs=offs))  # (N*k, F)
        ys = torch._grouped_mm(h, w_proj.to(dt), offs=offs)  # (N*k, D)
    inv = torch.empty_like(order).scatter_(0, order, torch.arange(N * k, device=x.device))  # slot -> sorted row
    ys = ys.index_select(0, inv).view(N, k, -1)  # (N, k, D) back in token order
    return (ys.float() * weights.unsqueeze(-1)).sum(dim=1)  # (N, D) weighted sum of each token's k experts


def moe_experts_gather(x: Tensor, w_fc: Tensor, w_proj: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
    """Experts for decoding a few tokens: each token-slot's two projections as gathered matrix-vector
    products (kernels.moe_gather_mm: row j of token t reads w[experts[t, j]]), no sort and no permutation;
    then the weighted sum. Same signature and result as moe_experts_loop. Inference only. Weights are used
    in their own dtype (a cast would copy every expert)."""
    N, k = experts.shape
    ids = experts.reshape(-1)  # (N*k,) slot j of token t at t*k + j
    h = F.gelu(kernels.moe_gather_mm(x.to(w_fc.dtype), w_fc, ids, x_div=k)).to(w_fc.dtype)  # (N*k, F)
    ys = kernels.moe_gather_mm(h, w_proj, ids)  # (N*k, D) fp32
    return (ys.view(N, k, -1) * weights.unsqueeze(-1)).sum(dim=1)  # (N, D)


MOE_TRITON_MAX_TOKENS = 1024  # moe_impl="auto": tokens up to which inference takes kernels.moe_grouped_mm
MOE_FUSED_MAX_TOKENS = 16  # ... and up to which it takes kernels.moe_decode, the whole layer fused, instead (its
# most token-slots at top-2). MoE-1.6B layer on the H200 (2026-11-30, docs/BENCHMARKS.md): fused / triton 33.1 / 84.9
# us at 1 token, 80.8 / 133.4 at 4, 140.2 / 171.0 at 8, 224.6 / 260.9 at 16.


class MoE(nn.Module):
    """Dropless top-k mixture of experts (ffn = "moe"): a linear router (softmax in fp32, top-k, optional
    renormalisation of the k weights) over moe_num_experts experts of the dense MLP's shape (two linears
    with a GeLU between, no biases), plus the Switch/GShard load-balancing loss and an optional router
    z-loss. Expert weights are stacked: w_fc (E, D, F), w_proj (E, F, D)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        E, D, Fh = config.moe_num_experts, config.n_embd, config.moe_hidden
        self.n_experts, self.top_k, self.renorm = E, config.moe_top_k, config.moe_renorm
        self.aux_coef, self.z_coef, self.impl = config.moe_aux_coef, config.moe_z_coef, config.moe_impl
        self.init_std, self.n_layer = config.init_std, config.n_layer
        self.router = nn.Linear(D, E, bias=False)
        self.w_fc = nn.Parameter(torch.empty(E, D, Fh))
        self.w_proj = nn.Parameter(torch.empty(E, Fh, D))
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as the dense MLP: N(0, init_std), the residual output projection scaled by 1/sqrt(2 * n_layer)
        nn.init.normal_(self.router.weight, std=self.init_std)
        nn.init.normal_(self.w_fc, std=self.init_std)
        nn.init.normal_(self.w_proj, std=self.init_std / math.sqrt(2 * self.n_layer))

    def forward(self, x: Tensor, residual: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """x (B, T, D) -> (the layer's output, its auxiliary losses). With residual (B, T, D), the output is
        residual + the layer (Block.forward's add): the fused path adds it inside its last kernel."""
        B, T, D = x.shape
        xf = x.reshape(B * T, D)  # (N, D)
        impl = self.impl if self.impl != "auto" else self.auto_impl(B * T, x.is_cuda)
        if impl == "fused":  # routing, both projections and the weighting in kernels.moe_decode: nothing else to do
            if self.training or torch.is_grad_enabled():
                raise RuntimeError("moe_impl='fused' is inference only: call model.eval() and run under "
                                   "torch.no_grad() (it computes no gradients and no auxiliary losses)")
            wdt = self.w_fc.dtype
            fuse = residual is not None and residual.dtype == wdt  # else added below, in the residual's dtype
            y = kernels.moe_decode(xf.to(wdt), self.router.weight, self.w_fc, self.w_proj, self.top_k, self.renorm,
                                   residual=residual.reshape(B * T, D).contiguous() if fuse else None)
            if fuse:
                return y.view(B, T, D), {}
            y, aux = y.to(x.dtype).view(B, T, D), {}
        else:
            y, aux = self._routed(x, xf, impl)
        return (y if residual is None else residual + y), aux

    def _routed(self, x: Tensor, xf: Tensor, impl: str) -> tuple[Tensor, dict[str, Tensor]]:
        """The unfused paths (impl "loop", "gather", "grouped" or "triton"): the routing in PyTorch, the experts, and
        in training the auxiliary losses and dropout. x (B, T, D), xf its (N, D) view -> ((B, T, D) in x.dtype, aux)."""
        B, T, D = x.shape
        with torch.autocast(x.device.type, enabled=False):  # routing in fp32
            logits = F.linear(xf.float(), self.router.weight.float())  # (N, E)
        probs, weights, experts = moe_route(logits, self.top_k, self.renorm)  # (N, E), (N, k), (N, k)
        if impl == "loop":
            y = moe_experts_loop(xf, self.w_fc, self.w_proj, weights, experts)
        elif impl == "gather":
            y = moe_experts_gather(xf, self.w_fc, self.w_proj, weights, experts)
        else:
            y = moe_experts_grouped(xf, self.w_fc, self.w_proj, weights, experts, triton=impl == "triton")
        y = y.to(x.dtype).view(B, T, D)
        if not self.training and not torch.is_grad_enabled():  # inference (decoding): no objective to add to
            return y, {}
        # Switch/GShard balance: E * sum_e f_e P_e, f_e = share of the N*k token-slots routed to e (no
        # gradient), P_e = mean router probability of e. Uniform routing gives 1 (balanced), skewed more.
        counts = torch.zeros(self.n_experts, device=x.device).scatter_add_(
            0, experts.reshape(-1), torch.ones(experts.numel(), device=x.device))  # (E,)
        f = counts / experts.numel()
        aux = {"moe_balance": self.aux_coef * self.n_experts * (f * probs.mean(dim=0)).sum()}
        if self.z_coef > 0:  # ST-MoE router z-loss: mean logsumexp(logits)^2
            aux["moe_z"] = self.z_coef * logits.logsumexp(dim=-1).square().mean()
        return self.dropout(y), aux

    def auto_impl(self, n_tokens: int, cuda: bool) -> str:
        """moe_impl="auto"'s choice for n_tokens. Decoding (eval, no grad, few tokens): up to MOE_FUSED_MAX_TOKENS the
        fused layer (1.14-1.77x its floor at 1-16 tokens), then the Triton kernel, whose two projections were measured
        at 1.03-1.14x their floor at 8-512 tokens (the whole layer 1.19-1.42x, torch._grouped_mm's 1.7-1.8x;
        docs/BENCHMARKS.md); training and prefills: grouped; on CPU the loop."""
        if not cuda:
            return "loop"
        decode = not torch.is_grad_enabled() and n_tokens <= MOE_TRITON_MAX_TOKENS
        if decode and not self.training and n_tokens <= MOE_FUSED_MAX_TOKENS \
                and n_tokens * self.top_k <= kernels.MOE_DECODE_MAX_SLOTS:
            return "fused"
        return "triton" if decode else "grouped"

    def activated_params(self) -> int:
        """Per token: the router and k experts."""
        return self.router.weight.numel() + self.top_k * (self.w_fc[0].numel() + self.w_proj[0].numel())

    def flops_per_token(self) -> float:
        """Forward matmul FLOPs per token: the router and k experts' two projections (2 per weight)."""
        return 2.0 * self.activated_params()


# ----------------------------------------------------------------------------------------------------
# block and model


class Block(nn.Module):
    """Pre-norm block. Returns the new residual stream and the normalised FFN input, which a memory
    layer placed at this block reads (spec section 2: "block i's normalised FFN input")."""

    def __init__(self, config: GPTConfig, has_ffn: bool = True):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        # a PKM memory can replace a block's MLP (mem_replace_ffn); the block then has no feed-forward
        self.ffn = (MoE(config) if config.ffn == "moe" else MLP(config)) if has_ffn else None

    def forward(self, x, rope, input_pos, mask) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        x = x + self.attn(self.ln_1(x), rope, input_pos, mask)
        h = self.ln_2(x)
        if self.ffn is None:
            return x, h, {}
        if isinstance(self.ffn, MoE):  # it adds the residual itself (in its fused decode kernel, when it takes it)
            x, aux = self.ffn(h, residual=x)
            return x, h, aux
        y, aux = self.ffn(h)
        return x + y, h, aux


def _add_aux(total: dict[str, Tensor], new: dict[str, Tensor]) -> None:
    for k, v in new.items():
        total[k] = total[k] + v if k in total else v


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        # memory units (memory.py): each reads block `src`'s normalised FFN input and adds its output to
        # the residual stream right after block `dst`; `replaces_ffn` units take the place of src's MLP.
        import memory

        units = memory.build_memory_layers(config)  # list of memory.MemoryUnit
        replaced = {u.src for u in units if u.replaces_ffn}
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos_emb == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, has_ffn=i not in replaced) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        if config.pos_emb == "rope":
            cos, sin = rope_tables(config.n_embd // config.n_head, config.block_size, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()
        # memory units initialise themselves (the paper's init differs from the dense layers')
        self.memories = nn.ModuleList([u.module for u in units])
        self.mem_src = [u.src for u in units]
        self.mem_dst = [u.dst for u in units]
        self.causal_mask: Tensor | None = None  # set by setup_caches

    def _init_weights(self):
        # GPT-2 init: N(0, init_std) everywhere, residual output projections scaled by 1/sqrt(2 * n_layer)
        std = self.config.init_std
        for name, m in self.named_modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                scale = 1 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj") else 1.0
                nn.init.normal_(m.weight, mean=0.0, std=std * scale)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif hasattr(m, "reset_parameters") and m is not self and not isinstance(m, nn.LayerNorm):
                # modules with their own init (MoE experts) apply it with the model's config
                m.reset_parameters()

    # ---------------------------------------------------------------------------------------------
    def forward(self, idx: Tensor, targets: Tensor | None = None, input_pos: Tensor | None = None):
        """idx (B, T) token ids. Training: targets (B, T), input_pos None. Cached decoding: input_pos (T,)
        the absolute positions of idx (prefill: arange(T); one step: a single position).

        Returns (logits (B, T, V), cross-entropy or None, aux) where aux maps names to weighted auxiliary
        losses (MoE balance, Tucker core); the training objective is ce + sum(aux.values()). MoE and memory
        layers skip theirs in inference (eval mode without grad: decoding), where nothing would use them."""
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device) if input_pos is None else input_pos
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(pos)
        x = self.drop(x)
        rope = (self.rope_cos[pos], self.rope_sin[pos]) if self.wpe is None else None
        mask = self.causal_mask[None, None, input_pos] if input_pos is not None else None
        aux: dict[str, Tensor] = {}
        pending: dict[int, Tensor] = {}  # block index -> memory output waiting to be added after it
        for i, block in enumerate(self.blocks):
            x, h, a = block(x, rope, input_pos, mask)
            _add_aux(aux, a)
            for mem, src, dst in zip(self.memories, self.mem_src, self.mem_dst):
                if src == i:
                    y, a = mem(h, input_pos)
                    _add_aux(aux, a)
                    pending[dst] = pending[dst] + y if dst in pending else y
            if i in pending:
                x = x + pending.pop(i)
        logits, loss = self.logits_loss(x, targets)
        return logits, loss, aux

    def logits_loss(self, x: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The final norm, the output projection and (with targets) the cross-entropy."""
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            # no explicit .float(): autocast runs cross_entropy in fp32 without a full fp32 copy of the logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def compile_blocks(self, **kwargs) -> None:
        """Regional compilation: each block, each memory layer and the output/loss compiled on their own
        (torch.compile kwargs), the loop between them eager. Blocks of one shape share one compiled graph (their
        weights are graph inputs), so the compile takes a fraction of the whole model's (the small UltraMem's first
        step on the H200: 21.7 against 42.3 s, `bash scripts/gpu_kernels.sh regional`), and Inductor's cache can
        serve every model with the same block shape. In place; the state_dict is unchanged."""
        for m in list(self.blocks) + list(self.memories):
            m.compile(**kwargs)
        self.logits_loss = torch.compile(self.logits_loss, **kwargs)  # the instance's, over the method

    def compiled(self, blocks: bool, **kwargs) -> nn.Module:
        """What to call for a compiled forward (train.py, bench.py): with blocks, this model, its parts compiled in
        place (compile_blocks); otherwise torch.compile(self), a wrapper around the eager model."""
        if blocks:
            self.compile_blocks(**kwargs)
            return self
        return torch.compile(self, **kwargs)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute derived, non-trainable state of submodules (e.g. UltraMem's rank-1 TDQKR selection
        vectors). The training loop calls this once per optimizer step, and before evaluation and decoding."""
        for m in self.modules():
            if m is not self and hasattr(m, "refresh"):
                m.refresh()

    # ---------------------------------------------------------------------------------------------
    # counters: the paper's Table 1 columns (total / activated parameters, forward GFLOPs per token) and MFU

    def _module_counts(self) -> tuple[int, int, float]:
        """(total params, activated params per token, forward matmul FLOPs per token). Modules with sparse
        activation (MoE, memory layers) report their own numbers through activated_params() and
        flops_per_token(); everything else counts every parameter as activated and 2 FLOPs per weight of a
        linear (a tied input embedding is counted once, as the lm_head's matmul; lookups cost no FLOPs)."""
        total = sum(p.numel() for p in self.parameters())
        activated, flops, seen = 0, 0.0, set()

        def visit(m: nn.Module):
            nonlocal activated, flops
            if m is not self and hasattr(m, "activated_params") and hasattr(m, "flops_per_token"):
                activated += m.activated_params()
                flops += m.flops_per_token()
                seen.update(id(p) for p in m.parameters())
                return
            for p in m.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    activated += p.numel()
            if isinstance(m, nn.Linear):
                flops += 2 * m.in_features * m.out_features
            for c in m.children():
                visit(c)

        visit(self)
        return total, activated, flops

    def num_params(self, activated: bool = False) -> int:
        total, act, _ = self._module_counts()
        return act if activated else total

    def flops_per_token(self, with_attention: bool = False, seq_len: int | None = None) -> float:
        """Forward FLOPs per token. Without attention it is the paper's Table 1 column (2 x activated
        matmul parameters); with_attention adds the score and weighted-sum products at context seq_len."""
        flops = self._module_counts()[2]
        if with_attention:
            cfg = self.config
            flops += 4 * cfg.n_layer * cfg.n_embd * (seq_len or cfg.block_size)
        return flops

    def train_flops_per_token(self, seq_len: int | None = None) -> float:
        """Forward + backward FLOPs per token (3x forward; PaLM / nanoGPT's count, attention included)."""
        return 3 * self.flops_per_token(with_attention=True, seq_len=seq_len)

    def estimate_mfu(self, tokens_per_sec: float, peak_flops: float, seq_len: int | None = None) -> float:
        return tokens_per_sec * self.train_flops_per_token(seq_len) / peak_flops

    # ---------------------------------------------------------------------------------------------
    def optim_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups. Matrices decay, vectors (norms, biases) do not. A module can tag its
        parameters through param_tags() -> {local name: {"weight_decay": bool, "lr_mult": (start, end)}};
        lr_mult is a learning-rate multiplier that decays linearly from start to end over training and is
        composed with the usual schedule by train.py (UltraMem's value learning rate, spec 7.2)."""
        tags = {}
        for mname, m in self.named_modules():
            if hasattr(m, "param_tags"):
                for pname, tag in m.param_tags().items():
                    tags[f"{mname}.{pname}" if mname else pname] = tag
        groups: dict[tuple, list] = {}
        names: dict[tuple, list] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            tag = tags.get(name, {})
            key = (bool(tag.get("weight_decay", p.dim() >= 2)), tuple(tag.get("lr_mult", (1.0, 1.0))))
            groups.setdefault(key, []).append(p)
            names.setdefault(key, []).append(name)
        return [
            dict(params=ps, weight_decay=weight_decay if wd else 0.0, lr_mult_start=float(lm[0]),
                 lr_mult_end=float(lm[1]), names=names[(wd, lm)])
            for (wd, lm), ps in groups.items()
        ]

    # ---------------------------------------------------------------------------------------------
    # decoding with a static KV cache (prefill, then one-token steps)

    def setup_caches(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> None:
        if max_len > self.config.block_size:
            raise ValueError(f"cache length {max_len} exceeds block_size {self.config.block_size}")
        dtype = dtype or self.lm_head.weight.dtype
        device = self.lm_head.weight.device
        for block in self.blocks:
            a = block.attn
            a.kv_cache = KVCache(batch_size, max_len, a.n_kv_head, a.head_dim, dtype, device)
        for m in self.memories:
            if hasattr(m, "setup_cache"):
                m.setup_cache(batch_size, max_len, dtype, device)
        self.causal_mask = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool, device=device))

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 decode_step=None, vocab_limit: int | None = None) -> Tensor:
        """Prefill the prompt idx (B, T) into the KV cache, then decode one token per step. decode_step
        may be a compiled version of decode_one_token (sample.py compiles it with fullgraph=True).
        vocab_limit: sample only ids below it (the tokenizer's vocabulary, not the padded one)."""
        B, T = idx.shape
        total = T + max_new_tokens
        if total > self.config.block_size:
            raise ValueError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds block_size {self.config.block_size}")
        self.refresh()
        self.setup_caches(B, total)
        step = decode_step or decode_one_token
        out = torch.empty(B, total, dtype=torch.long, device=idx.device)
        out[:, :T] = idx
        input_pos = torch.arange(T, device=idx.device)
        logits = self(idx, input_pos=input_pos)[0]
        nxt = sample_logits(logits[:, -1, :vocab_limit], temperature, top_k)
        out[:, T] = nxt
        for t in range(T, total - 1):
            nxt = step(self, nxt[:, None], torch.tensor([t], device=idx.device), temperature, top_k, vocab_limit)
            out[:, t + 1] = nxt
        return out


def sample_logits(logits: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """logits (B, V) -> next token (B,). temperature 0 is greedy. Sampling uses the exponential-race
    trick (argmax of p / Exp(1)), which compiles without a graph break unlike torch.multinomial."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return (probs / torch.empty_like(probs).exponential_(1)).argmax(dim=-1)


def decode_one_token(model: GPT, idx: Tensor, input_pos: Tensor, temperature: float, top_k: int | None,
                     vocab_limit: int | None = None) -> Tensor:
    """One cached decoding step: idx (B, 1) at position input_pos (1,) -> next token (B,)."""
    logits = model(idx, input_pos=input_pos)[0]
    return sample_logits(logits[:, -1, :vocab_limit], temperature, top_k)
