"""serving.py's drain linger: kept-alive connections get a moment after SIGTERM, an idle server none."""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator

import pytest

from qwen_embed import Embedder
from qwen_embed.server import ServerSettings, create_app, serving

from .conftest import LiveServer

LINGER_S = 30.0  # far above any stop, so that a stop that waited for it shows


@pytest.fixture
def draining(small_embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    """The app under `DrainingServer` (as `qwen-embed serve` runs it) with a 30 s linger."""
    monkeypatch.setattr(serving, "LINGER_S", LINGER_S)
    settings = ServerSettings(embedding_model="emb", max_length=64, graceful_timeout=60, warmup=False)
    with LiveServer(create_app(settings, embedder=small_embedder), settings) as srv:
        yield srv


def request(sock: socket.socket) -> bytes:
    """One kept-alive POST /v1/embeddings on `sock` -> the response head and body as read."""
    body = b'{"input": "hello"}'
    sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _length(data: bytes) -> int:
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower()
    return next(int(line.split(":")[1]) for line in head.split("\r\n") if line.startswith("content-length:"))


def stop(srv: LiveServer) -> None:
    srv.server.handle_exit(signal.SIGTERM, None)


def test_an_idle_server_stops_without_lingering(draining: LiveServer) -> None:
    host, port = draining.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        assert request(s).startswith(b"HTTP/1.1 200")
    time.sleep(0.2)  # the server has seen the close
    t0 = time.monotonic()
    stop(draining)
    draining.thread.join(LINGER_S)
    assert not draining.thread.is_alive() and time.monotonic() - t0 < LINGER_S / 3, time.monotonic() - t0


def test_a_kept_alive_connection_is_answered_during_the_linger_which_ends_when_it_closes(
        draining: LiveServer) -> None:
    host, port = draining.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        assert request(s).startswith(b"HTTP/1.1 200")
        stop(draining)
        time.sleep(1.0)
        assert draining.thread.is_alive()  # lingering for the open connection
        again = request(s)  # a request on its way on the kept-alive connection: answered, told to close
        assert again.startswith(b"HTTP/1.1 503") and b"connection: close" in again.lower(), again[:300]
        t0 = time.monotonic()
    draining.thread.join(LINGER_S)
    assert not draining.thread.is_alive() and time.monotonic() - t0 < LINGER_S / 3, time.monotonic() - t0
