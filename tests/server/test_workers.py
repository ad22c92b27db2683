"""serve --workers N (issue 16): HTTP worker processes on one socket, model processes that batch the
requests of every worker. The frames and the global admission alone (fast), then real servers (slow):
overload and a model process killed under load, a worker killed (replaced, metrics kept), SIGTERM."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import re
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from qwen_embed import Embedder
from qwen_embed.server import ServerSettings, wire
from qwen_embed.server.batcher import QueueFull, ShuttingDown, Timing
from qwen_embed.server.board import Board
from qwen_embed.server.remote import Link, RemoteBatcher
from qwen_embed.server.supervisor import Supervisor

from .conftest import WorkersServer, alive
from .test_load import metric

BOUND_S = 20.0  # no request may take longer, kill included


def frame_of(parts: list[bytes]) -> wire.Frame:
    """The frame a reader gets from these parts (the size in the header checked against the payload)."""
    kind, code, rid, a, b, size, q, i = wire.HEAD.unpack(parts[0])
    payload = b"".join(parts[1:])
    assert size == len(payload)
    return wire.Frame(kind, rid, code, a, b, payload, q, i)


def test_frames_round_trip() -> None:
    seqs = [[1, 2, 3], [151643], [7] * 10]
    frame = frame_of(wire.request(5, seqs))
    assert (frame.kind, frame.id, frame.code) == (wire.REQUEST, 5, 0) and wire.sequences(frame) == seqs
    assert frame_of(wire.request(6, seqs, warmup=True)).code == wire.WARMUP
    for out in (np.arange(12, dtype=np.float32).reshape(3, 4) / 7, np.array([0.25, 1 / 3]),
                np.array([0.5], dtype=np.float32)):
        frame = frame_of(wire.rows(9, out, 0.01, 0.02))
        got = wire.array(frame)
        assert got.dtype == out.dtype and np.array_equal(got, out)
        assert (frame.queue_s, frame.inference_s) == (0.01, 0.02)
        got[0] = 0  # writable, as torch.from_numpy wants


def test_errors_cross_by_class() -> None:
    from qwen_embed.errors import ModelOutputError
    from qwen_embed.server.errors import status_of
    from qwen_embed.server.model_process import ModelError
    from qwen_embed.server.remote import remote_error

    err = remote_error(*wire.error_of(frame_of(wire.error(3, "ModelOutputError", "NaN in the output of batch 1"))))
    assert isinstance(err, ModelOutputError) and str(err) == "NaN in the output of batch 1"
    assert status_of(err) == (500, "model_output_not_finite")  # as in process: one table of statuses
    other = remote_error("RuntimeError", "CUDA error")
    assert isinstance(other, ModelError) and status_of(other) == (500, "model_error") and "CUDA error" in str(other)


def test_admission_counts_every_worker() -> None:
    """Two workers' batchers on one board: --max-queue 3 holds for both together, not for each."""
    board = Board.create(mp.get_context("spawn"), workers=2, processes=1)
    w0, w1 = (RemoteBatcher("emb", 0, [], "{}-{}", board, w, max_batch_tokens=64, max_queue=3,
                            max_queue_tokens=100) for w in (0, 1))
    held = [w0.admit(), w1.admit(), w0.admit()]
    assert board.admitted(0) == (3, 0) and w1.pending_requests == 1
    with pytest.raises(QueueFull, match=r"3 requests queued or running, limit 3"):
        w1.admit()
    held.pop().release()
    held.append(w1.admit())
    board.add(0, 0, 0, 90)  # worker 0's requests hold 90 tokens: 20 more from worker 1 pass the token limit
    with pytest.raises(QueueFull, match=r"90 tokens queued or running, limit 100"):
        w1.check_room(0, 20, holding=1)
    for adm in held:
        adm.release()
    board.add(0, 0, 0, -90)
    assert board.admitted(0) == (0, 0)
    alone = w1.admit()
    w1.check_room(0, 10_000, holding=1)  # a request alone in the queue is always taken
    alone.release()


