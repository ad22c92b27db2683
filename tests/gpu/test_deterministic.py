"""Deterministic mode on CUDA: a text's vector and a pair's score are bitwise the same in any batch.

200 real SciFact texts of mixed lengths, embedded (scored) alone, in shuffled batches of several sizes
and under several token budgets; every result must equal the solo one bit for bit. The same run of
the default path shows what the mode removes (it is expected to differ, and the count is reported).
The model has the 0.6B widths (hidden 1024, 16/8 heads of 128, intermediate 3072) with 4 layers, so
the matrix products have the real shapes whose library kernels change with the token count.
Set QWEN_EMBED_DETERMINISM_REPORT to a file name to get the counts as JSON.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_embed import Embedder, Reranker
from qwen_embed.kernels import batch_invariant as bi
from qwen_embed.tiny import make_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")

SHAPE = dict(hidden_size=1024, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
             intermediate_size=3072)
BATCH_SIZES = (2, 7, 32, 200)
BUDGETS = (512, 4096, 65536)
REPORT: dict[str, object] = {}


@pytest.fixture(scope="module")
def texts(shared_data: Path) -> list[str]:
    """200 SciFact documents (title + text); every third cut to 1..40 words, so lengths run 3..~600 tokens."""
    path = shared_data / "beir" / "scifact" / "corpus.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    rng = random.Random(0)
    out = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if len(out) == 200:
                break
            d = json.loads(line)
            text = f"{d['title']} {d['text']}".strip()
            out.append(" ".join(text.split()[: rng.randint(1, 40)]) if i % 3 == 0 else text)
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("determ")
    return (make_checkpoint(d / "e", "embedding", dtype="bfloat16", **SHAPE),  # type: ignore[arg-type]
            make_checkpoint(d / "r", "reranker", dtype="bfloat16", std=0.05, **SHAPE))  # type: ignore[arg-type]


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    if os.environ.get("QWEN_EMBED_DETERMINISM_REPORT"):
        Path(os.environ["QWEN_EMBED_DETERMINISM_REPORT"]).write_text(json.dumps(REPORT, indent=2))


def batched_variants(run: Callable[[list[int]], np.ndarray], n: int, set_budget: Callable[[int], None]
                     ) -> dict[str, np.ndarray]:
    """Results in input order for shuffled batches of each size and for the whole set under each budget."""
    rng = np.random.default_rng(1)
    out: dict[str, np.ndarray] = {}
    for size in BATCH_SIZES:
        order = rng.permutation(n)
        parts = [order[i : i + size].tolist() for i in range(0, n, size)]
        res: list[np.ndarray | None] = [None] * n
        for idx in parts:
            for i, row in zip(idx, run(idx), strict=True):
                res[i] = row
        out[f"batch_{size}"] = np.stack(res)  # type: ignore[arg-type]
    for budget in BUDGETS:
        set_budget(budget)
        order = rng.permutation(n).tolist()
        res2 = np.empty_like(out[f"batch_{BATCH_SIZES[0]}"])
        res2[order] = run(order)
        out[f"budget_{budget}"] = res2
    return out


def differing_rows(solo: np.ndarray, variants: dict[str, np.ndarray]) -> dict[str, int]:
    """Rows not bitwise equal to the solo result, per variant, and the union over all variants."""
    counts = {k: int((v != solo).reshape(len(solo), -1).any(1).sum()) for k, v in variants.items()}
    any_row = np.zeros(len(solo), dtype=bool)
    for v in variants.values():
        any_row |= (v != solo).reshape(len(solo), -1).any(1)
    counts["any"] = int(any_row.sum())
    return counts


def embed_counts(path: Path, texts: list[str], deterministic: bool, compile: bool | None = None) -> dict[str, int]:
    emb = Embedder.from_pretrained(path, device="cuda", deterministic=deterministic, compile=compile)
    solo = np.concatenate([emb.encode([t]) for t in texts])  # CUDA graphs (small buckets) or one batch each

    def budget(b: int) -> None:
        emb.engine.batch_tokens = b

    variants = batched_variants(lambda idx: emb.encode([texts[i] for i in idx]), len(texts), budget)
    counts = differing_rows(solo, variants)
    REPORT.setdefault("embedder_max_abs", {})[f"det={deterministic},compile={compile}"] = max(  # type: ignore[index]
        float(np.abs(v - solo).max()) for v in variants.values())
    return counts


@pytest.fixture(params=["cublas", "triton"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both CUDA matmul backends of the mode: probed cuBLAS (the default where it holds) and the Triton kernel."""
    monkeypatch.setattr(bi, "CUBLAS", request.param == "cublas")
    shapes = [(2048, 1024), (1024, 1024), (1024, 2048), (3072, 1024), (1024, 3072)]
    REPORT.setdefault("matmul_backend", {})[request.param] = sorted(  # type: ignore[index]
        {bi.matmul_backend(n, k, torch.bfloat16, torch.device("cuda")) for n, k in shapes})
    return str(request.param)


@pytest.mark.parametrize("compile", [None, False])  # None: the mode's default (compiled layers on CUDA)
def test_embedder_deterministic_is_bitwise_batch_invariant(ckpts: tuple[Path, Path], texts: list[str],
                                                           compile: bool | None, backend: str) -> None:
    counts = embed_counts(ckpts[0], texts, deterministic=True, compile=compile)
    REPORT[f"embedder_deterministic_compile_{compile}_{backend}"] = counts
    assert counts["any"] == 0, counts


