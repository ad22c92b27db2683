"""Concurrency through real HTTP: merged batches give each client its serial answer; overload gives 429s.

Bounded: 64 clients x 8 requests, then 100 requests against a queue of 4; every request has a timeout.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence

import httpx
import numpy as np
import pytest

from qwen_embed import Embedder
from qwen_embed.server import ServerSettings, create_app

from .conftest import LiveServer

WORDS = ["protein", "cell", "heart", "blood", "river", "sea", "moon", "earth", "water", "gravity", "force", "planet",
         "search", "engine", "python", "language", "vaccine", "immune", "fox", "dog", "capital", "city"]


def texts_for(i: int, rng: np.random.Generator) -> list[str]:
    """1..4 texts of varied length, unique per request (so an answer given to the wrong client shows)."""
    return [f"request {i} text {j}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(1, 40))))
            for j in range(int(rng.integers(1, 5)))]


def metric(text: str, name: str, labels: str = "") -> float:
    """A sample's value from the Prometheus text (0 when the series does not exist yet)."""
    m = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}[^}}]*}} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def fire(url: str, bodies: Sequence[dict[str, object]], concurrency: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(body: dict[str, object]) -> httpx.Response:
            async with sem:
                return await client.post("/v1/embeddings", json=body)

        return list(await asyncio.gather(*(one(b) for b in bodies)))


@pytest.fixture(scope="session")
def serial_answers(small_embedder: Embedder) -> list[tuple[list[str], np.ndarray]]:
    """The 64 x 8 requests, each with its answer from the library, encoded alone (serially, in process): the
    same for every layout of `live`, so encoded once rather than once per layout (session scope: the tests of
    the layouts do not run next to each other, each runs among the other tests of its layout)."""
    rng = np.random.default_rng(0)
    return [(texts, small_embedder.encode(texts)) for texts in (texts_for(i, rng) for i in range(64 * 8))]


def test_64_clients_x_8_requests_get_their_serial_answers(live: LiveServer,
                                                          serial_answers: list[tuple[list[str], np.ndarray]]) -> None:
    requests = [texts for texts, _ in serial_answers]
    before = httpx.get(live.url + "/metrics").text

    async def client(k: int) -> list[httpx.Response]:  # one client: its 8 requests one after another
        out = []
        async with httpx.AsyncClient(base_url=live.url, timeout=60) as c:
            for i in range(k * 8, k * 8 + 8):
                out.append(await c.post("/v1/embeddings", json={"input": requests[i], "encoding_format": "float"}))
        return out

    async def run() -> list[httpx.Response]:
        per_client = await asyncio.gather(*(client(k) for k in range(64)))
        return [r for rs in per_client for r in rs]

    t0 = time.perf_counter()
    responses = asyncio.run(asyncio.wait_for(run(), 120))
    print(f"http: {time.perf_counter() - t0:.2f}s")
    assert len(responses) == 512 and all(r.status_code == 200 for r in responses)
    worst = 0.0
    for (_, want), r in zip(serial_answers, responses, strict=True):
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        worst = max(worst, float(np.abs(got - want).max()))
    assert worst <= 1e-6, worst
    after = httpx.get(live.url + "/metrics").text
    label = 'model="emb"'

    def delta(name: str, labels: str) -> float:
        return metric(after, name, labels) - metric(before, name, labels)

    batches = delta("qwen_embed_batch_requests_count", label)
    singles = delta("qwen_embed_batch_requests_bucket", 'le="1.0",' + label)
    merged = delta("qwen_embed_batch_requests_sum", label)
    # every request went through a batch; one that met a full token budget (8192 tokens: 64 requests of up to
    # 4 x 64 tokens can pass it) is cut and goes on in the next batch, and a batch cuts at most its last one
    assert 512 <= merged <= 512 + batches - 1
    assert batches - singles > 0, "no batch held more than one request"
    assert batches < 512


def test_overload_answers_429_and_loses_nothing(small_embedder: Embedder) -> None:
    settings = ServerSettings(embedding_model="emb", max_queue=4, max_wait_ms=20, max_batch_requests=2)
    rng = np.random.default_rng(1)
    requests = [texts_for(i, rng) for i in range(100)]
    with LiveServer(create_app(settings, embedder=small_embedder)) as srv:
        bodies = [{"input": t, "encoding_format": "float"} for t in requests]
        responses = asyncio.run(asyncio.wait_for(fire(srv.url, bodies, concurrency=100), 120))
        statuses = [r.status_code for r in responses]
        assert len(statuses) == 100 and set(statuses) <= {200, 429}  # every request answered, once
        assert statuses.count(429) > 0 and statuses.count(200) > 0
        for texts, r in zip(requests, responses, strict=True):
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "rate_limit_error"
            else:
                got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
                assert np.abs(got - small_embedder.encode(texts)).max() <= 1e-6
        text = httpx.get(srv.url + "/metrics").text
        # the batcher ran exactly the accepted requests: none dropped, none run twice
        assert metric(text, "qwen_embed_batch_requests_sum", 'model="emb"') == statuses.count(200)
        assert metric(text, "qwen_embed_requests_total", 'route="/v1/embeddings",status="429"') == statuses.count(429)
        assert metric(text, "qwen_embed_queue_requests", 'model="emb"') == 0
        # and it still serves
        assert httpx.post(srv.url + "/v1/embeddings", json={"input": "still here"}).status_code == 200
