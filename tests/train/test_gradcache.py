"""GradCache gives the gradients of the full batch, and replays the encoder's randomness exactly."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from qwen_embed.batching import PackedBatch
from qwen_embed.checkpoint import Checkpoint
from qwen_embed.train.gradcache import chunk_sequences, full_batch_step, grad_cache_step, pack_chunks
from qwen_embed.train.losses import improved_info_nce

from .conftest import make_rows

B = 6


def load_model(path: Path) -> torch.nn.Module:
    model = Checkpoint.load(path, "cpu", "float32", want_head=False).model
    model.train()
    return model


def batch_sequences(path: Path) -> list[list[int]]:
    tok = Checkpoint.load(path, "cpu", "float32", want_head=False).tokenizer
    rows = make_rows(B, negatives=1)
    texts = [r["query"] for r in rows] + [r["positive"] for r in rows] + [r["negatives"][0] for r in rows]  # type: ignore[index]
    return tok.encode_for_embedding([str(t) for t in texts], 64)


def loss_fn(emb: torch.Tensor) -> torch.Tensor:
    return improved_info_nce(emb[:B], emb[B : 2 * B], emb[2 * B :].view(B, 1, -1), temperature=0.05)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def assert_close_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        rel = (a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)
        assert rel <= tol, f"{k}: relative difference {rel:.2e}"


def test_chunks_respect_the_token_budget() -> None:
    seqs = [[1] * n for n in (5, 5, 3, 9, 1, 20)]
    chunks = chunk_sequences(seqs, 10)
    assert chunks == [[0, 1], [2], [3, 4], [5]]  # in order; an over-long sequence gets a chunk alone


def test_grad_cache_equals_full_batch(small_embedding_path: Path) -> None:
    model = load_model(small_embedding_path)
    seqs = batch_sequences(small_embedding_path)
    chunks = pack_chunks(seqs, 40, torch.device("cpu"))
    assert len(chunks) >= 4

    def encode(c: PackedBatch) -> torch.Tensor:
        return model(c, output_indices=c.last_indices)

    loss_full = full_batch_step(encode, chunks, loss_fn)
    g_full = grads(model)
    loss_gc = grad_cache_step(encode, chunks, loss_fn)
    g_gc = grads(model)
    torch.testing.assert_close(loss_gc, loss_full, rtol=1e-6, atol=0)
    assert_close_rel(g_gc, g_full)


def test_grad_cache_replays_randomness(small_embedding_path: Path) -> None:
    """Dropout on the token embeddings (inside the encoder) and on the output: both passes must draw alike."""
    model = load_model(small_embedding_path)
    model.embed_tokens.register_forward_hook(lambda m, i, o: F.dropout(o, 0.3, training=True))
    seqs = batch_sequences(small_embedding_path)
    chunks = pack_chunks(seqs, 40, torch.device("cpu"))

    def encode(c: PackedBatch) -> torch.Tensor:
        return F.dropout(model(c, output_indices=c.last_indices), 0.2, training=True)

    torch.manual_seed(123)
    full_batch_step(encode, chunks, loss_fn)
    g_full, state_full = grads(model), torch.get_rng_state()
    torch.manual_seed(123)
    grad_cache_step(encode, chunks, loss_fn)
    g_gc, state_gc = grads(model), torch.get_rng_state()
    assert_close_rel(g_gc, g_full)
    assert torch.equal(state_gc, state_full)  # the generator ends where a plain step leaves it
    torch.manual_seed(124)  # control: the randomness does change the gradients
    full_batch_step(encode, chunks, loss_fn)
    g_other = grads(model)
    assert max(float((g_other[k] - g_full[k]).norm() / g_full[k].norm()) for k in g_full) > 1e-3
