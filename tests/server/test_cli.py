"""`qwen-embed serve` as a process: settings from the environment, graceful SIGTERM, one-line errors."""

from __future__ import annotations

import os
import signal
import socket
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
from tests.threads import subprocess_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_sigterm_finishes_accepted_requests_and_exits_0(small_embedding_path: Path, small_embedder: Embedder) -> None:
    port = free_port()
    env = subprocess_env(QWEN_EMBED_EMBEDDING_MODEL=str(small_embedding_path), QWEN_EMBED_PORT=str(port),
                         QWEN_EMBED_MAX_WAIT_MS="3000", QWEN_EMBED_LOG_LEVEL="info")
    proc = subprocess.Popen([sys.executable, "-m", "qwen_embed", "serve", "--max-length", "64", "--device", "cpu"],
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

        def call(i: int) -> None:
            body = {"input": texts[i], "model": str(small_embedding_path)}
            results[i] = client.post(url + "/v1/embeddings", json=body)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(texts))]
        for t in threads:
            t.start()
        queued = f'qwen_embed_queue_requests{{model="{small_embedding_path}"}} {len(texts)}.0'
        while queued not in httpx.get(url + "/metrics", timeout=5).text:  # all accepted, waiting in the window
            assert time.monotonic() < deadline
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
