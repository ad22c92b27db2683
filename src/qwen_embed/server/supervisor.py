"""`serve --workers N`: the supervisor process, its HTTP workers and its model processes.

```
                      clients
                         |  one listening socket, bound by the supervisor, shared by the workers
        +----------------+----------------+
        v                v                v
   HTTP worker 0    HTTP worker 1   ... worker N-1     parse, validate, auth, admission (429), tokenize,
        |  \\            /  |                            finish vectors, encode responses; /metrics merges
        |   \\----------/---|---- Board (shared memory): requests and tokens admitted per worker,
        |  token ids (Unix socket, flat int32 frames)       model processes' ready / generation / load
        v                  v
   model process (cuda:0)   model process (cuda:1)      one per device and model: the Batcher merges
   Batcher -> model thread  Batcher -> model thread     every worker's requests into token-budget batches
```

The supervisor loads nothing. It checks each model folder (config and tokenizer; a bad path fails here
with one line), starts the model processes (model_server.py) and waits until each has loaded and warmed up,
binds the port, then starts the workers (worker_main), each running the app of `create_worker_app`
under uvicorn on the shared socket, and waits until each serves (one that exits first ends it all: a
replacement would fail the same way). Then it watches them: a model process that dies is started again
(the workers answer its requests in flight 503 at once, and /health is 503 while no process of a model
is up); a worker that dies is replaced (its open connections are lost; the others are unaffected). All
children are forked from the fork server of processes.py (torch is imported once, not per child): no
inherited threads, CUDA state or sockets other than the listener. PROMETHEUS_MULTIPROC_DIR is set before
the first child starts, so that every child sees it.

SIGTERM (or Ctrl-C): the supervisor closes its copy of the listener and sends SIGTERM to the workers,
which drain as a single-process server does (serving.py) within --graceful-timeout minus one second;
then it ends the model processes and exits 0 (130 after Ctrl-C). Metrics: every process records into
files in one folder, merged on read (metrics.py); the folder and the model processes' sockets live in a
temporary folder that the supervisor makes and removes.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from ..errors import QwenEmbedError
from ..processes import child_context, exit_text, exit_with_parent, killed_from_outside, lifeline
from ..settings import device_type
from .board import MODELS, Board
from .facts import ModelFacts
from .metrics import metrics_label
from .model_process import ModelSpec
from .model_server import ModelServerConfig, model_server_main
from .remote import ModelPlan
from .settings import ServerSettings

log = logging.getLogger("qwen_embed.server")
WATCH_S = 0.1
RESTART_GAP_S = 1.0  # a child that keeps dying is started again at most once a second
MODEL_STOP_S = 3.0
BACKLOG = 2048


def plan_models(settings: ServerSettings, devices: Sequence[str],
                max_lengths: Mapping[str, int] | None = None) -> list[tuple[ModelPlan, ModelSpec]]:
    """Each served model: what the workers need (`ModelPlan`) and how its processes load it (`ModelSpec`),
    one board slot per device. Reads the folders' configs and tokenizers (a bad one fails here).
    `max_lengths` ({"reranker": 256}) gives a model a max length other than settings.max_length."""
    cpus = sum(device_type(d) == "cpu" for d in devices)
    served = [(k, m) for k, m in (("embedding", settings.embedding_model), ("reranker", settings.reranker_model)) if m]
    out = []
    slot = 0
    for kind, model in served:
        assert model is not None
        facts = ModelFacts.from_folder(model, list(devices), settings.dtype,
                                       (max_lengths or {}).get(kind, settings.max_length), settings.max_batch_tokens)
        name = (settings.embedding_name if kind == "embedding" else settings.reranker_name) or model
        spec = ModelSpec(kind, str(facts.path), dtype=settings.dtype, max_length=facts.max_length,  # type: ignore[arg-type]
                         batch_tokens=facts.batch_tokens, compile=settings.compile,
                         template=settings.reranker_template, threads=settings.threads,
                         thread_share=max(1, cpus * len(served)))
        plan = ModelPlan(kind, MODELS.index(kind), str(facts.path), name, metrics_label(name), tuple(devices),
                         tuple(range(slot, slot + len(devices))), facts.max_length, facts.batch_tokens,
                         settings.dtype)
        slot += len(devices)
        out.append((plan, spec))
    return out


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket (bound once here, shared by every worker)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP (else Nagle + delayed ACK
    # add ~40 ms to each answer on a kept-alive connection)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise QwenEmbedError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host.") from None
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def worker_main(settings: ServerSettings, models: Sequence[ModelPlan], board: Board, index: int, addresses: str,
                metrics_dir: str, sock: socket.socket, lifeline_end: Connection) -> None:
    """An HTTP worker: the app of `create_worker_app` under uvicorn on the shared socket, until SIGTERM
    (sent to itself too once its supervisor is gone: `lifeline`, processes.py)."""
    from .app import create_worker_app  # here, not at the top: the supervisor itself never builds an app
    from .serving import serve_app

    logging.basicConfig(level=settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {index}]: %(message)s")
    exit_with_parent(lifeline_end)  # no drain: the model processes go with the supervisor too
    app = create_worker_app(settings, models, board, index, addresses, metrics_dir)
    serve_app(app, settings, sockets=[sock])


class Supervisor:
    """Starts, watches, restarts and stops the processes of `serve --workers N` (module docstring)."""

    def __init__(self, settings: ServerSettings, devices: Sequence[str],
                 max_lengths: Mapping[str, int] | None = None) -> None:
        if not settings.embedding_model and not settings.reranker_model:
            raise QwenEmbedError("serve --workers needs --embedding-model, --reranker-model or both.")
        self.settings = settings
        self.plans = plan_models(settings, devices, max_lengths)
        # each worker drains within the timeout less one second, so that the model processes end in time;
        # each takes its share of the connections
        self.worker_settings = settings.with_overrides(
            graceful_timeout=max(1, settings.graceful_timeout - 1),
            max_connections=max(1, math.ceil(settings.max_connections / settings.workers)))
        self.ctx = child_context()
        # the children stop once this process is gone, however it ends; it holds its own end until then
        self.lifeline_end, self._own_lifeline_end = lifeline(self.ctx)
        self.slots = [(plan, spec, d) for plan, spec in self.plans for d in plan.devices]
        self.board = Board.create(self.ctx, settings.workers, len(self.slots))
        self.tmp = ""
        self.metrics_dir = ""
        self.addresses = ""
        self.models: list[Any] = [None] * len(self.slots)
        self.load_errors: list[Any] = [None] * len(self.slots)  # each model process's one-line load error
        self.workers: list[Any] = [None] * settings.workers
        self.started_at: dict[tuple[str, int], float] = {}
        self.signal: int | None = None
        self.sock: socket.socket | None = None

    # -- children ----------------------------------------------------------------------------------
    def start_model(self, slot: int) -> None:
        """Start the model process of `slot` (a new generation; it sets ready itself once warm)."""
        plan, spec, device = self.slots[slot]
        self.board.set_ready(slot, False)
        generation = self.board.next_generation(slot)
        s = self.settings
        config = ModelServerConfig(ModelSpec(**{**spec.__dict__, "device": device}), plan.label, plan.model, slot,
                                   generation, self.addresses.format(slot, generation), s.max_batch_requests,
                                   s.max_wait_ms / 1000.0, s.inflight_batches, s.warmup, s.deterministic)
        errors, child_errors = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=model_server_main, args=(config, self.board, child_errors, self.lifeline_end),
                                name=f"qwen-embed-model-{slot}")
        proc.start()
        child_errors.close()
        if self.load_errors[slot] is not None:  # the previous generation's pipe: read (reap) or never written
            self.load_errors[slot].close()
        self.load_errors[slot] = errors
        log.info("model process %d (%s, %s) started: pid %d", slot, plan.name, device, proc.pid)
        self.models[slot] = proc
        self.started_at[("model", slot)] = time.monotonic()

    def start_worker(self, index: int) -> None:
        """Start HTTP worker `index` on the shared socket."""
        models = [plan for plan, _ in self.plans]
        proc = self.ctx.Process(target=worker_main, name=f"qwen-embed-http-{index}",
                                args=(self.worker_settings, models, self.board, index, self.addresses,
                                      self.metrics_dir, self.sock, self.lifeline_end))
        proc.start()
        log.info("HTTP worker %d started: pid %d", index, proc.pid)
        self.workers[index] = proc
        self.started_at[("worker", index)] = time.monotonic()

    def wait_models(self) -> None:
        """Until every model process is ready (QwenEmbedError when one exits first, as a load error does)."""
        while not all(self.board.ready(i) for i in range(len(self.slots))):
            if self.signal is not None:
                raise KeyboardInterrupt
            for slot, proc in enumerate(self.models):
                if not proc.is_alive():
                    plan, _, device = self.slots[slot]
                    why = self.load_error(slot)
                    if why is not None:
                        raise QwenEmbedError(f"the model process for {plan.path} on {device} could not load it: "
                                             f"{why}")
                    raise QwenEmbedError(f"the model process for {plan.path} on {device} {exit_text(proc.exitcode)} "
                                         "while loading; see its log above.")
            time.sleep(WATCH_S)

    def wait_workers(self) -> None:
        """Until every HTTP worker serves. A worker that exits while starting ends the server (QwenEmbedError:
        its app could not start, e.g. a bad --ranges file, and a replacement would fail the same way), unless
        something outside killed it (`killed_from_outside`: the OOM killer, an operator), which is no reason
        to stop: it is started again, as later. So is a model process that dies meanwhile: a worker's warm-up
        waits for it."""
        while not all(self.board.serving(i) for i in range(len(self.workers))):
            if self.signal is not None:
                raise KeyboardInterrupt
            for index, proc in enumerate(self.workers):
                if not proc.is_alive() and not killed_from_outside(proc.exitcode):
                    raise QwenEmbedError(f"HTTP worker {index} {exit_text(proc.exitcode)} while starting; see its "
                                         "log above.")
            self.reap_models()
            self.reap_workers()
            time.sleep(WATCH_S)

    def load_error(self, slot: int) -> str | None:
        """The one-line error the model process of `slot` sent when it could not load its model, if any."""
        conn = self.load_errors[slot]
        try:
            return str(conn.recv()) if conn is not None and conn.poll() else None
        except (EOFError, OSError):
            return None

    def reap(self) -> None:
        """Start again each child that died (at most once a second per child)."""
        self.reap_models()
        self.reap_workers()

    def reap_workers(self) -> None:
        """Start again each HTTP worker that died (at most once a second per worker)."""
        from prometheus_client.multiprocess import mark_process_dead

        now = time.monotonic()
        for index, proc in enumerate(self.workers):
            if not proc.is_alive() and now - self.started_at[("worker", index)] >= RESTART_GAP_S:
                mark_process_dead(proc.pid, self.metrics_dir)
                self.board.clear_worker(index)
                log.warning("HTTP worker %d %s; starting it again", index, exit_text(proc.exitcode))
                self.start_worker(index)

    def reap_models(self) -> None:
        """Start again each model process that died (at most once a second per process)."""
        from prometheus_client.multiprocess import mark_process_dead

        now = time.monotonic()
        for slot, proc in enumerate(self.models):
            if not proc.is_alive() and now - self.started_at[("model", slot)] >= RESTART_GAP_S:
                self.board.set_ready(slot, False)
                mark_process_dead(proc.pid, self.metrics_dir)
                why = self.load_error(slot)
                log.warning("model process %d (%s) %s%s; starting it again", slot, self.slots[slot][2],
                            exit_text(proc.exitcode), f" (could not load: {why})" if why else "")
                self.start_model(slot)

    # -- the whole ---------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM / Ctrl-C; 0 after SIGTERM, 130 after Ctrl-C."""
        def on_signal(signum: int, frame: Any) -> None:
            self.signal = signum

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.tmp = tempfile.mkdtemp(prefix="qwen-embed-serve-")
        self.metrics_dir = os.path.join(self.tmp, "metrics")
        os.mkdir(self.metrics_dir)
        self.addresses = os.path.join(self.tmp, "model-{}-{}.sock")
        user_metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")  # given back as it was at the end
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir  # read by prometheus_client in the children
        try:
            for slot in range(len(self.slots)):
                self.start_model(slot)
            try:
                self.wait_models()
            except KeyboardInterrupt:
                return 130 if self.signal == signal.SIGINT else 0
            self.sock = listen(self.settings.host, self.settings.port)
            for index in range(self.settings.workers):
                self.start_worker(index)
            try:
                self.wait_workers()
            except KeyboardInterrupt:
                self.drain()
                return 130 if self.signal == signal.SIGINT else 0
            host, port = self.sock.getsockname()[:2]
            log.info("serving on http://%s:%d: %d HTTP workers, %d model processes (%s)", host, port,
                     self.settings.workers, len(self.slots), ", ".join(d for _, _, d in self.slots))
            while self.signal is None:
                time.sleep(WATCH_S)
                self.reap()
            t0 = time.monotonic()
            self.drain()
            log.info("HTTP workers drained in %.1f s", time.monotonic() - t0)
            return 130 if self.signal == signal.SIGINT else 0
        finally:
            self.stop_all()
            for s, handler in previous.items():
                signal.signal(s, handler)
            if user_metrics_dir is None:
                os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            else:
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = user_metrics_dir
            shutil.rmtree(self.tmp, ignore_errors=True)

    def drain(self) -> None:
        """Close the listener, let the workers drain (SIGTERM), wait for them within --graceful-timeout."""
        if self.sock is not None:
            self.sock.close()
        for proc in self.workers:
            if proc is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.graceful_timeout - 0.5
        for proc in self.workers:
            if proc is not None:
                proc.join(max(0.0, deadline - time.monotonic()))

    def stop_all(self) -> None:
        """End every child still running: workers (killed: their drain time is over), then model processes
        (SIGTERM, killed after MODEL_STOP_S)."""
        for proc in self.workers:
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join(2.0)
        for proc in self.models:
            if proc is not None and proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + MODEL_STOP_S
        for proc in self.models:
            if proc is not None:
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    log.warning("model process %s did not exit on SIGTERM within %.0f s; killed", proc.pid,
                                MODEL_STOP_S)
                    proc.kill()
                    proc.join(2.0)
        if self.sock is not None:
            self.sock.close()
        log.info("all processes ended")
