"""CUDA path correctness; runs on the GPU machine (`pytest tests/gpu`), skipped where there is no GPU."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_embed import Embedder, Reranker
from qwen_embed.attention import packed_causal_attention
from tests.reference import random_texts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


def dense_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lq: list[int], lk: list[int]) -> torch.Tensor:
    """Float64 attention per sequence with the bottom-right causal mask."""
    out, qs, ks = [], 0, 0
    rep = q.shape[1] // k.shape[1]
    for a, b in zip(lq, lk, strict=True):
        qi, ki, vi = q[qs:qs + a].double(), k[ks:ks + b].double(), v[ks:ks + b].double()
        ki, vi = ki.repeat_interleave(rep, 1), vi.repeat_interleave(rep, 1)
        s = torch.einsum("qhd,khd->hqk", qi, ki) / math.sqrt(q.shape[-1])
        mask = torch.ones(a, b, dtype=torch.bool, device=q.device).tril(diagonal=b - a)
        out.append(torch.einsum("hqk,khd->qhd", s.masked_fill(~mask, float("-inf")).softmax(-1), vi))
        qs, ks = qs + a, ks + b
    return torch.cat(out)


@pytest.mark.parametrize("prefix", [0, 37])
def test_flash_varlen_matches_dense(prefix: int) -> None:
    torch.manual_seed(0)
    lq = [1, 17, 300, 64, 5]
    lk = [n + prefix for n in lq]
    q = torch.randn(sum(lq), 16, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(sum(lk), 8, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(sum(lk), 8, 128, device="cuda", dtype=torch.bfloat16)
    cu_q = torch.tensor([0, *np.cumsum(lq)], dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0, *np.cumsum(lk)], dtype=torch.int32, device="cuda")
    out = packed_causal_attention(q, k, v, cu_q, max(lq), cu_seqlens_k=cu_k, max_seqlen_k=max(lk))
    ref = dense_reference(q, k, v, lq, lk)
    rel = (out.double() - ref).norm() / ref.norm()
    assert rel < 1e-2, rel


@pytest.fixture(scope="module")
def ckpts(tiny_checkpoint: Callable[..., Path]) -> tuple[Path, Path]:
    shape = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                 intermediate_size=512)
    return tiny_checkpoint("embedding", **shape), tiny_checkpoint("reranker", std=0.05, **shape)


def test_bf16_engine_matches_float32_reference(ckpts: tuple[Path, Path]) -> None:
    texts = random_texts(40, seed=1)
    fast = Embedder.from_pretrained(ckpts[0], device="cuda").encode(texts)
    ref = Embedder.from_pretrained(ckpts[0], device="cpu").encode(texts)
    assert (fast * ref).sum(1).min() >= 0.999


def test_graphs_and_compiled_and_eager_agree(ckpts: tuple[Path, Path]) -> None:
    texts = random_texts(17, seed=2)
    emb = Embedder.from_pretrained(ckpts[0], device="cuda")
    together = emb.encode(texts)  # compiled, one large batch
    alone = np.concatenate([emb.encode([t]) for t in texts])  # CUDA graphs, one query each
    eager = Embedder.from_pretrained(ckpts[0], device="cuda", compile=False)
    eager.engine.graphs = None  # type: ignore[attr-defined]
    plain = eager.encode(texts)
    for other in (alone, plain):
        assert (together * other).sum(1).min() >= 0.999
        assert np.abs(together - other).max() <= 2e-2


def test_prefix_sharing_equals_unshared(ckpts: tuple[Path, Path]) -> None:
    docs = random_texts(30, seed=3, max_words=150)
    for dtype, tol in (("float32", 1e-5), ("bfloat16", 1e-2)):
        rr = Reranker.from_pretrained(ckpts[1], device="cuda", dtype=dtype, compile=dtype == "bfloat16")
        seqs = rr.build_input_ids("capital of China", docs)
        shared, unshared = rr.score_ids(seqs, share_prefix=True), rr.score_ids(seqs, share_prefix=False)
        assert np.abs(shared - unshared).max() <= tol, (dtype, np.abs(shared - unshared).max())
    ref = Reranker.from_pretrained(ckpts[1], device="cpu").score("capital of China", docs)
    # bf16 against the float32 CPU reference: bf16 rounding with this wide init (std 0.05) reaches ~0.015
    assert np.abs(rr.score("capital of China", docs) - ref).max() <= 2e-2


def test_token_budget_is_respected_and_long_input_fits(ckpts: tuple[Path, Path]) -> None:
    emb = Embedder.from_pretrained(ckpts[0], device="cuda", max_length=32768, batch_tokens=4096, compile=False)
    seen: list[int] = []
    run = emb.engine.run_batch

    def spy(seqs, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(sum(len(s) for s in seqs))
        return run(seqs, *a, **k)

    emb.engine.run_batch = spy  # type: ignore[method-assign]
    texts = [*random_texts(50, seed=4), "word " * 20000]
    v = emb.encode(texts)
    assert np.isfinite(v).all() and v.shape[0] == 51
    assert max(seen[1:]) <= 4096 and seen[0] > 4096  # only the one over-long input exceeds the budget, alone


def test_float32_on_cuda_runs_without_graphs(ckpts: tuple[Path, Path]) -> None:
    emb = Embedder.from_pretrained(ckpts[0], device="cuda", dtype="float32", compile=False)
    assert emb.engine.graphs is None  # type: ignore[attr-defined]
    ref = Embedder.from_pretrained(ckpts[0], device="cpu").encode(["one query"])
    assert np.abs(emb.encode(["one query"]) - ref).max() <= 1e-4
