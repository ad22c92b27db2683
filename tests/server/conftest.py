"""Server fixtures: a live uvicorn on 127.0.0.1 around the small models of tests/conftest.py.

`LiveServer(app)` runs uvicorn in a thread on a free loopback port (a real socket, so the official
openai client and concurrent httpx clients go through HTTP) and waits for /health to say ready.
`LiveServer(app, settings)` runs it as `qwen-embed serve` does (serving.py: connection limits, drain).
`WorkersServer(args)` runs `serve --workers` (supervisor, HTTP workers, model processes) as a process of
its own, logging to a file (the pids of its children are in it).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from qwen_embed import Embedder, Reranker
from qwen_embed.server import ServerSettings, create_app
from qwen_embed.server.serving import DrainingServer, uvicorn_config
from tests.ports import free_port
from tests.procs import alive as alive  # for the server tests
from tests.threads import subprocess_env


class LiveServer:
    """uvicorn serving `app` in a background thread; `url` is its base address."""

    def __init__(self, app: FastAPI, settings: ServerSettings | None = None, *, ready: bool = True) -> None:
        """`ready=False`: entering waits for the port only, not for /health to say ready."""
        self.app = app
        self.wait_ready = ready
        # proto TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP; without it every response
        # written in two parts waits ~40 ms for the client's delayed ACK (as in server/supervisor.py)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        if settings is None:
            self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        else:
            self.server = DrainingServer(uvicorn_config(app, settings.with_overrides(log_level="warning")),
                                         on_drain=app.state.qe.begin_drain)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.started and not self.wait_ready:
                return self
            if self.server.started:
                try:
                    if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        raise TimeoutError("the test server did not become ready in 60 s")

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()


# `serve --workers` with per-model max lengths (the CLI has one --max-length): the supervisor itself
SUPERVISOR = """
import gc, json, logging, sys
from qwen_embed.server import ServerSettings
from qwen_embed.server.supervisor import Supervisor
settings, devices, max_lengths = json.loads(sys.argv[1])
logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
code = Supervisor(ServerSettings(**settings), devices, max_lengths).run()
gc.freeze()  # as `qwen-embed serve` does: skip the last garbage collection of a process that is ending
sys.exit(code)
"""


class WorkersServer:
    """`serve --workers` in a process of its own: `cli` arguments to `qwen-embed serve`, or `settings`
    (ServerSettings fields) with `devices` and `max_lengths` for the supervisor; `url`, `log`, `pids`."""

    def __init__(self, log: Path, cli: list[str] | None = None, settings: dict[str, object] | None = None,
                 devices: list[str] | None = None, max_lengths: dict[str, int] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        if cli is not None:
            self.cmd = [sys.executable, "-m", "qwen_embed", "serve", *cli, "--port", str(self.port),
                        "--log-level", "info"]
        else:
            self.cmd = [sys.executable, "-c", SUPERVISOR,
                        json.dumps([{**(settings or {}), "port": self.port}, devices or ["cpu"], max_lengths or {}])]
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkersServer:
        """Start it; return once every HTTP worker serves (the supervisor's "serving on" line). /health is
        200 as soon as one worker does: a test that then kills or floods the other, still warming up, finds
        a start that has not finished (a worker killed then ended the server; a warm-up stalled)."""
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=subprocess_env())
        self.wait_for(lambda: "serving on http://" in self.log.read_text(), 180, "serving", 0.05)
        self.wait_ready(60)
        return self

    def wait_ready(self, seconds: float) -> float:
        """Until /health is 200 (seconds waited); TimeoutError after `seconds`."""
        def healthy() -> bool:
            try:
                return httpx.get(self.url + "/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        return self.wait_for(healthy, seconds, "ready", 0.1)

    def wait_for(self, done: Callable[[], bool], seconds: float, what: str, poll: float) -> float:
        """Until `done()` (seconds waited); RuntimeError with the log if the server exits first, TimeoutError
        after `seconds`."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve --workers exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if done():
                return time.monotonic() - t0
            time.sleep(poll)
        raise TimeoutError(f"serve --workers not {what} in {seconds} s:\n{self.log.read_text()}")

    def pids(self, what: str) -> dict[int, int]:
        """{index: pid} of the latest `worker`s or `model` processes, from the log."""
        pattern = r"HTTP worker (\d+) started: pid (\d+)" if what == "worker" else \
            r"model process (\d+) \(.*?\) started: pid (\d+)"
        return {int(i): int(p) for i, p in re.findall(pattern, self.log.read_text())}

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM the supervisor; its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        assert self.proc is not None
        try:
            self.terminate()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def workers_server(small_embedding_path: Path, small_reranker_path: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkersServer]:
    """`serve --workers 2` over both small models (one model process each, on the CPU), the limits and
    names of the `live` fixture; started once per session."""
    settings = {"embedding_model": str(small_embedding_path), "reranker_model": str(small_reranker_path),
                "embedding_name": "emb", "reranker_name": "rr", "max_wait_ms": 10, "max_length": 64,
                "workers": 2, "tokenization_workers": 1,
                # one model process merges both workers' requests into batches that would pass the CPU default
                # of 8192 tokens; a request cut between two batches counts in both (qwen_embed_batch_requests),
                # which test_load's exact count of merged requests does not expect
                "max_batch_tokens": 65536}
    log = tmp_path_factory.mktemp("workers") / "serve.log"
    with WorkersServer(log, settings=settings, devices=["cpu"], max_lengths={"reranker": 256}) as srv:
        yield srv


@pytest.fixture(scope="session", params=["in-process", pytest.param("model-processes", marks=pytest.mark.slow),
                                        pytest.param("workers", marks=pytest.mark.slow)])
def live(request: pytest.FixtureRequest, small_embedder: Embedder, small_reranker: Reranker,
         small_embedding_path: Path, small_reranker_path: Path) -> Iterator[LiveServer | WorkersServer]:
    """Both models, default limits, a 10 ms batching window; the models in this process, or (slow) in
    model processes, two per model (`--devices cpu,cpu`), or (slow) `serve --workers 2` (the session's
    `workers_server`), answered under the names the in-process variant uses. One server of each variant
    per test session (per pytest worker), shared by the modules that take it: starting the model
    processes costs seconds each time."""
    if request.param == "workers":
        yield request.getfixturevalue("workers_server")
        return
    if request.param == "in-process":
        settings = ServerSettings(embedding_model="emb", reranker_model="rr", max_wait_ms=10, max_length=64)
        app = create_app(settings, embedder=small_embedder, reranker=small_reranker)
    else:
        settings = ServerSettings(embedding_model=str(small_embedding_path), reranker_model=str(small_reranker_path),
                                  embedding_name="emb", reranker_name="rr", max_wait_ms=10, max_length=64)
        app = create_app(settings, devices=["cpu", "cpu"], max_lengths={"reranker": 256})
    with LiveServer(app) as srv:
        yield srv
