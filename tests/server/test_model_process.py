"""ModelProcess (issue 16, first step): the batcher's `run` in a child process. Parity with the
in-process model, and a killed child: the batch in flight fails at once with ModelProcessDied, the
process is restarted, later batches succeed. CPU only; the child loads a tiny checkpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder, Reranker
from qwen_embed.server.batcher import Batcher
from qwen_embed.server.errors import status_of
from qwen_embed.server.model_process import ModelProcess, ModelProcessDied, ModelSpec, pack, unpack

pytestmark = pytest.mark.slow  # each test spawns a process that imports torch


def test_pack_round_trip() -> None:
    seqs = [[1, 2, 3], [151643], [7] * 10]
    assert unpack(*pack(seqs)) == seqs


@pytest.fixture(scope="module")
def emb_process(small_embedding_path: Path) -> Iterator[ModelProcess]:
    mp = ModelProcess(ModelSpec("embedding", str(small_embedding_path), "cpu", max_length=64, batch_tokens=64,
                                threads=1))
    yield mp
    mp.close()


def test_rows_equal_the_in_process_model(emb_process: ModelProcess, small_embedder: Embedder,
                                         small_reranker_path: Path, small_reranker: Reranker) -> None:
    seqs = small_embedder.tokenize(["The capital of China is Beijing.", "Gravity.", "yes"])
    want = small_embedder.embed_ids(seqs, normalize=False)
    assert np.abs(emb_process(seqs) - want).max() <= 1e-6
    rr = ModelProcess(ModelSpec("reranker", str(small_reranker_path), "cpu", max_length=256, threads=1))
    try:
        pairs = small_reranker.build_input_ids("capital", ["Beijing", "gravity"])
        assert np.abs(rr(pairs) - small_reranker.score_ids(pairs)).max() <= 1e-6
    finally:
        rr.close()


def test_a_killed_model_process_fails_its_batch_at_once_and_comes_back(emb_process: ModelProcess,
                                                                       small_embedder: Embedder) -> None:
    long = [[5] * 63 + [small_embedder.tokenizer.eos_id]] * 4000  # one sequence a batch: ~20 s of work
    errors: list[BaseException] = []

    def call() -> None:
        try:
            emb_process(long)
        except ModelProcessDied as e:
            errors.append(e)

    t = threading.Thread(target=call)
    t.start()
    time.sleep(1.0)
    pid = emb_process.pid
    assert pid is not None
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    t.join(10)
    assert errors and time.monotonic() - t0 < 2.0, "the batch in flight did not fail at once"
    assert status_of(errors[0]) == (503, "model_unavailable") and "was killed by SIGKILL" in str(errors[0])
    with pytest.raises(ModelProcessDied, match="restarting"):
        emb_process([[1, 2]])  # while the new child loads: at once, no wait
    deadline = time.monotonic() + 60
    while not emb_process.ready:
        assert time.monotonic() < deadline, "not restarted within 60 s"
        time.sleep(0.1)
    assert emb_process.pid != pid and emb_process.restarts == 1
    seqs = small_embedder.tokenize(["after the restart"])
    assert np.abs(emb_process(seqs) - small_embedder.embed_ids(seqs, normalize=False)).max() <= 1e-6


def test_through_the_batcher_every_request_is_answered_once(emb_process: ModelProcess,
                                                            small_embedder: Embedder) -> None:
    while not emb_process.ready:
        time.sleep(0.1)
    eos = small_embedder.tokenizer.eos_id

    async def scenario() -> list[object]:
        b = Batcher("emb", emb_process, max_batch_tokens=64, max_wait_s=0.0)
        b.start()
        jobs = [asyncio.ensure_future(b.submit([[i + 1] * 63 + [eos]] * 200)) for i in range(8)]
        # kill while work is left, however fast the machine: at the first finished job, or after 1 s
        await asyncio.wait(jobs, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        assert emb_process.pid is not None
        os.kill(emb_process.pid, signal.SIGKILL)
        results = await asyncio.gather(*jobs, return_exceptions=True)
        await b.stop()
        assert b.pending_requests == 0
        return list(results)

    results = asyncio.run(asyncio.wait_for(scenario(), 60))
    ok = [r for r in results if isinstance(r, np.ndarray)]
    died = [r for r in results if isinstance(r, ModelProcessDied)]
    assert len(ok) + len(died) == 8 and died  # each answered exactly once: rows or 503
    for r in ok:
        assert r.shape == (200, small_embedder.hidden_size)


def test_health_and_routes_say_when_a_model_process_is_down(small_embedder: Embedder) -> None:
    import httpx

    from qwen_embed.server import ServerSettings, create_app

    from .conftest import LiveServer

    class Down:  # a `run` whose process is restarting (the ModelProcess contract: a `ready` flag)
        ready = False

        def __call__(self, seqs: object) -> None:
            raise ModelProcessDied("restarting")

    app = create_app(ServerSettings(embedding_model="emb", warmup=False), embedder=small_embedder)
    with LiveServer(app) as srv:
        assert app.state.qe.embedding is not None
        app.state.qe.embedding.batcher.run = Down()
        r = httpx.get(srv.url + "/health", timeout=5)
        assert r.status_code == 503 and "model process of emb is restarting" in r.json()["error"]["message"]
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": "x"}, timeout=5)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        assert r.headers["retry-after"] == "1"
