"""Deterministic mode through the HTTP server under concurrent load (CPU, tiny model).

Requests from 16 concurrent clients are merged into batches by the batcher; with the mode on, every
vector and every rerank score must equal, bit for bit, the one computed for that text alone in process.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from qwen_embed import Embedder, Reranker
from qwen_embed.server import ServerSettings, create_app

from .conftest import LiveServer
from .test_load import metric, texts_for


@pytest.mark.slow  # ~17 s on the shared CPU
def test_concurrent_requests_get_their_solo_bits(small_embedding_path: Path, small_reranker_path: Path) -> None:
    emb = Embedder.from_pretrained(small_embedding_path, device="cpu", max_length=64, deterministic=True)
    rr = Reranker.from_pretrained(small_reranker_path, device="cpu", max_length=256, deterministic=True)
    rng = np.random.default_rng(3)
    requests = [texts_for(i, rng) for i in range(16 * 4)]
    settings = ServerSettings(embedding_model="emb", reranker_model="rr", max_wait_ms=20, max_length=64)

    async def client(url: str, k: int) -> list[tuple[httpx.Response, httpx.Response]]:
        out = []
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            for i in range(k * 4, k * 4 + 4):
                e = await c.post("/v1/embeddings", json={"input": requests[i], "encoding_format": "float"})
                r = await c.post("/v1/rerank", json={"query": "cell biology", "documents": requests[i]})
                out.append((e, r))
        return out

    async def run(url: str) -> list[tuple[httpx.Response, httpx.Response]]:
        per_client = await asyncio.gather(*(client(url, k) for k in range(16)))
        return [pair for pairs in per_client for pair in pairs]

    with LiveServer(create_app(settings, embedder=emb, reranker=rr)) as live:
        responses = asyncio.run(asyncio.wait_for(run(live.url), 120))
        stats = httpx.get(live.url + "/metrics").text
    label = 'model="emb"'
    batches = metric(stats, "qwen_embed_batch_requests_count", label)
    singles = metric(stats, "qwen_embed_batch_requests_bucket", 'le="1.0",' + label)
    assert batches - singles > 0, "no batch held more than one request: the test would prove nothing"
    assert all(e.status_code == 200 and r.status_code == 200 for e, r in responses)
    for texts, (e, r) in zip(requests, responses, strict=True):
        got = np.array([d["embedding"] for d in e.json()["data"]], dtype=np.float32)
        solo = np.concatenate([emb.encode([t]) for t in texts])
        assert np.array_equal(got, solo)
        scores = {d["index"]: d["relevance_score"] for d in r.json()["results"]}
        solo_scores = [float(rr.score("cell biology", [t])[0]) for t in texts]
        assert [scores[i] for i in range(len(texts))] == solo_scores
