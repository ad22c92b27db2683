"""A model in a process of its own, behind the batcher's `run` (the first step of issue 16).

`ModelProcess(spec)` is a `RunFn`: calling it with token-id sequences sends them over a pipe to a
child process that owns the model (loaded from `spec`: an `Embedder` or a `Reranker`) and returns its
rows, so the forward pass and its launch work no longer share the HTTP process's GIL. The batcher
calls it from its worker thread, as it calls an in-process model; nothing else changes.

Faults: if the child dies (killed, out of memory, a crash in a kernel), the call waiting on it raises
`ModelProcessDied` at once (the HTTP layer answers 503; every request of that batch gets it, none is
answered twice), `ready` turns false (so /health can say not ready), and a new child is started in
the background; calls made while it loads raise `ModelProcessDied` too, without waiting. A model
error that the child survives is sent back and raised as `ModelError`.

The wire format is plain: sequences as one flat int64 array plus their lengths, rows as a float32
array (pickle protocol 5 moves numpy buffers without copies through a `multiprocessing` pipe). The
child is forked from the fork server of processes.py, so it never inherits the parent's threads, CUDA
state or sockets, and a restart does not import torch again.

`serve --workers N` goes further (model_server.py, supervisor.py): several HTTP worker processes, and the
batcher in the model process, merging every worker's requests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, Literal

import numpy as np

from ..errors import QwenEmbedError
from ..processes import child_context, exit_text

POLL_S = 0.05


class ModelProcessDied(QwenEmbedError):
    """The model's process is gone (or restarting); the request may be retried shortly."""


class ModelError(QwenEmbedError):
    """The model raised while running a batch (the process lives on)."""


@dataclass(frozen=True)
class ModelSpec:
    """How the child loads its model (the arguments of `Embedder` / `Reranker.from_pretrained`)."""

    kind: Literal["embedding", "reranker"]
    path: str
    device: str | None = None
    dtype: str | None = None
    max_length: int = 8192
    batch_tokens: int | None = None
    compile: bool | None = None
    template: str = "card"
    threads: int | None = None  # torch threads in the child (None: the default of threads.py, as follows)
    thread_share: int = 1  # CPU model processes sharing the cores: with threads None, each takes its share


def pack(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Sequences -> (flat ids int64 [T], lengths int64 [n])."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def unpack(flat: np.ndarray, lengths: np.ndarray) -> list[Sequence[int]]:
    """The inverse of `pack`."""
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    ids = flat.tolist()
    return [ids[a:b] for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)]


def child_main(spec: ModelSpec, conn: Connection) -> None:
    """The child: load the model, say "ready" (or the one-line load error), then answer ("ok", rows) or
    ("error", message) per batch until EOF.

    It ignores SIGINT / SIGTERM (a Ctrl-C reaches the whole process group): the parent drains its
    requests first, then ends the child by closing the pipe."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    from .model_server import load_model  # the loader of `serve --workers`' model processes (imports this module)

    try:
        run, _ = load_model(spec, deterministic=False)
    except QwenEmbedError as e:  # a bad checkpoint: one line for the parent to report, no traceback
        conn.send(("load_error", str(e)))
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        try:
            out: Any = ("ok", run(unpack(*message)))
        except Exception as e:  # reported to the caller; the process serves on
            out = ("error", f"{type(e).__name__}: {e}")
        conn.send(out)


class ModelProcess:
    """A `RunFn` whose model runs in a child process (module docstring); `close` ends it."""

    def __init__(self, spec: ModelSpec, start_timeout: float = 300.0) -> None:
        self.spec = spec
        self.start_timeout = start_timeout
        self.restarts = 0
        self._ctx = child_context()
        self._lock = threading.Lock()  # one batch at a time on the pipe
        self._proc: Any = None
        self._conn: Connection | None = None
        self._ready = threading.Event()
        self._closed = False
        self._restarting: threading.Thread | None = None
        self._loading: Any = None
        self._start()

    @property
    def ready(self) -> bool:
        """True while a child is loaded and serving."""
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else int(self._proc.pid)

    def _start(self) -> None:
        """Start a child and wait until its model is loaded (ModelProcessDied if it dies or times out)."""
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=child_main, args=(self.spec, child), daemon=True,
                                 name=f"qwen-embed-model-{self.spec.kind}")
        proc.start()
        child.close()
        self._loading = proc
        deadline = time.monotonic() + self.start_timeout
        while not parent.poll(POLL_S):
            if self._closed:
                proc.kill()
                raise ModelProcessDied("closed while loading")
            if not proc.is_alive():
                raise ModelProcessDied(f"the model process for {self.spec.path} {exit_text(proc.exitcode)} "
                                       "while loading; see its log above.")
            if time.monotonic() > deadline:
                proc.kill()
                raise ModelProcessDied(f"the model process for {self.spec.path} did not load within "
                                       f"{self.start_timeout:.0f} s.")
        try:
            status, detail = parent.recv()
        except EOFError:
            status, detail = "gone", None
        if status == "load_error":
            proc.join(5.0)
            raise ModelProcessDied(f"the model process for {self.spec.path} could not load it: {detail}")
        if status != "ready":
            proc.join(2.0)
            raise ModelProcessDied(f"the model process for {self.spec.path} {exit_text(proc.exitcode)} "
                                   "while loading; see its log above.")
        self._proc, self._conn = proc, parent
        self._ready.set()

    def _restart_in_background(self) -> None:
        if self._closed or (self._restarting is not None and self._restarting.is_alive()):
            return

        def restart() -> None:
            while not self._closed:
                try:
                    self._start()
                    self.restarts += 1
                    return
                except ModelProcessDied:
                    time.sleep(1.0)

        self._restarting = threading.Thread(target=restart, name="model-restart", daemon=True)
        self._restarting.start()

    def _died(self, during: str) -> ModelProcessDied:
        self._ready.clear()
        code = None
        if self._proc is not None:
            self._proc.join(2.0)  # reap it, for its exit code (a pipe may close a moment before)
            code = self._proc.exitcode
        self._restart_in_background()
        how = "died" if code is None else exit_text(code)
        return ModelProcessDied(f"the model process for {self.spec.path} {how} {during}; it is being restarted: "
                                "retry shortly.")

    def __call__(self, seqs: list[Sequence[int]]) -> np.ndarray:
        """Run one batch in the child; rows [n, ...] as the in-process model gives them."""
        with self._lock:
            if not self._ready.is_set():
                raise ModelProcessDied(f"the model process for {self.spec.path} is restarting; retry shortly.")
            conn, proc = self._conn, self._proc
            assert conn is not None
            try:
                conn.send(pack(seqs))
                while not conn.poll(POLL_S):
                    if not proc.is_alive():
                        raise self._died("while running this batch")
                status, value = conn.recv()
            except (EOFError, BrokenPipeError, ConnectionResetError) as e:
                raise self._died("while running this batch") from e
        if status == "error":
            raise ModelError(f"the model failed on this batch: {value}")
        return np.asarray(value)

    def close(self, timeout: float = 10.0) -> None:
        """Ask the child to exit; kill it after `timeout` seconds (and one still loading at once)."""
        self._closed = True
        self._ready.clear()
        if self._restarting is not None:
            self._restarting.join(timeout)
        if self._conn is not None:
            with contextlib.suppress(OSError):  # already gone
                self._conn.send(None)
        if self._proc is not None:
            self._proc.join(timeout)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout)
