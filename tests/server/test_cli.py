"""`qwen-embed serve` as a process: settings from the environment, graceful SIGTERM, one-line errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from qwen_embed import Embedder
from qwen_embed.cli import main
from tests.ports import free_port
from tests.threads import subprocess_env


@pytest.mark.parametrize("placement", [["--device", "cpu"], pytest.param(["--devices", "cpu"], marks=pytest.mark.slow)],
                         ids=["in-process", "model-process"])
def test_sigterm_finishes_accepted_requests_and_exits_0(small_embedding_path: Path, small_embedder: Embedder,
                                                        placement: list[str]) -> None:
    port = free_port()
    env = subprocess_env(QWEN_EMBED_EMBEDDING_MODEL=str(small_embedding_path), QWEN_EMBED_PORT=str(port),
                         QWEN_EMBED_MAX_WAIT_MS="3000", QWEN_EMBED_LOG_LEVEL="info")
    proc = subprocess.Popen([sys.executable, "-m", "qwen_embed", "serve", "--max-length", "64", *placement],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        else:
            pytest.fail("server did not become ready")
        texts = [f"in flight {i}" for i in range(6)]
        results: dict[int, httpx.Response] = {}

        client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=16))
        start = threading.Barrier(len(texts))

        def call(i: int) -> None:
            body = {"input": [texts[i]] * 32, "model": str(small_embedding_path)}  # some work: the others arrive
            start.wait()
            results[i] = client.post(url + "/v1/embeddings", json=body)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        # labelled by the model's name, never its absolute folder
        name = re.escape(small_embedding_path.name)
        gauge = re.compile(rf'^qwen_embed_queue_requests{{model="{name}"}} (\S+)$', re.M)
        answered = re.compile(r'^qwen_embed_requests_total{route="/v1/embeddings",status="200"} (\S+)$', re.M)

        def counts() -> tuple[float, float]:
            text = httpx.get(url + "/metrics", timeout=5).text
            q, a = gauge.search(text), answered.search(text)
            return (float(q.group(1)) if q else 0.0), (float(a.group(1)) if a else 0.0)

        # every request accepted, at least one still waiting in the window (a lone request runs at once, so
        # the first may be answered already): SIGTERM must let the waiting ones finish
        wait_until = time.monotonic() + 60
        while True:
            queued, done = counts()
            if queued >= 1 and queued + done >= len(texts):
                break
            assert done < len(texts), "every request was answered before any waited in the window"
            assert time.monotonic() < wait_until, (queued, done)
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        out, _ = proc.communicate(timeout=60)
        client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "Shutting down" in out
    assert sorted(results) == list(range(len(texts)))
    for i, r in results.items():
        assert r.status_code == 200, r.text
        got = np.array(r.json()["data"][0]["embedding"], dtype=np.float32)
        assert np.abs(got - small_embedder.encode([texts[i]])[0]).max() <= 1e-5
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)


def test_user_mistakes_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("QWEN_EMBED_") and name != "QWEN_EMBED_SHARED_DATA":
            monkeypatch.delenv(name)
    assert main(["serve"]) == 2
    assert "nothing to serve" in capsys.readouterr().err
    assert main(["serve", "--embedding-model", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    monkeypatch.setenv("QWEN_EMBED_MAX_QUEUE", "lots")
    assert main(["serve", "--embedding-model", "x"]) == 2
    assert "QWEN_EMBED_MAX_QUEUE='lots'" in capsys.readouterr().err
    monkeypatch.delenv("QWEN_EMBED_MAX_QUEUE")
    assert main(["serve", "--reranker-model", "x", "--reranker-template", "nope"]) == 2
    assert "unknown reranker template 'nope'" in capsys.readouterr().err
    assert main(["serve", "--embedding-model", "x", "--devices", "gpu0"]) == 2
    assert "--devices: 'gpu0' is not a device" in capsys.readouterr().err
    assert main(["serve", "--embedding-model", "x", "--devices", "cpu", "--device", "cpu"]) == 2
    assert "both given" in capsys.readouterr().err


def start_server(path: Path, *flags: str) -> tuple[subprocess.Popen[str], str]:
    """`qwen-embed serve` on a free loopback port; returns the process and its URL once /health is 200."""
    port = free_port()
    env = {**os.environ, "QWEN_EMBED_PORT": str(port), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "qwen_embed", "serve", "--embedding-model", str(path),
                             "--embedding-name", "emb", "--device", "cpu", "--max-length", "64", *flags],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            if proc.poll() is not None:
                pytest.fail(proc.communicate()[0])
        time.sleep(0.1)
    proc.kill()
    pytest.fail("server did not become ready")


@pytest.mark.slow
def test_drain_ends_within_the_graceful_timeout_answering_503(small_embedding_path: Path) -> None:
    """Issue 23.3: a request of 2,048 sequences of 256 tokens, one per batch (~15 s of model work here, several
    seconds on a fast machine), SIGTERM 0.7 s in, --graceful-timeout 1: the client gets 503 and the process
    exits 0, both within the bounds."""
    proc, url = start_server(small_embedding_path, "--max-batch-tokens", "256", "--max-wait-ms", "0",
                             "--graceful-timeout", "1", "--max-request-tokens", "1000000", "--max-length", "256")
    try:
        texts = [f"text {i}: " + "the quick brown fox jumps over the lazy dog " * 40 for i in range(2048)]
        result: dict[str, httpx.Response] = {}
        t = threading.Thread(target=lambda: result.update(r=httpx.post(url + "/v1/embeddings",
                                                                       json={"input": texts}, timeout=60)))
        t.start()
        time.sleep(0.7)
        assert t.is_alive(), "the request ended before SIGTERM: make it longer"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        t.join(10)
        answered = time.monotonic() - t0
        out, _ = proc.communicate(timeout=10)
        exited = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = result["r"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down", (r.text, out[-3000:])
    assert answered <= 3.0 and exited <= 4.5, (answered, exited)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


@pytest.mark.slow
def test_sigterm_under_keep_alive_load_drops_no_request(small_embedding_path: Path) -> None:
    """Issue 23.12: 8 keep-alive clients in a loop, SIGTERM mid-load: every request sent gets a response
    (200, or 503 while draining); only new connections after the listener closed are refused."""
    proc, url = start_server(small_embedding_path, "--graceful-timeout", "5")
    outcomes: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=20) as c:
            while not stop.is_set():
                try:
                    outcomes.append(str(c.post(url + "/v1/embeddings", json={"input": ["keep", "alive"]}).status_code))
                except httpx.ConnectError:
                    outcomes.append("refused")  # never sent: the listener is closed
                    time.sleep(0.05)
                except httpx.TransportError as e:
                    outcomes.append(f"dropped: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    dropped = [o for o in outcomes if o.startswith("dropped")]
    assert not dropped, dropped[:3]
    assert outcomes.count("200") > 10 and set(outcomes) <= {"200", "503", "refused"}
    assert proc.returncode == 0, out
