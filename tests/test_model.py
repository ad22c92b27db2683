"""The trunk alone: batch invariance, output_indices, attention against a masked dense reference."""

import math

import numpy as np
import torch

from qwen_embed import Embedder
from qwen_embed.attention import packed_causal_attention
from qwen_embed.batching import pack
from tests.reference import random_texts


def test_batch_invariance_17_texts(embedder: Embedder) -> None:
    texts = random_texts(17, seed=11)
    together = embedder.encode(texts)
    alone = np.concatenate([embedder.encode([t]) for t in texts])
    assert np.abs(together - alone).max() <= 1e-5


def test_batch_invariance_across_budgets(tiny_embedding_path) -> None:  # type: ignore[no-untyped-def]
    texts = random_texts(17, seed=12)
    a = Embedder.from_pretrained(tiny_embedding_path, device="cpu", batch_tokens=64).encode(texts)
    b = Embedder.from_pretrained(tiny_embedding_path, device="cpu", batch_tokens=100_000).encode(texts)
    assert np.abs(a - b).max() <= 1e-5


def test_output_indices_equal_full_then_gather(embedder: Embedder) -> None:
    seqs = embedder.tokenize(random_texts(5, seed=13))
    batch = pack(seqs)
    model = embedder.checkpoint.model
    with torch.no_grad():
        full = model(batch)[batch.last_indices]
        last = model(batch, output_indices=batch.last_indices)
    assert torch.allclose(full, last, atol=1e-6)


def test_packed_attention_matches_dense_masked_reference() -> None:
    torch.manual_seed(0)
    lengths = [3, 1, 7, 4]
    t, hq, hkv, d = sum(lengths), 4, 2, 8
    q, k, v = torch.randn(t, hq, d), torch.randn(t, hkv, d), torch.randn(t, hkv, d)
    cu = torch.tensor([0, 3, 4, 11, 15], dtype=torch.int32)
    out = packed_causal_attention(q, k, v, cu, max(lengths))
    seq = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(t)
    allowed = (seq[:, None] == seq[None, :]) & (pos[None, :] <= pos[:, None])  # [T, T]
    kk, vv = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)
    scores = torch.einsum("thd,shd->hts", q, kk) / math.sqrt(d)
    ref = torch.einsum("hts,shd->thd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), vv)
    assert torch.allclose(out, ref, atol=1e-5)
