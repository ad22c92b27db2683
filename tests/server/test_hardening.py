"""Hostile clients and faults (issue 23: 2, 3, 4, 5, 7, 11, 12), each against a live loopback server.

Every scenario is bounded in count and time (sockets have timeouts, clients have deadlines); traffic
goes to 127.0.0.1 only. `HOSTILE` counts the scenarios this file tries (the closing note reports it).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from qwen_embed import Embedder, Reranker
from qwen_embed.server import ServerSettings, create_app
from qwen_embed.server.app import metrics_label
from qwen_embed.server.serving import DrainingServer, uvicorn_config
from tests.ports import free_port
from tests.threads import subprocess_env

from .conftest import LiveServer

HOSTILE = ["partial-headers", "stalled-body", "stalled-chunked-body", "trickled-chunked-body",
           "client-gone-mid-body", "connection-flood", "emfile-log-flood", "huge-id-list-health", "huge-single-text",
           "huge-tokenize", "tokens-per-request", "client-disconnect", "id-list-over-length", "metrics-auth",
           "metrics-path-label", "head-health", "deep-nesting", "id-list-under-cap-validation", "whitespace-run-cut",
           "huge-text-no-truncate", "low-fd-limit", "nan-model-warmup", "nan-model-no-warmup", "nan-weights-serve-cli"]


def metric(text: str, name: str, labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


@pytest.fixture(scope="module")
def hardened(small_embedder: Embedder) -> Iterator[LiveServer]:
    """Served as `qwen-embed serve` serves (serving.py), with small limits to reach them quickly."""
    settings = ServerSettings(embedding_model="emb", max_length=64, header_timeout=1.0, body_timeout=1.0,
                              max_connections=16, max_request_tokens=4096, warmup=False)
    app = create_app(settings, embedder=small_embedder)
    with LiveServer(app, settings) as srv:
        yield srv


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes `sock` within `seconds` (reads until EOF)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except (TimeoutError, ConnectionResetError):
        return False


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


# -- 2: a model whose output is NaN is never reported healthy and never answers 200 ----------------------
def nan_models(embedding: Path, reranker: Path) -> tuple[Embedder, Reranker]:
    """Both small models, loaded intact, then one MLP weight set to NaN in memory (the loader refuses NaN in
    a file; this is what a forward pass that overflows leaves)."""
    emb = Embedder.from_pretrained(embedding, device="cpu", max_length=64)
    rr = Reranker.from_pretrained(reranker, device="cpu", max_length=256)
    with torch.no_grad():
        for m in (emb, rr):
            m.checkpoint.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    return emb, rr


@pytest.mark.parametrize("warmup", [True, False], ids=["warmup", "no-warmup"])
def test_a_model_that_outputs_nan_is_not_healthy_and_never_answers_200(warmup: bool, small_embedding_path: Path,
                                                                       small_reranker_path: Path) -> None:
    emb, rr = nan_models(small_embedding_path, small_reranker_path)
    settings = ServerSettings(embedding_model="emb", reranker_model="rr", max_length=64, warmup=warmup)
    with LiveServer(create_app(settings, embedder=emb, reranker=rr), settings, ready=False) as srv:
        deadline = time.monotonic() + 30
        while warmup and "NaN" not in httpx.get(srv.url + "/health", timeout=5).text:  # the warm-up has run
            assert time.monotonic() < deadline, "the warm-up did not report the NaN output"
            time.sleep(0.05)
        health = httpx.get(srv.url + "/health", timeout=5)
        answers = [httpx.post(srv.url + "/v1/embeddings", json={"input": ["a b", "c"], "encoding_format": fmt},
                              timeout=30) for fmt in ("float", "base64")]
        answers.append(httpx.post(srv.url + "/v1/rerank", json={"query": "q", "documents": ["a", "b"]}, timeout=30))
        answers.append(httpx.post(srv.url + "/embed", json={"inputs": "a"}, timeout=30))
        head = httpx.head(srv.url + "/health", timeout=5).status_code
    if warmup:
        assert health.status_code == head == 503 and "NaN" in health.json()["error"]["message"]
        for r in answers:
            assert r.status_code == 503 and "warm-up forward pass failed" in r.json()["error"]["message"], r.text
            assert "Retry-After" not in r.headers  # not a wait: the model is broken
    else:  # no warm-up, so /health cannot know; every answer that would carry NaN is a 500 naming the cause
        for r in answers:
            assert r.status_code == 500, r.text
            assert r.json()["error"]["code"] == "model_output_not_finite" and "NaN" in r.json()["error"]["message"]


@pytest.mark.slow  # a `serve` process: ~7 s
@pytest.mark.parametrize("extra", [
    [], pytest.param(["--devices", "cpu,cpu"], marks=pytest.mark.slow, id="model-processes"),
    pytest.param(["--workers", "2"], marks=pytest.mark.slow, id="workers")])
def test_serve_refuses_nan_weights_in_one_line_before_the_port_opens(tmp_path: Path, small_embedding_path: Path,
                                                                    extra: list[str]) -> None:
    """In one process, and where the model loads in a child process (which reports its one-line error to
    the parent instead of a traceback)."""
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan-emb"
    shutil.copytree(small_embedding_path, bad)
    w = load_file(str(bad / "model.safetensors"))
    w["norm.weight"] = torch.full_like(w["norm.weight"], float("nan"))
    save_file(w, str(bad / "model.safetensors"))
    port = free_port()  # it must stay closed
    try:  # before the fix it served (and answered NaN) until killed
        proc = subprocess.run([sys.executable, "-m", "qwen_embed", "serve", "--embedding-model", str(bad),
                               *([] if "--devices" in extra else ["--device", "cpu"]), "--host", "127.0.0.1",
                               "--port", str(port), "--log-level", "warning", *extra],
                              env=subprocess_env(), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("serve started on NaN weights")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and len(err.splitlines()) == 1, err
    assert "norm.weight holds 64 NaN or infinite values" in err


# -- 5: read timeouts, connection cap, quiet accept errors ------------------------------------------
def test_partial_headers_are_cut_off_after_the_header_timeout(hardened: LiveServer) -> None:
    with connect(hardened.url) as s, connect(hardened.url) as silent:  # the second sends nothing at all
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")  # never ends its headers
        t0 = time.monotonic()
        assert closed_within(s, 5.0)
        assert time.monotonic() - t0 < 3.0
        assert closed_within(silent, 5.0)


def test_a_stalled_body_is_cut_off_after_the_body_timeout(hardened: LiveServer) -> None:
    with connect(hardened.url) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"input\": ")  # promises 1000 bytes, sends 10
        t0 = time.monotonic()
        assert closed_within(s, 5.0)
        assert time.monotonic() - t0 < 3.0
    assert httpx.post(hardened.url + "/v1/embeddings", json={"input": "fine"}, timeout=10).status_code == 200


def test_a_chunked_body_that_never_ends_is_cut_off(hardened: LiveServer) -> None:
    """No Content-Length to wait for: one chunk, then silence (the terminating chunk never comes)."""
    with connect(hardened.url) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"inp\r\n")
        t0 = time.monotonic()
        assert closed_within(s, 5.0)
        assert time.monotonic() - t0 < 3.0


def test_a_chunked_body_that_trickles_forever_is_cut_off(hardened: LiveServer) -> None:
    """A byte-sized chunk every 0.1 s never stalls the body for --body-timeout (1 s here), but never ends
    either: it falls behind the minimum rate (500 bytes/s) and is closed about a second in. Meanwhile, on
    another connection, a body that keeps up is never cut, however long it takes in all."""
    answer: list[bytes] = []

    def keeps_up() -> None:  # 2.5 s in all: 10 pauses of 0.25 s
        with connect(hardened.url) as s:
            body = b'{"input": "' + b"word " * 2000 + b'"}'
            s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
            step = len(body) // 10 + 1
            for i in range(0, len(body), step):
                s.sendall(body[i : i + step])
                time.sleep(0.25)
            s.settimeout(30)
            answer.append(s.recv(4096))

    steady = threading.Thread(target=keeps_up)
    steady.start()
    with connect(hardened.url) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        s.settimeout(0.1)
        t0 = time.monotonic()
        closed = False
        while not closed and time.monotonic() - t0 < 6:
            try:
                s.sendall(b"1\r\n \r\n")
                closed = s.recv(4096) == b""
            except TimeoutError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed and time.monotonic() - t0 < 3.0, f"still open after {time.monotonic() - t0:.1f} s"
    steady.join(60)
    assert answer and answer[0].startswith(b"HTTP/1.1 200"), answer


def test_a_client_leaving_mid_body_is_counted_not_logged_as_a_bug(hardened: LiveServer,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    before = httpx.get(hardened.url + "/metrics", timeout=5).text.count('status="499"')
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            with connect(hardened.url) as s:
                s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"inp\r\n")
                time.sleep(0.1)
        time.sleep(0.5)
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged == [], logged  # was: "internal error" and "Exception in ASGI application", a traceback each
    text = httpx.get(hardened.url + "/metrics", timeout=5).text
    assert 'status="500"' not in text and text.count('status="499"') >= max(before, 1)


def test_connections_over_the_cap_get_503_and_are_closed(hardened: LiveServer) -> None:
    idle = [connect(hardened.url) for _ in range(16)]
    try:
        time.sleep(0.2)
        with connect(hardened.url) as extra:
            extra.settimeout(5)
            reply = extra.recv(4096)
            assert reply.startswith(b"HTTP/1.1 503") and b"too many connections" in reply
    finally:
        for s in idle:
            s.close()
    time.sleep(0.2)
    assert httpx.post(hardened.url + "/v1/embeddings", json={"input": "fine"}, timeout=10).status_code == 200


def test_accept_errors_are_logged_once_not_per_attempt(caplog: pytest.LogCaptureFixture) -> None:
    import errno

    server = DrainingServer(uvicorn_config(object(), ServerSettings(embedding_model="e")))
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.WARNING, logger="qwen_embed.server"):
            for _ in range(1000):
                server._quiet(loop, {"message": "socket.accept() out of system resource",
                                     "exception": OSError(errno.EMFILE, "Too many open files")})
    finally:
        loop.close()
    assert len(caplog.records) == 1 and "--max-connections" in caplog.records[0].getMessage()


# -- 7: large bodies off the event loop, huge texts cut before tokenization ------------------------------
def test_a_huge_id_list_does_not_stall_health(small_embedder: Embedder) -> None:
    body = b'{"input": [' + b",".join([b"7"] * 4_000_000) + b"]}"  # 8 MB, 4M token ids
    settings = ServerSettings(embedding_model="emb", max_length=64, max_payload_bytes=32 << 20, warmup=False)
    with LiveServer(create_app(settings, embedder=small_embedder), settings) as srv:
        worst = 0.0
        done = threading.Event()

        def probe() -> None:
            nonlocal worst
            while not done.is_set():
                t0 = time.monotonic()
                httpx.get(srv.url + "/health", timeout=30)
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.02)

        t = threading.Thread(target=probe)
        t.start()
        try:
            r = httpx.post(srv.url + "/v1/embeddings", content=body, headers={"Content-Type": "application/json"},
                           timeout=60)
            # just under the cap: parsed off the loop, validated on it in ~0.02 s (a plain union: 1.1 s)
            ok = httpx.post(srv.url + "/v1/embeddings", json={"input": [7] * 262_000}, timeout=60)
        finally:
            done.set()
            t.join(30)
    assert r.status_code == 413 and "262144 tokens per request" in r.json()["error"]["message"]
    assert ok.status_code == 200 and ok.json()["usage"]["total_tokens"] == 64
    print(f"worst /health latency: {worst:.3f} s")
    assert worst < 0.5, f"/health waited {worst:.2f} s"


def test_deep_nesting_is_400(hardened: LiveServer) -> None:
    body = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    r = httpx.post(hardened.url + "/v1/embeddings", content=body, headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 400 and "nested" in r.json()["error"]["message"]


def test_a_huge_single_text_is_cut_before_tokenization(hardened: LiveServer, small_embedder: Embedder) -> None:
    huge = "word " * 1_600_000  # 8 MB: 26 s to tokenize whole on this machine
    t0 = time.monotonic()
    r = httpx.post(hardened.url + "/v1/embeddings", json={"input": huge, "encoding_format": "float"}, timeout=60)
    assert r.status_code == 200 and time.monotonic() - t0 < 5.0
    assert r.json()["usage"]["total_tokens"] == 64
    # the cut changes nothing: equal to the library on texts it tokenizes whole (prose, a whitespace run)
    for text in ("The quick brown fox jumps over the lazy dog. " * 2000, "a" + " " * 50_000 + "b"):
        got = httpx.post(hardened.url + "/v1/embeddings", json={"input": text, "encoding_format": "float"},
                         timeout=60).json()["data"][0]["embedding"]
        assert np.abs(np.array(got) - small_embedder.encode([text])[0]).max() <= 1e-6
    refused = httpx.post(hardened.url + "/v1/embeddings", json={"input": huge, "truncate": False}, timeout=60)
    assert refused.status_code == 413 and "more than" in refused.json()["error"]["message"]


def test_tokenize_is_capped(hardened: LiveServer, small_embedder: Embedder) -> None:
    huge = "word " * 1_600_000
    t0 = time.monotonic()
    r = httpx.post(hardened.url + "/tokenize", json={"inputs": huge, "add_special_tokens": False}, timeout=60)
    assert r.status_code == 413 and "4096" in r.json()["error"]["message"] and time.monotonic() - t0 < 5.0
    r = httpx.post(hardened.url + "/tokenize", json={"inputs": huge}, timeout=60)
    assert r.status_code == 200 and len(r.json()[0]) == 64
    assert [t["id"] for t in r.json()[0]] == small_embedder.tokenize(["word " * 100])[0]


# -- 4: tokens per request, disconnect cancels -----------------------------------------------------
def test_tokens_per_request_cap_is_413_with_the_limit(hardened: LiveServer) -> None:
    texts = ["The quick brown fox jumps over the lazy dog. " * 10] * 100  # 100 x 64 = 6400 tokens > 4096
    r = httpx.post(hardened.url + "/v1/embeddings", json={"input": texts}, timeout=30)
    assert r.status_code == 413, r.text
    assert "6400 tokens, over the limit of 4096" in r.json()["error"]["message"]
    assert httpx.post(hardened.url + "/v1/embeddings", json={"input": texts[:60]}, timeout=30).status_code == 200


@pytest.mark.slow
def test_work_of_a_client_that_disconnected_is_cancelled(small_embedder: Embedder) -> None:
    emb = Embedder.from_pretrained(small_embedder.checkpoint.path, device="cpu", max_length=64, batch_tokens=64)
    settings = ServerSettings(embedding_model="emb", max_length=64, warmup=False, max_wait_ms=0)
    with LiveServer(create_app(settings, embedder=emb), settings) as srv:
        texts = [f"text {i}: " + "the quick brown fox jumps over the lazy dog " * 10 for i in range(2000)]
        with pytest.raises(httpx.ReadTimeout):  # one sequence a batch: ~10 s of work; the client leaves at 1 s
            httpx.post(srv.url + "/v1/embeddings", json={"input": texts}, timeout=httpx.Timeout(30, read=1.0))
        time.sleep(1.0)
        text = httpx.get(srv.url + "/metrics").text
        ran = metric(text, "qwen_embed_batch_inputs_sum", 'model="emb"')
        assert metric(text, "qwen_embed_queue_requests", 'model="emb"') == 0
        assert ran < 1000, f"{ran} of 2000 inputs ran after the client left"
        time.sleep(0.5)
        assert metric(httpx.get(srv.url + "/metrics").text, "qwen_embed_batch_inputs_sum", 'model="emb"') == ran
        assert 'status="499"' in httpx.get(srv.url + "/metrics").text
        assert httpx.post(srv.url + "/v1/embeddings", json={"input": "next"}, timeout=5).status_code == 200


# -- 11: metrics behind auth, names not paths; 12: HEAD, id lists counted as tokens ------------------------
def test_metrics_label_is_the_models_name_not_its_folder() -> None:
    assert metrics_label("/home/me/models/Qwen3-Embedding-0.6B") == "Qwen3-Embedding-0.6B"
    assert metrics_label("Qwen/Qwen3-Embedding-0.6B") == "Qwen/Qwen3-Embedding-0.6B"
    assert metrics_label("emb") == "emb"


def test_head_health(hardened: LiveServer) -> None:
    r = httpx.head(hardened.url + "/health", timeout=5)
    assert r.status_code == 200 and r.content == b""


def test_one_long_id_list_is_counted_as_tokens_not_inputs(hardened: LiveServer, small_embedder: Embedder) -> None:
    ids = [7] * 3000  # more ids than --max-inputs (2048): still one input
    r = httpx.post(hardened.url + "/v1/embeddings", json={"input": ids, "encoding_format": "float"}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == 64
    want = small_embedder.embed_ids([[7] * 63 + [small_embedder.tokenizer.eos_id]])[0]
    assert np.abs(np.array(r.json()["data"][0]["embedding"]) - want).max() <= 1e-6
    r = httpx.post(hardened.url + "/v1/embeddings", json={"input": ids, "truncate": False}, timeout=30)
    assert r.status_code == 413 and "input[0] has 3001 tokens" in r.json()["error"]["message"]


def test_fd_limit_is_raised_for_the_connection_cap() -> None:
    import resource

    from qwen_embed.server.serving import raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        got = raise_fd_limit(300, spare=100)
        assert got == min(400, hard) == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_dead_batch_loop_gives_503_and_health_says_why(small_embedder: Embedder,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug that kills a batch loop (here: forming a batch raises) answers the request 503 batcher_failed
    at once instead of leaving it waiting, and /health turns 503 naming the error (lasting: restart)."""
    from qwen_embed.server.batcher import Batcher

    def broken(self: Batcher) -> list[object]:
        raise RuntimeError("a bug in forming the batch")

    app = create_app(ServerSettings(embedding_model="emb"), embedder=small_embedder)
    with LiveServer(app) as srv:  # the warm-up ran outside the queue: ready
        monkeypatch.setattr(Batcher, "_take", broken)
        r = httpx.post(srv.url + "/v1/embeddings", json={"input": "hello"}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "batcher_failed", r.text
        assert "RuntimeError: a bug in forming the batch" in r.json()["error"]["message"]
        health = httpx.get(srv.url + "/health", timeout=30)
        assert health.status_code == 503 and "batch loop stopped" in health.text, health.text
        again = httpx.post(srv.url + "/v1/embeddings", json={"input": "hello"}, timeout=30)
        assert again.status_code == 503, again.text
