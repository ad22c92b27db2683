"""Deterministic (batch-invariant) mode, the parts that run on the CPU.

The CUDA kernels are proven in tests/gpu/test_deterministic.py (skipped here). On the CPU: the
operators against float64 references, a row alone against the same row in larger batches bit for bit,
the whole Embedder / Reranker alone against in batches, and the flag on every command that loads a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_embed import Embedder, Reranker
from qwen_embed.cli import build_parser, main
from qwen_embed.kernels.batch_invariant import (
    BatchInvariantLinear,
    BatchInvariantRMSNorm,
    bi_mm,
    bi_rms_norm,
    is_batch_invariant,
    make_batch_invariant,
)
from qwen_embed.model import Qwen3Model
from qwen_embed.pooling import l2_normalize, row_sum
from qwen_embed.reranker import yes_probability
from tests.reference import random_texts

SLICES = [(s, m) for m in (1, 2, 3, 7, 31, 100) for s in (0, 5, 77)]  # (start, rows) inside a 300-row batch


def test_bi_mm_equals_a_float64_product_and_is_row_invariant() -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(300, 96, generator=g), torch.randn(80, 96, generator=g)
    full = bi_mm(x, w)
    ref = x.double() @ w.double().T
    assert ((full.double() - ref).norm() / ref.norm()) < 1e-6
    for s, m in SLICES:
        assert torch.equal(bi_mm(x[s : s + m], w), full[s : s + m]), (s, m)


@pytest.mark.parametrize("float32_out", [False, True])
def test_bi_rms_norm_matches_reference_and_is_row_invariant(float32_out: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(300, 3, 64, generator=g), 1 + 0.1 * torch.randn(64, generator=g)
    out = bi_rms_norm(x, w, 1e-6, float32_out)
    x64 = x.double()
    ref = w.double() * x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert out.dtype == torch.float32 and (out.double() - ref).abs().max() < 1e-5
    for s, m in SLICES:
        assert torch.equal(bi_rms_norm(x[s : s + m], w, 1e-6, float32_out), out[s : s + m])


@pytest.mark.parametrize("width", [1, 64, 1000, 1024])
def test_row_sum_and_the_reranker_head_are_row_invariant(width: int) -> None:
    g = torch.Generator().manual_seed(2)
    x, head = 0.3 * torch.randn(300, width, generator=g), torch.randn(width, generator=g)
    assert torch.allclose(row_sum(x.double()), x.double().sum(-1), atol=1e-12)
    p, n = yes_probability(x, head), l2_normalize(x)
    assert torch.allclose(p.double(), torch.sigmoid(x.double() @ head.double()), atol=1e-5)
    for s, m in SLICES:
        assert torch.equal(yes_probability(x[s : s + m], head), p[s : s + m])
        assert torch.equal(l2_normalize(x[s : s + m]), n[s : s + m])


def test_make_batch_invariant_keeps_parameters(tiny_embedding_path: Path) -> None:
    model = Embedder.from_pretrained(tiny_embedding_path, device="cpu").checkpoint.model
    assert isinstance(model, Qwen3Model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert not is_batch_invariant(model)
    make_batch_invariant(model)
    assert is_batch_invariant(model)
    assert isinstance(model.layers[0].mlp.down_proj, BatchInvariantLinear)
    assert isinstance(model.norm, BatchInvariantRMSNorm)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return random_texts(24, seed=7, max_words=120)


def test_embedder_alone_equals_batched_bitwise(tiny_embedding_path: Path, texts: list[str]) -> None:
    emb = Embedder.from_pretrained(tiny_embedding_path, device="cpu", deterministic=True)
    default = Embedder.from_pretrained(tiny_embedding_path, device="cpu")
    alone = np.concatenate([emb.encode([t]) for t in texts])
    order = np.random.default_rng(0).permutation(len(texts)).tolist()
    for budget in (64, 512, 8192):
        emb.engine.batch_tokens = budget
        shuffled = emb.encode([texts[i] for i in order])
        assert np.array_equal(shuffled, alone[order]), budget
    # the same function as the default path, other rounding
    assert np.abs(default.encode(texts) - alone).max() < 1e-4


def test_reranker_alone_equals_batched_bitwise(tiny_reranker_path: Path, texts: list[str]) -> None:
    rr = Reranker.from_pretrained(tiny_reranker_path, device="cpu", deterministic=True)
    alone = np.concatenate([rr.score("capital of China", [t]) for t in texts])
    order = np.random.default_rng(1).permutation(len(texts)).tolist()
    together = rr.score("capital of China", [texts[i] for i in order])
    assert np.array_equal(together, alone[order])
    pairs = rr.score_pairs([("capital of China", t) for t in texts] + [("another query", t) for t in texts[:5]])
    assert np.array_equal(pairs[: len(texts)], alone)


def test_embed_command_takes_the_flag(tiny_embedding_path: Path, texts: list[str], tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts[:6]) + "\n", encoding="utf-8")
    out = tmp_path / "v.npy"
    assert main(["embed", str(src), "-o", str(out), "--model", str(tiny_embedding_path), "--deterministic"]) == 0
    lib = Embedder.from_pretrained(tiny_embedding_path, device="cpu", deterministic=True)
    assert np.array_equal(np.load(out), np.concatenate([lib.encode([t]) for t in texts[:6]]))
    assert main(["embed", str(src), "-o", str(out), "--model", str(tiny_embedding_path), "--deterministic",
                 "--devices", "cpu,cpu"]) == 2


@pytest.mark.parametrize("argv", [
    ["embed", "in.txt", "-o", "v.npy"],
    ["rerank", "--query", "q", "--document", "d"],
    ["index", "in.txt", "--db", "db"],
    ["search", "q", "--db", "db"],
    ["eval", "retrieval", "--dataset", "d"],
    ["eval", "rerank", "--dataset", "d", "--candidates", "run.trec"],
])
def test_every_model_command_has_the_flag(argv: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(argv).deterministic is False
    assert parser.parse_args([*argv, "--deterministic"]).deterministic is True


def test_serve_setting() -> None:
    from qwen_embed.server.settings import SETTINGS, resolve

    args = build_parser().parse_args(["serve", "--embedding-model", "m", "--deterministic"])
    flags = {s.name: getattr(args, s.name, None) for s in SETTINGS}
    assert resolve(flags, {}).deterministic is True
    assert resolve({"embedding_model": "m"}, {"QWEN_EMBED_DETERMINISTIC": "1"}).deterministic is True
    assert resolve({"embedding_model": "m"}, {}).deterministic is False