def test_embedder_default_path_differs(ckpts: tuple[Path, Path], texts: list[str]) -> None:
    """What the mode removes: the default path's batched vectors differ from the solo ones."""
    counts = embed_counts(ckpts[0], texts, deterministic=False)
    REPORT["embedder_default"] = counts
    assert counts["any"] > 0, "the default path was batch invariant here: this GPU shows nothing to remove"


def rerank_counts(path: Path, texts: list[str], deterministic: bool) -> dict[str, int]:
    rr = Reranker.from_pretrained(path, device="cuda", deterministic=deterministic)
    query = "Which cells of the newborn brain change as the white matter develops?"
    solo = np.concatenate([rr.score(query, [t]) for t in texts])[:, None]

    def budget(b: int) -> None:
        rr.engine.batch_tokens = b

    variants = batched_variants(lambda idx: rr.score(query, [texts[i] for i in idx])[:, None], len(texts), budget)
    # pairs of different queries in one pass (no shared prefix): each pair as it was scored alone
    pairs = rr.score_pairs([(query, t) for t in texts] + [("another question entirely", t) for t in texts[:50]])
    variants["pairs_mixed_queries"] = pairs[: len(texts), None]
    return differing_rows(solo, variants)


def test_reranker_deterministic_is_bitwise_batch_invariant(ckpts: tuple[Path, Path], texts: list[str],
                                                           backend: str) -> None:
    counts = rerank_counts(ckpts[1], texts, deterministic=True)
    REPORT[f"reranker_deterministic_{backend}"] = counts
    assert counts["any"] == 0, counts


def test_reranker_default_path_differs(ckpts: tuple[Path, Path], texts: list[str]) -> None:
    counts = rerank_counts(ckpts[1], texts, deterministic=False)
    REPORT["reranker_default"] = counts
    assert counts["any"] > 0, "the default path was batch invariant here: this GPU shows nothing to remove"


def test_deterministic_vectors_match_the_default_path_closely(ckpts: tuple[Path, Path], texts: list[str]) -> None:
    """Same function, other rounding: cosine to the default path's vectors (both bf16)."""
    a = Embedder.from_pretrained(ckpts[0], device="cuda", deterministic=True).encode(texts[:64])
    b = Embedder.from_pretrained(ckpts[0], device="cuda").encode(texts[:64])
    REPORT["cos_deterministic_vs_default_min"] = float((a * b).sum(1).min())
    assert (a * b).sum(1).min() >= 0.999


def test_server_under_concurrent_load_serves_the_solo_vectors(ckpts: tuple[Path, Path], texts: list[str]) -> None:
    """The server's dynamic batcher packs concurrent requests together: in the mode every served vector is
    bitwise the vector of its text embedded alone (base64, so the float32 bits travel unchanged)."""
    import base64
    from concurrent.futures import ThreadPoolExecutor

    pytest.importorskip("fastapi", reason="the server extra is not installed (pip install qwen-embed[server])")
    import httpx

    from qwen_embed.server import ServerSettings, create_app
    from tests.server.conftest import LiveServer

    emb = Embedder.from_pretrained(ckpts[0], device="cuda", deterministic=True)
    solo = np.concatenate([emb.encode([t]) for t in texts])
    settings = ServerSettings(embedding_model="emb", max_wait_ms=5)
    app = create_app(settings, embedder=emb)
    rng = random.Random(2)
    requests = []  # (indices) of each request: 1 to 5 texts, 400 requests over the 200 texts
    for _ in range(400):
        requests.append(rng.sample(range(len(texts)), rng.randint(1, 5)))
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
        def send(idx: list[int]) -> tuple[list[int], np.ndarray]:
            r = client.post("/v1/embeddings", json={"model": "emb", "input": [texts[i] for i in idx],
                                                    "encoding_format": "base64"})
            assert r.status_code == 200, r.text
            rows = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in r.json()["data"]]
            return idx, np.stack(rows)

        with ThreadPoolExecutor(48) as pool:
            results = list(pool.map(send, requests))
    differing = sum(int((got != solo[idx]).any(1).sum()) for idx, got in results)
    REPORT["server_concurrent_rows_differing"] = {"rows": sum(len(i) for i, _ in results), "differing": differing}
    assert differing == 0


@pytest.mark.parametrize("gpus", [1, 2])
def test_embed_corpus_deterministic_rows_are_each_texts_own_bits(ckpts: tuple[Path, Path], texts: list[str],
                                                                 tmp_path: Path, gpus: int) -> None:
    """`embed-corpus --deterministic` on one GPU (one Embedder) and on two (a DevicePool, one model process per
    GPU): every stored vector is bitwise its text's vector embedded alone, whichever batch and GPU it ran in."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from qwen_embed.cli import main

    if torch.cuda.device_count() < gpus:
        pytest.skip(f"needs {gpus} GPUs, this machine has {torch.cuda.device_count()}")
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i:03d}", "text": t}) + "\n" for i, t in enumerate(texts)),
                   encoding="utf-8")
    out = tmp_path / "out"
    assert main(["embed-corpus", str(src), "-o", str(out), "--model", str(ckpts[0]), "--num-gpus", str(gpus),
                 "--deterministic", "--rows-per-file", "64"]) == 0
    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    got = dict(zip(table.column("id").to_pylist(),
                   table.column("vector").combine_chunks().flatten().to_numpy().reshape(len(table), -1),
                   strict=True))
    emb = Embedder.from_pretrained(ckpts[0], device="cuda", deterministic=True)
    solo = np.concatenate([emb.encode([t]) for t in texts])
    stored = np.stack([got[f"d{i:03d}"] for i in range(len(texts))])
    differing = int((stored != solo).any(1).sum())
    REPORT.setdefault("embed_corpus_rows_differing", {})[f"gpus={gpus}"] = differing  # type: ignore[index]
    assert differing == 0
