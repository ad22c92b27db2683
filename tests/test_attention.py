"""The CPU attention path against an independent dense reference (float64, explicit mask, softmax).

Mixed lengths cross the CPU flash kernel's block sizes; the shared-prefix case has more keys than
queries per sequence, aligned bottom-right (query i of a sequence sees keys j <= i + lk - lq).
"""

from __future__ import annotations

import math

import pytest
import torch

from qwen_embed.attention import packed_causal_attention, rows_attention, sdpa_per_sequence


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lq: list[int], lk: list[int]) -> torch.Tensor:
    """Per-sequence softmax(q k^T / sqrt(D) + bottom-right causal mask) v in float64, GQA by repeating k, v."""
    hq, hkv, d = q.shape[1], k.shape[1], q.shape[2]
    outs, qs, ks = [], 0, 0
    for a, b in zip(lq, lk, strict=True):
        qi = q[qs : qs + a].double()  # [a, Hq, D]
        ki = k[ks : ks + b].double().repeat_interleave(hq // hkv, dim=1)  # [b, Hq, D]
        vi = v[ks : ks + b].double().repeat_interleave(hq // hkv, dim=1)
        scores = torch.einsum("thd,shd->hts", qi, ki) / math.sqrt(d)  # [Hq, a, b]
        allowed = torch.arange(b)[None, :] <= torch.arange(a)[:, None] + (b - a)  # [a, b]
        outs.append(torch.einsum("hts,shd->thd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), vi))
        qs, ks = qs + a, ks + b
    return torch.cat(outs).float()


def cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


@pytest.mark.parametrize("heads", [(4, 2, 16), (8, 8, 32), (6, 1, 64)])
def test_mixed_lengths_equal_dense_reference(heads: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    hq, hkv, d = heads
    lengths = [1, 3, 257, 64, 2, 600, 33]
    t = sum(lengths)
    q, k, v = torch.randn(t, hq, d), torch.randn(t, hkv, d), torch.randn(t, hkv, d)
    out = packed_causal_attention(q, k, v, cu(lengths), max(lengths))
    assert out.shape == (t, hq, d)
    assert (out - dense_reference(q, k, v, lengths, lengths)).abs().max() <= 1e-5


@pytest.mark.parametrize("prefix", [1, 17, 300])
def test_shared_prefix_alignment_equals_dense_reference(prefix: int) -> None:
    """Keys = [prefix; own tokens] per sequence (as model.SharedPrefix builds them): bottom-right causal."""
    torch.manual_seed(1)
    hq, hkv, d = 4, 2, 16
    own = [1, 5, 130, 2, 400]
    lk = [prefix + n for n in own]
    q = torch.randn(sum(own), hq, d)
    k, v = torch.randn(sum(lk), hkv, d), torch.randn(sum(lk), hkv, d)
    out = packed_causal_attention(q, k, v, cu(own), max(own), cu_seqlens_k=cu(lk), max_seqlen_k=max(lk))
    assert (out - dense_reference(q, k, v, own, lk)).abs().max() <= 1e-5


def test_strided_views_as_the_model_passes_them() -> None:
    """q, k, v sliced out of one projection (non-contiguous) give the same result as contiguous copies."""
    torch.manual_seed(2)
    lengths = [70, 9]
    qkv = torch.randn(sum(lengths), 8, 16)
    q, k, v = qkv[:, :4], qkv[:, 4:6], qkv[:, 6:]
    c = cu(lengths)
    a = sdpa_per_sequence(q, k, v, c, c, 0.25)
    b = sdpa_per_sequence(q.contiguous(), k.contiguous(), v.contiguous(), c, c, 0.25)
    assert torch.equal(a, b)


@pytest.mark.parametrize("heads", [(4, 2, 16), (6, 1, 64)])
def test_selected_rows_equal_dense_reference(heads: tuple[int, int, int]) -> None:
    """`rows_attention` (the last layer's pooled rows on the CPU): each chosen row equals the dense causal
    reference's row, for the last row of every sequence and for rows inside sequences (two of one)."""
    torch.manual_seed(1)
    hq, hkv, d = heads
    lengths = [1, 3, 257, 64, 2, 600, 33]
    t = sum(lengths)
    q, k, v = torch.randn(t, hq, d), torch.randn(t, hkv, d), torch.randn(t, hkv, d)
    ref = dense_reference(q, k, v, lengths, lengths)
    bounds = cu(lengths)
    last = bounds[1:].long() - 1
    inside = torch.tensor([0, 5, 100, 259, 300, 320, 330, 900, t - 1])
    for rows in (last, inside):
        got = rows_attention(q[rows], k, v, rows, bounds)
        torch.testing.assert_close(got, ref[rows], atol=1e-5, rtol=1e-5)
