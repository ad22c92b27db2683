"""Packed (varlen) causal attention with grouped-query heads.

q [Tq, Hq, D], k and v [Tk, Hkv, D] hold the tokens of several sequences back to back; `cu_seqlens`
[n + 1] marks their bounds (`cu_seqlens_k` those of the keys when they differ, as with a shared
prefix). Each query attends to the keys of its own sequence up to its own position, aligned at the
end when a sequence has more keys than queries (the keys of a shared prefix come first, so every
query sees the whole prefix): the bottom-right causal convention of flash attention 2.

- CUDA (bf16/fp16): flash attention's varlen kernel through `aten._flash_attention_forward`; GQA is
  native to the kernel, memory is linear in the sequence length, and it has autograd for training.
- CPU (and any dtype flash does not take): scaled_dot_product_attention per sequence on 4-D
  [1, heads, length, D] views. With the leading batch dimension torch takes its CPU flash kernel
  (blockwise online softmax, causal blocks skipped, GQA native), so memory is linear in the length;
  on 3-D tensors it takes the math path that builds the [heads, L, L] matrix (16K tokens: 10.7 GB).
  Bottom-right alignment without a mask: `lk - lq` dummy query rows go in front, so that top-left
  `is_causal` lines the real rows up with the end of the keys; their outputs are dropped. Each row's
  softmax is independent, so the real rows are exact; the extra work is the dummy rows' causal
  triangle, (lk - lq)^2 / 2 dot products. Measured on 2 cores (0.6B heads, fp32, BENCHMARKS.md):
  4K tokens 0.45 s / 37 MB against 6.7 s / 2.4 GB on 3-D, an explicit bottom-right mask 1.7 s,
  flex attention 1.3 s (after a 7-25 s compilation), queries in chunks of 1024 4.1 s.
  Per-sequence pieces come from one `split` and leave through one `cat` (not slicing and slice
  assignment): the same views and values, but in training the backward of a slice fills a zero tensor
  of the whole batch per sequence (quadratic in the sequences: 36% of a tiny model's training step at
  128 sequences), that of a split is one concatenation.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F


def pieces(x: torch.Tensor, bounds: list[int]) -> tuple[torch.Tensor, ...]:
    """Rows bounds[i]..bounds[i + 1] of x for each sequence (the bounds span x): views from one `split`."""
    return x.split([b - a for a, b in itertools.pairwise(bounds)])


def sdpa_per_sequence(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, scale: float
) -> torch.Tensor:
    """CPU path: one flash SDPA call per sequence on 4-D views, bottom-right causal (GQA native)."""
    bq = cu_q.tolist()
    bk = bq if cu_k is cu_q else cu_k.tolist()
    outs = []
    for qi, ki, vi in zip(pieces(q, bq), pieces(k, bk), pieces(v, bk), strict=True):
        lq, lk = qi.shape[0], ki.shape[0]
        assert lq <= lk, "a sequence has more queries than keys"
        qi = qi.transpose(0, 1)[None]  # [1, Hq, Lq, D]
        ki = ki.transpose(0, 1)[None]  # [1, Hkv, Lk, D]
        vi = vi.transpose(0, 1)[None]
        if lk > lq:  # dummy rows in front: top-left causal over them is bottom-right for the real rows
            qi = torch.cat([qi.new_zeros(1, qi.shape[1], lk - lq, qi.shape[3]), qi], dim=2)  # [1, Hq, Lk, D]
        oi = F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale, enable_gqa=True)
        outs.append(oi[0, :, lk - lq :].transpose(0, 1))  # [Lq, Hq, D]
    return torch.cat(outs) if outs else torch.empty_like(q)  # [Tq, Hq, D]


def rows_attention(
    q_rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, cu_seqlens: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """CPU: the causal attention output of selected rows only -> [n, Hq, D].

    q_rows [n, Hq, D] are the queries of packed rows `rows` [n]; k, v [T, Hkv, D] are every row's. Row r of
    a sequence starting at s attends to keys s..r, one SDPA call with a single query (no mask: every key
    it sees is allowed), so a row costs O(r - s) instead of its share of the whole causal square. The
    last layer of a pooling model needs only the pooled rows: on a 32K-token input this drops that
    layer's attention from ~27 s to milliseconds on 2 cores. Equal to the full path's rows up to the
    kernel's rounding (a row's softmax is computed alone either way).
    """
    scale = 1.0 / math.sqrt(q_rows.shape[-1]) if scale is None else scale
    bounds = cu_seqlens.to(rows.device)
    seq = torch.searchsorted(bounds, rows, right=True) - 1  # [n] the sequence of each row
    starts = bounds[seq].tolist()
    cu = bounds.tolist()
    ks, vs = pieces(k, cu), pieces(v, cu)
    outs = []
    for qi, i, s, r in zip(q_rows.unbind(0), seq.tolist(), starts, rows.tolist(), strict=True):
        ki = ks[i][: r - s + 1].transpose(0, 1)[None]  # [1, Hkv, r - s + 1, D]
        vi = vs[i][: r - s + 1].transpose(0, 1)[None]
        outs.append(F.scaled_dot_product_attention(qi[None, :, None, :], ki, vi, scale=scale,
                                                   enable_gqa=True)[0, :, 0])  # [Hq, D]
    return torch.stack(outs) if outs else torch.empty_like(q_rows)  # [n, Hq, D]


def packed_causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_k: int | None = None,
) -> torch.Tensor:
    """Causal attention over packed sequences -> [Tq, Hq, D]."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    cu_k = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k
    max_k = max_seqlen if max_seqlen_k is None else max_seqlen_k
    if q.is_cuda and torch.is_autocast_enabled("cuda"):  # autocast leaves q, k in float32 after the norms
        dt = torch.get_autocast_dtype("cuda")
        q, k, v = q.to(dt), k.to(dt), v.to(dt)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_k, max_seqlen, max_k, 0.0, True, False, scale=scale
        )
        return out[0]
    return sdpa_per_sequence(q, k, v, cu_seqlens, cu_k, scale)