def test_a_request_admitted_before_the_drain_is_sent_not_refused(tmp_path: Path) -> None:
    """As the in-process batcher: SIGTERM while an admitted request is tokenized does not refuse it; only new
    requests get 503, and an admitted one gets it once the drain time ran out."""
    board = Board.create(mp.get_context("spawn"), workers=1, processes=1)
    addresses = str(tmp_path / "m{}-{}.sock")

    async def model_process(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await wire.read(reader)
        writer.writelines(wire.rows(frame.id, np.array([[len(s)] for s in wire.sequences(frame)], np.float32), 0, 0))
        await writer.drain()

    async def run() -> np.ndarray:
        server = await asyncio.start_unix_server(model_process, addresses.format(0, 1))
        batcher = RemoteBatcher("emb", 0, [Link(0, "cpu")], addresses, board, 0, max_batch_tokens=64,
                                max_queue=3, max_queue_tokens=100)
        board.next_generation(0)
        board.set_ready(0, True)
        tokenizing, late = batcher.admit(), batcher.admit()
        batcher.drain(timeout=0.3)
        try:
            with pytest.raises(ShuttingDown, match="shutting down; retry"):
                batcher.admit()
            out = await tokenizing.submit([[1, 2, 3]])
            await asyncio.sleep(0.5)
            with pytest.raises(ShuttingDown, match="drain time ran out"):
                await late.submit([[1]])
            assert board.admitted(0) == (0, 0)
            return out
        finally:
            await batcher.stop()
            server.close()

    assert asyncio.run(run()).tolist() == [[3.0]]


def test_a_restarted_model_process_is_reached_by_the_next_request(tmp_path: Path) -> None:
    """A worker whose reconnect loop has not yet seen a restarted model process is ready as soon as the board
    says so, and its next request connects to it (before: /health and requests gave 503 until the worker's
    next reconnect tick, which a loaded machine can delay by seconds)."""
    board = Board.create(mp.get_context("spawn"), workers=1, processes=1)
    addresses = str(tmp_path / "m{}-{}.sock")

    async def model_process(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await wire.read(reader)  # one request: its rows are its lengths
        writer.writelines(wire.rows(frame.id, np.array([[len(s)] for s in wire.sequences(frame)], np.float32), 0, 0))
        await writer.drain()

    async def run() -> np.ndarray:
        server = await asyncio.start_unix_server(model_process, addresses.format(0, 1))
        batcher = RemoteBatcher("emb", 0, [Link(0, "cpu")], addresses, board, 0, max_batch_tokens=64,
                                max_queue=3, max_queue_tokens=100)  # not started: no reconnect loop
        assert not batcher.ready
        board.next_generation(0)  # the supervisor started generation 1, which is now listening
        board.set_ready(0, True)
        assert batcher.ready
        try:
            return await batcher.send([[1, 2, 3], [4]], Timing())
        finally:
            await batcher.stop()
            server.close()

    assert asyncio.run(run()).tolist() == [[3.0], [1.0]]


def test_warm_up_outlives_a_model_process_that_dies_meanwhile(tmp_path: Path) -> None:
    """A worker's warm-up whose model process dies under it (generation 1 closes the connection without an
    answer) tries again and is answered by the restarted one (generation 2); before, the warm-up failed with
    ModelProcessDied and the worker stayed unready for good (a flake of the overload test under load)."""
    board = Board.create(mp.get_context("spawn"), workers=1, processes=1)
    addresses = str(tmp_path / "m{}-{}.sock")
    servers: list[asyncio.AbstractServer] = []

    async def answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await wire.read(reader)  # rows are the lengths
        writer.writelines(wire.rows(frame.id, np.array([[len(s)] for s in wire.sequences(frame)], np.float32), 0, 0))
        await writer.drain()

    async def dying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await wire.read(reader)
        board.set_ready(0, False)  # as the supervisor does: generation 2 starts and becomes ready
        servers.append(await asyncio.start_unix_server(answering, addresses.format(0, 2)))
        board.next_generation(0)
        board.set_ready(0, True)
        writer.close()  # generation 1 is gone without an answer

    async def run() -> np.ndarray:
        servers.append(await asyncio.start_unix_server(dying, addresses.format(0, 1)))
        batcher = RemoteBatcher("emb", 0, [Link(0, "cpu")], addresses, board, 0, max_batch_tokens=64,
                                max_queue=3, max_queue_tokens=100)
        board.next_generation(0)
        board.set_ready(0, True)
        try:
            return await asyncio.wait_for(batcher.call([[1, 2], [3]], timeout=20), 30)
        finally:
            await batcher.stop()
            for server in servers:
                server.close()

    assert asyncio.run(run()).tolist() == [[2.0], [1.0]]
    assert board.generation(0) == 2


def test_workers_setting() -> None:
    from qwen_embed.errors import InputError
    from qwen_embed.server.settings import resolve

    assert resolve({"embedding_model": "m"}, env={}).workers == 1  # the default: one process, as before
    assert resolve({"embedding_model": "m"}, env={"QWEN_EMBED_WORKERS": "4"}).workers == 4
    with pytest.raises(InputError, match=r"workers=0 is out of range: use 1\.\.64"):
        resolve({"embedding_model": "m", "workers": 0}, env={})


def test_the_supervisor_imports_no_torch(small_embedding_path: Path, small_reranker_path: Path) -> None:
    """`serve --workers` on CPU devices: the supervisor checks the devices and plans each model (config,
    tokenizer, max length, dtype, its model processes' share of the cores) without importing torch (~1.2 s
    of CPU and 300 MB it never used); its children import torch once, in the fork server."""
    import json
    import subprocess
    import sys

    from tests.threads import subprocess_env

    code = ("import json, sys\n"
            "from qwen_embed.server import ServerSettings\n"
            "from qwen_embed.server.model_pool import parse_devices\n"
            "from qwen_embed.server.supervisor import Supervisor, plan_models\n"
            "settings = ServerSettings(embedding_model=sys.argv[1], reranker_model=sys.argv[2], dtype='int8', "
            "workers=2)\n"
            "plans = plan_models(settings, parse_devices('cpu,cpu'))\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'share': [s.thread_share for _, s in plans],"
            " 'threads': [s.threads for _, s in plans], 'dtype': [s.dtype for _, s in plans]}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(small_embedding_path), str(small_reranker_path)],
                         capture_output=True, text=True, timeout=120, env=subprocess_env(), check=True)
    assert json.loads(out.stdout) == {"torch": False, "share": [4, 4], "threads": [None, None],
                                      "dtype": ["int8", "int8"]}, out.stdout


def test_a_cpu_model_process_takes_its_share_of_the_cores(small_embedding_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """What the supervisor computed with torch before: each CPU model process now takes the cores it may
    use (threads.py: affinity and cgroup quota) divided by `thread_share`, unless given a count or
    OMP_NUM_THREADS."""
    import torch

    from qwen_embed import threads
    from qwen_embed.server.model_process import ModelSpec
    from qwen_embed.server.model_server import load_model

    monkeypatch.setattr(threads, "available_cores", lambda root=None: 6)
    monkeypatch.setattr(threads, "_chosen", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        got = []
        for share, count in ((2, None), (4, None), (1, None), (2, 5)):
            monkeypatch.setattr(threads, "_chosen", None)
            load_model(ModelSpec("embedding", str(small_embedding_path), "cpu", max_length=64, threads=count,
                                 thread_share=share), deterministic=False)
            got.append(torch.get_num_threads())
        assert got == [3, 1, 6, 5]
        monkeypatch.setattr(threads, "_chosen", None)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice stands
        torch.set_num_threads(2)
        load_model(ModelSpec("embedding", str(small_embedding_path), "cpu", max_length=64, thread_share=4), False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def stand_in(alive: bool, pid: int, exitcode: int | None = None) -> SimpleNamespace:
    """A child process as the supervisor sees it (is_alive, pid, exitcode), with a pid no process has."""
    return SimpleNamespace(is_alive=lambda: alive, pid=2**22 + pid, exitcode=exitcode)


def stand_in_supervisor(model: Path, metrics: Path) -> Supervisor:
    """A supervisor of one model and two workers whose children are set by the test (`stand_in`)."""
    sup = Supervisor(ServerSettings(embedding_model=str(model), workers=2), ["cpu"])
    sup.metrics_dir = str(metrics)
    return sup


def test_a_model_process_that_dies_while_the_workers_start_is_started_again(small_embedding_path: Path,
                                                                            tmp_path: Path) -> None:
    """The supervisor waiting for its workers to serve restarts a model process that died meanwhile (it
    only watched the workers then: a worker whose warm-up waited on that model process, and the server,
    waited for good)."""
    sup = stand_in_supervisor(small_embedding_path, tmp_path)
    sup.models = [stand_in(False, 1, exitcode=-9)]
    sup.workers = [stand_in(True, 2)] * 2
    sup.started_at = {("model", 0): 0.0, ("worker", 0): time.monotonic(), ("worker", 1): time.monotonic()}
    started: list[int] = []

    def start_model(slot: int) -> None:  # the new model process warms up; so do the workers waiting on it
        started.append(slot)
        sup.models[slot] = stand_in(True, 3)
        sup.board.set_serving(0)
        sup.board.set_serving(1)

    sup.start_model = start_model  # type: ignore[method-assign]
    waiting = threading.Thread(target=sup.wait_workers, daemon=True)
    waiting.start()
    waiting.join(10)
    assert not waiting.is_alive() and started == [0]


@pytest.mark.parametrize("exitcode", [-signal.SIGKILL, -signal.SIGTERM, 1, -signal.SIGSEGV])
def test_a_worker_killed_from_outside_while_starting_is_started_again(small_embedding_path: Path, tmp_path: Path,
                                                                       exitcode: int) -> None:
    """A worker that the OOM killer or an operator kills (SIGKILL, SIGTERM) while it starts is started again,
    as after the start (before, it ended the whole server: seen when a test killed a worker still warming
    up); one that exits by itself or crashes (code 1, SIGSEGV) while starting still ends the server, in one
    line that says how it ended."""
    from qwen_embed.errors import QwenEmbedError

    sup = stand_in_supervisor(small_embedding_path, tmp_path)
    sup.models = [stand_in(True, 1)]
    sup.workers = [stand_in(False, 2, exitcode=exitcode), stand_in(True, 3)]
    sup.started_at = {("model", 0): 0.0, ("worker", 0): 0.0, ("worker", 1): 0.0}
    sup.board.set_serving(1)
    started: list[int] = []

    def start_worker(index: int) -> None:  # the new worker warms up and serves
        started.append(index)
        sup.workers[index] = stand_in(True, 4)
        sup.board.set_serving(index)

    sup.start_worker = start_worker  # type: ignore[method-assign]
    if exitcode in (-signal.SIGKILL, -signal.SIGTERM):
        sup.wait_workers()
        assert started == [0]
    else:
        how = "exited with code 1" if exitcode == 1 else "was killed by SIGSEGV"
        with pytest.raises(QwenEmbedError, match=f"HTTP worker 0 {how} while starting; see its log above"):
            sup.wait_workers()
        assert started == []


def embed_all(url: str, bodies: list[dict[str, object]], concurrency: int) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=BOUND_S) as c:
            async def one(body: dict[str, object]) -> httpx.Response:
                async with sem:
                    return await c.post("/v1/embeddings", json=body)
            return list(await asyncio.gather(*(one(b) for b in bodies)))
    return asyncio.run(run())


@pytest.mark.slow
def test_overload_and_a_model_process_killed_under_load(small_embedding_path: Path, small_embedder: Embedder,
                                                          tmp_path: Path) -> None:
    """`--workers 2 --max-queue 4`: 429s across both workers, none lost; then the model process killed
    under load: every request ends (200, 503 or 429) within the bound, /health goes 503, the process
    is started again, later requests succeed."""
    cli = ["--embedding-model", str(small_embedding_path), "--embedding-name", "emb", "--workers", "2",
           "--devices", "cpu", "--max-length", "64", "--max-wait-ms", "2", "--max-queue", "4",
           "--max-batch-requests", "2"]
    texts = [f"text number {i} " + "word " * 40 for i in range(8)]
    want = small_embedder.encode(texts)
    with WorkersServer(tmp_path / "serve.log", cli=cli) as srv:
        before = httpx.get(srv.url + "/metrics").text
        responses = embed_all(srv.url, [{"input": texts, "encoding_format": "float"}] * 60, 60)
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429} and statuses.count(429) > 0 and statuses.count(200) > 0, statuses
        for r in responses:
            if r.status_code == 200:
                assert np.abs(np.array([d["embedding"] for d in r.json()["data"]]) - want).max() <= 1e-6
            else:
                assert int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "queue_full"
        after = httpx.get(srv.url + "/metrics").text
        # the model process ran exactly the accepted requests, whichever worker took them
        ran = metric(after, "qwen_embed_batch_requests_sum", 'model="emb"') - \
            metric(before, "qwen_embed_batch_requests_sum", 'model="emb"')
        assert ran == statuses.count(200)
        assert metric(after, "qwen_embed_queue_requests", 'model="emb"') == 0

        old = srv.pids("model")[0]
        statuses = []
        health: list[int] = []
        t_kill = 0.0

        async def load() -> float:
            # below the admission limit, so that requests are always admitted and in flight when the
            # third answer comes (with more, 429s, which end fast, could use up every request first)
            sem = asyncio.Semaphore(3)
            slowest = 0.0
            async with httpx.AsyncClient(base_url=srv.url, timeout=BOUND_S) as c:
                async def one() -> None:
                    nonlocal slowest
                    async with sem:
                        t0 = time.monotonic()
                        r = await c.post("/v1/embeddings", json={"input": texts})
                        slowest = max(slowest, time.monotonic() - t0)
                        statuses.append(r.status_code)
                        if r.status_code == 503:
                            assert r.json()["error"]["code"] == "model_unavailable", r.text

                async def killer() -> None:
                    nonlocal t_kill
                    while statuses.count(200) < 3:
                        assert len(statuses) < 48, "every request ended before the kill"
                        await asyncio.sleep(0.005)
                    t_kill = time.monotonic()
                    os.kill(old, signal.SIGKILL)
                    # /health goes 503 while the model is down (a restart forked from the fork server can be
                    # ready again within a few tenths of a second, so watch from the kill on)
                    while not health or (health[-1] == 200 and time.monotonic() - t_kill < 5):
                        health.append((await c.get("/health")).status_code)
                        await asyncio.sleep(0.01)

                await asyncio.gather(killer(), *(one() for _ in range(48)))
            return slowest

        slowest = asyncio.run(load())
        assert len(statuses) == 48 and set(statuses) <= {200, 429, 503} and 503 in statuses, statuses
        assert statuses.count(200) + statuses.count(503) + statuses.count(429) == 48
        assert slowest < BOUND_S and health[-1] == 503 and set(health) <= {200, 503}, (slowest, health)
        recovered = srv.wait_ready(90)
        assert srv.pids("model")[0] != old
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": texts}, timeout=BOUND_S)
        assert r.status_code == 200, r.text
        assert np.abs(np.array([d["embedding"] for d in r.json()["data"]]) - want).max() <= 1e-6
        print(f"200/503/429: {statuses.count(200)}/{statuses.count(503)}/{statuses.count(429)}, slowest "
              f"{slowest:.2f} s, ready again {time.monotonic() - t_kill:.1f} s after the kill ({recovered:.1f} s wait)")


def warmed_workers(srv: WorkersServer) -> int:
    return len(re.findall(r"\[worker \d+\]: warm-up done", srv.log.read_text()))


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_counts_stay(workers_server: WorkersServer,
                                                         small_embedder: Embedder) -> None:
    """Requests on fresh connections (spread over both workers), then each worker killed in turn: the
    other serves meanwhile, each is replaced, and /metrics still counts the requests that the dead
    processes answered (only files merged across processes can)."""
    srv = workers_server
    label = 'route="/v1/embeddings",status="200"'
    before = metric(httpx.get(srv.url + "/metrics").text, "qwen_embed_requests_total", label)
    for i in range(20):
        with httpx.Client(base_url=srv.url, timeout=BOUND_S) as c:  # a new connection each
            r = c.post("/v1/embeddings", json={"input": [f"fresh {i}"]})
            assert r.status_code == 200
            assert np.abs(np.array(r.json()["data"][0]["embedding"]) - small_embedder.encode([f"fresh {i}"])[0]).max() \
                <= 1e-6
    for index in (0, 1):
        old = srv.pids("worker")[index]
        warmed = warmed_workers(srv)
        os.kill(old, signal.SIGKILL)
        while alive(old):
            time.sleep(0.01)
        for i in range(5):  # the other worker is unaffected
            assert httpx.post(srv.url + "/v1/embeddings", json={"input": [f"meanwhile {i}"]},
                              timeout=BOUND_S).status_code == 200
        deadline = time.monotonic() + 90
        while srv.pids("worker")[index] == old or warmed_workers(srv) == warmed:
            assert time.monotonic() < deadline, "the worker was not replaced within 90 s"
            time.sleep(0.1)
    after = metric(httpx.get(srv.url + "/metrics").text, "qwen_embed_requests_total", label)
    assert after == before + 30, (before, after)


@pytest.mark.slow
def test_sigterm_drains_every_process(small_embedding_path: Path, tmp_path: Path) -> None:
    """Under an API key (401 without it, on every worker). A request of 2,048 token-id sequences of 256
    tokens, one per batch (~15 s of model work here), SIGTERM 1.5 s in, --graceful-timeout 3: the client
    gets 503 (shutting_down), the supervisor exits 0 within the timeout, and no process of it is left."""
    cli = ["--embedding-model", str(small_embedding_path), "--embedding-name", "emb", "--workers", "2",
           "--devices", "cpu", "--max-length", "256", "--max-batch-tokens", "256", "--max-wait-ms", "0",
           "--graceful-timeout", "3", "--max-request-tokens", "1000000", "--api-key", "sk-test"]
    key = {"Authorization": "Bearer sk-test"}
    with WorkersServer(tmp_path / "serve.log", cli=cli) as srv:
        children = [*srv.pids("worker").values(), *srv.pids("model").values()]
        for _ in range(6):  # fresh connections: both workers answer
            r = httpx.post(srv.url + "/v1/embeddings", json={"input": "x"})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert httpx.post(srv.url + "/v1/embeddings", json={"input": "x"}, headers=key).status_code == 200
        ids = [[i % 500 + 1] * 255 for i in range(2048)]
        result: dict[str, httpx.Response] = {}
        t = threading.Thread(target=lambda: result.update(
            r=httpx.post(srv.url + "/v1/embeddings", json={"input": ids}, headers=key, timeout=60)))
        t.start()
        time.sleep(1.5)
        assert t.is_alive(), "the request ended before SIGTERM: make it longer"
        t0 = time.monotonic()
        code = srv.terminate(timeout=10)
        exited = time.monotonic() - t0
        t.join(10)
    r = result["r"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down", r.text
    assert code == 0 and exited <= 3.5, (code, exited)
    assert not [p for p in children if alive(p)]
    assert "Traceback" not in srv.log.read_text()


@pytest.mark.slow
def test_a_killed_supervisor_leaves_no_process(small_embedding_path: Path, tmp_path: Path) -> None:
    """SIGKILL to the supervisor (no drain, no clean-up of its own): its workers and model process, and the
    fork server they were forked from, see it gone and end within seconds."""
    cli = ["--embedding-model", str(small_embedding_path), "--workers", "2", "--devices", "cpu", "--max-length", "64"]
    with WorkersServer(tmp_path / "serve.log", cli=cli) as srv:
        assert srv.proc is not None
        children = [*srv.pids("worker").values(), *srv.pids("model").values()]
        everyone = [p for p in map(int, filter(str.isdigit, os.listdir("/proc"))) if p != srv.proc.pid and
                    _ancestor(srv.proc.pid, p)]  # the children and the fork server
        assert set(children) <= set(everyone) and len(everyone) > len(children), (children, everyone)
        assert "libtorch" not in Path(f"/proc/{srv.proc.pid}/maps").read_text()  # the supervisor imports no torch
        srv.proc.kill()
        srv.proc.wait()
        deadline = time.monotonic() + 15
        while [p for p in everyone if alive(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        left = {p: _cmdline(p) for p in everyone if alive(p)}
        assert not left, (left, srv.log.read_text()[-2000:])
        assert "Traceback" not in srv.log.read_text()


@pytest.mark.slow
def test_sigterm_stops_a_worker_whose_warm_up_waits(small_embedding_path: Path, tmp_path: Path) -> None:
    """A worker replaced while its model process hangs (SIGSTOP) waits in its warm-up; SIGTERM then ends
    its warm-up and the worker at once (uvicorn alone acts on a signal only once the start is over: the
    worker stayed until the warm-up's 600 s limit). The supervisor replaces it; with the model process going
    again, the new worker serves."""
    cli = ["--embedding-model", str(small_embedding_path), "--workers", "2", "--devices", "cpu",
           "--max-length", "64"]
    with WorkersServer(tmp_path / "serve.log", cli=cli) as srv:
        def worker0(what: str) -> int:
            return srv.log.read_text().count(f"[worker 0]: {what}")

        def replaced(old: int) -> int:
            deadline = time.monotonic() + 60
            while (new := srv.pids("worker")[0]) == old or f"Started server process [{new}]" not in \
                    srv.log.read_text():
                assert time.monotonic() < deadline, srv.log.read_text()[-2000:]
                time.sleep(0.05)
            return new

        model = srv.pids("model")[0]
        os.kill(model, signal.SIGSTOP)
        try:
            old = srv.pids("worker")[0]
            os.kill(old, signal.SIGKILL)
            waiting = replaced(old)
            time.sleep(0.5)  # in its warm-up, which cannot end while the model process is stopped
            assert alive(waiting) and worker0("warm-up done") == 1
            os.kill(waiting, signal.SIGTERM)
            t0 = time.monotonic()
            while alive(waiting) and time.monotonic() - t0 < 10:
                time.sleep(0.02)
            assert not alive(waiting), srv.log.read_text()[-2000:]
            assert time.monotonic() - t0 < 2.0, time.monotonic() - t0
            assert worker0("warm-up stopped: the server is stopping") == 1
        finally:
            os.kill(model, signal.SIGCONT)
        replaced(waiting)
        deadline = time.monotonic() + 60
        while worker0("warm-up done") < 2:
            assert time.monotonic() < deadline, srv.log.read_text()[-2000:]
            time.sleep(0.05)
        assert httpx.post(srv.url + "/v1/embeddings", json={"input": ["back"]}, timeout=BOUND_S).status_code == 200
        assert "Traceback" not in srv.log.read_text()


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()[:200]
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or reaped between open and read
        return "(gone)"


def _ancestor(ancestor: int, pid: int) -> bool:
    """Whether `ancestor` is the parent of `pid`, or its parent's, and so on."""
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().split(") ")[-1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            return False
        if pid == ancestor:
            return True
    return False


@pytest.mark.slow
def test_a_worker_that_cannot_start_ends_the_server_with_one_line(small_embedding_path: Path, tmp_path: Path) -> None:
    """A --ranges file of the wrong shape fails in each worker's app: the supervisor exits 2, saying so,
    instead of starting workers again forever."""
    import subprocess
    import sys

    from tests.threads import subprocess_env

    bad = tmp_path / "ranges.npy"
    np.save(bad, np.zeros((3, 5), dtype=np.float32))
    proc = subprocess.run([sys.executable, "-m", "qwen_embed", "serve", "--embedding-model", str(small_embedding_path),
                           "--workers", "2", "--devices", "cpu", "--max-length", "64", "--port", "0", "--ranges",
                           str(bad), "--log-level", "warning"], capture_output=True, text=True, timeout=180,
                          env=subprocess_env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("qwen-embed serve: error: HTTP worker") and "while starting" in last, last
    assert "holds an array of shape (3, 5)" in proc.stderr
