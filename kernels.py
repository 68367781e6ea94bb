"""
Lookup kernels for the memory layer (spec sections 3, 5, 6: steps 7-8, the IVE decode, MCS weighting
and pooling per virtual block), each next to its plain-PyTorch reference with the same signature.
"""

import torch
from torch import Tensor


def mem_lookup_reference(values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor, E: int) -> Tensor:
    """values (N, Dv); rows, blocks (T, K) integer: the physical row and the virtual block in [0, E) of
    each selected slot; scores (T, K, h): one score per MCS core. Returns pooled (T, E, Dv) in
    values.dtype, accumulated in float32:
        pooled[t, p, c-th chunk of Dv/h] = sum_k [blocks[t, k] == p] * scores[t, k, c] * values[rows[t, k], c-th chunk]
    """
    T, K = rows.shape
    h = scores.shape[-1]
    N, Dv = values.shape
    v = values[rows.reshape(-1)].float().view(T, K, h, Dv // h)  # (T, K, h, Dv/h)
    weighted = (v * scores.float().unsqueeze(-1)).view(T, K, Dv)
    pooled = torch.zeros(T * E, Dv, dtype=torch.float32, device=values.device)
    flat_block = (torch.arange(T, device=values.device)[:, None] * E + blocks).reshape(-1)
    pooled.index_add_(0, flat_block, weighted.view(T * K, Dv))
    return pooled.view(T, E, Dv).to(values.dtype)


def mem_lookup(values: Tensor, rows: Tensor, blocks: Tensor, scores: Tensor, E: int) -> Tensor:
    """The one entry point memory.py calls; dispatches to the fastest correct implementation."""
    return mem_lookup_reference(values, rows, blocks, scores, E)
