"""Packed (varlen) causal attention with grouped-query heads.

q [T, Hq, D], k and v [T, Hkv, D] hold the tokens of several sequences back to back; `cu_seqlens`
[n + 1] marks their bounds. Each token attends to the earlier tokens of its own sequence only.

- CUDA (bf16/fp16): flash attention's varlen kernel through `aten._flash_attention_forward`; GQA is
  native to the kernel, memory is linear in the sequence length, and it has autograd for training.
- CPU (and any dtype flash does not take): scaled_dot_product_attention per sequence.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, float], torch.Tensor]


def sdpa_per_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> torch.Tensor:
    """Reference path: one causal SDPA call per sequence (GQA by enable_gqa)."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()
    for s, e in itertools.pairwise(bounds):
        qi = q[s:e].transpose(0, 1)  # [Hq, L, D]
        ki = k[s:e].transpose(0, 1)  # [Hkv, L, D]
        vi = v[s:e].transpose(0, 1)
        oi = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=True)
        out[s:e] = oi.transpose(0, 1)
    return out


def _flash_varlen(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, scale: float
) -> torch.Tensor:
    """Flash attention varlen kernel (bf16/fp16 on CUDA)."""
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, 0.0, True, False, scale=scale
    )
    return out[0]


def packed_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention over packed sequences -> [T, Hq, D]."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        return _flash_varlen(q, k, v, cu_seqlens, max_seqlen, scale)
    return sdpa_per_sequence(q, k, v, cu_seqlens, max_seqlen, scale)
