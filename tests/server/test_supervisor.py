"""The supervisor of `serve --workers N` (server/supervisor.py), in this process: its children are `Child`ren of a
`FakeContext`, each a real `sleep` process (so that signals, exit codes and joins are real) that says on the
board what the real one would once started (a model process: ready; an HTTP worker: serving). Against the
module docstring: each model planned per device on its own board slots, from its folder (a bad one fails in one
line); the listener bound once (a busy port is one line, nothing leaked); the model processes started and
loaded before the workers, a load error ending it in one line; a child that dies started again (at most once a
second), a dead worker's counts forgotten and the live gauges of a dead process dropped; SIGTERM drains the
workers and ends the model processes, 0 (130 after Ctrl-C); everything it made (temporary folder, environment
variable, signal handlers, listener) put back. Real children and real models: tests/server/test_workers.py.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qwen_embed.errors import QwenEmbedError
from qwen_embed.server import ServerSettings, supervisor
from qwen_embed.server.metrics import metrics_label
from qwen_embed.server.model_process import ModelSpec
from qwen_embed.server.model_server import ModelServerConfig, model_server_main
from qwen_embed.server.supervisor import Supervisor, listen, plan_models, worker_main
from qwen_embed.settings import default_batch_tokens


class Child:
    """A multiprocessing.Process as the supervisor uses it, backed by a `sleep` process."""

    def __init__(self, ctx: FakeContext, target: Callable[..., None], args: tuple[Any, ...], name: str) -> None:
        self.ctx, self.target, self.args, self.name = ctx, target, args, name
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.env: str | None = None
        self.sockname: tuple[str, int] | None = None

    def start(self) -> None:
        self.env = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        ignore = self.ctx.ignore_sigterm and self.target is model_server_main
        self.popen = subprocess.Popen(
            ["sleep", "30"], preexec_fn=(lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN)) if ignore else None)
        self.pid = self.popen.pid
        self.ctx.started.append(self)
        if self.target is model_server_main:
            config, board, errors = self.args[:3]
            if self.ctx.load_error is not None:
                errors.send(self.ctx.load_error)
                self.popen.kill()
                self.popen.wait()
            else:
                board.set_ready(config.slot, True)
        else:
            if self.args[6] is not None:  # the shared listener, bound before any worker starts
                self.sockname = self.args[6].getsockname()
            self.args[2].set_serving(self.args[3])

    @property
    def config(self) -> ModelServerConfig:
        assert self.target is model_server_main
        config: ModelServerConfig = self.args[0]
        return config

    @property
    def exitcode(self) -> int | None:
        assert self.popen is not None
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        assert self.popen is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)

    def terminate(self) -> None:
        assert self.popen is not None
        self.popen.terminate()

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.kill()


class FakeContext:
    """The multiprocessing context the supervisor starts its children with; `started` in order."""

    def __init__(self) -> None:
        self.started: list[Child] = []
        self.load_error: str | None = None  # what every model process sends, then it exits
        self.ignore_sigterm = False  # model processes that stay on SIGTERM

    def Process(self, target: Callable[..., None], args: tuple[Any, ...], name: str) -> Child:
        return Child(self, target, args, name)

    def Pipe(self, duplex: bool = True) -> Any:
        return mp.Pipe(duplex)

    def of(self, target: Callable[..., None]) -> list[Child]:
        return [c for c in self.started if c.target is target]

    def end_all(self) -> None:
        for c in self.started:
            if c.popen is not None and c.popen.poll() is None:
                c.popen.kill()
                c.popen.wait()


@pytest.fixture
def ctx() -> Iterator[FakeContext]:
    fake = FakeContext()
    yield fake
    fake.end_all()


def supervisor_of(ctx: FakeContext, model: Path, **settings: Any) -> Supervisor:
    sup = Supervisor(ServerSettings(embedding_model=str(model), **{"workers": 2, "port": 0, **settings}), ["cpu"])
    sup.ctx = ctx  # type: ignore[assignment]
    return sup


def stand_in(alive: bool, pid: int, exitcode: int | None = None) -> SimpleNamespace:
    """A child as the supervisor sees it, with a pid no process has."""
    return SimpleNamespace(is_alive=lambda: alive, pid=2**22 + pid, exitcode=exitcode)


# -- planning ---------------------------------------------------------------------------------------------
def test_each_model_is_planned_on_slots_of_its_own_one_per_device(small_embedding_path: Path,
                                                                  small_reranker_path: Path) -> None:
    settings = ServerSettings(embedding_model=str(small_embedding_path), reranker_model=str(small_reranker_path),
                              embedding_name="emb", reranker_name="rr", max_length=64, dtype="float32")
    (emb, emb_spec), (rr, rr_spec) = plan_models(settings, ["cpu", "cpu"], {"reranker": 256})
    cpu_tokens = default_batch_tokens("cpu")
    assert (emb.kind, emb.model, emb.name, emb.label, emb.devices, emb.slots, emb.max_length, emb.batch_tokens,
            emb.dtype) == ("embedding", 0, "emb", "emb", ("cpu", "cpu"), (0, 1), 64, cpu_tokens, "float32")
    assert (rr.kind, rr.model, rr.name, rr.slots, rr.max_length) == ("reranker", 1, "rr", (2, 3), 256)
    assert Path(emb.path) == small_embedding_path.resolve() and Path(rr.path) == small_reranker_path.resolve()
    # 2 CPU devices x 2 models: four model processes share the cores
    assert emb_spec == ModelSpec("embedding", emb.path, device=None, dtype="float32", max_length=64,
                                 batch_tokens=cpu_tokens, compile=None, template="card", threads=None, thread_share=4)
    assert rr_spec == ModelSpec("reranker", rr.path, device=None, dtype="float32", max_length=256,
                                batch_tokens=cpu_tokens, compile=None, template="card", threads=None, thread_share=4)


def test_an_unnamed_model_is_served_under_its_path_and_labelled_by_its_folder(small_reranker_path: Path) -> None:
    settings = ServerSettings(reranker_model=str(small_reranker_path), max_batch_tokens=1000, max_length=128,
                              reranker_template="plain", threads=3, compile=False)
    [(plan, spec)] = plan_models(settings, ["cuda:0", "cuda:1"])
    assert (plan.kind, plan.model, plan.slots, plan.devices) == ("reranker", 1, (0, 1), ("cuda:0", "cuda:1"))
    assert plan.name == str(small_reranker_path) and plan.label == small_reranker_path.name
    assert plan.label == metrics_label(str(small_reranker_path)) and "/" not in plan.label
    assert (plan.batch_tokens, plan.max_length) == (1000, 128)
    assert (spec.template, spec.threads, spec.compile, spec.batch_tokens) == ("plain", 3, False, 1000)
    assert spec.thread_share == 1  # no CPU model process: nothing to share


def test_a_bad_model_folder_fails_the_plan_in_one_line(tmp_path: Path, small_embedding_path: Path) -> None:
    with pytest.raises(QwenEmbedError, match=f"model folder {tmp_path}/missing does not exist; check the path"):
        plan_models(ServerSettings(embedding_model=str(tmp_path / "missing")), ["cpu"])
    with pytest.raises(QwenEmbedError, match=r"max_length=100000000 is out of range: use 2\.\."):
        plan_models(ServerSettings(embedding_model=str(small_embedding_path), max_length=100_000_000), ["cpu"])


# -- the listener ------------------------------------------------------------------------------------------
def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_listener_is_a_tcp_socket_its_children_can_inherit() -> None:
    sock = listen("127.0.0.1", 0)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert (sock.family, sock.type, sock.proto) == (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        assert sock.get_inheritable() and sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # listening: the backlog takes it before any worker accepts
    finally:
        sock.close()


def test_a_busy_port_is_one_line_naming_it_and_leaks_no_socket() -> None:
    taken = listen("127.0.0.1", 0)
    port = taken.getsockname()[1]
    try:
        before = open_fds()
        with pytest.raises(QwenEmbedError) as refused:
            listen("127.0.0.1", port)
        assert str(refused.value) == (f"cannot listen on 127.0.0.1:{port} ({os.strerror(errno.EADDRINUSE)}); pick "
                                      "another --port or --host.")
        assert refused.value.__cause__ is None and refused.value.__suppress_context__
        assert open_fds() == before
    finally:
        taken.close()


def test_an_ipv6_host_gets_an_ipv6_listener() -> None:
    try:
        sock = listen("::1", 0)
    except QwenEmbedError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        assert sock.family == socket.AF_INET6 and sock.getsockname()[0] == "::1"
    finally:
        sock.close()


# -- the supervisor's parts ------------------------------------------------------------------------------------
def test_a_supervisor_of_nothing_is_refused_in_one_line() -> None:
    with pytest.raises(QwenEmbedError, match=r"^serve --workers needs --embedding-model, --reranker-model or both\.$"):
        Supervisor(ServerSettings(), ["cpu"])


@pytest.mark.parametrize(("workers", "graceful", "connections"), [(3, 30, 1024), (2, 1, 1), (4, 2, 1000)])
def test_each_worker_drains_a_second_sooner_and_takes_its_share_of_the_connections(
        small_embedding_path: Path, workers: int, graceful: int, connections: int) -> None:
    sup = Supervisor(ServerSettings(embedding_model=str(small_embedding_path), workers=workers,
                                    graceful_timeout=graceful, max_connections=connections), ["cpu", "cpu"])
    ws = sup.worker_settings
    assert ws.graceful_timeout == max(1, graceful - 1)
    assert ws.max_connections == math.ceil(connections / workers) and ws.max_connections * workers >= connections
    assert [(plan.name, d) for plan, _, d in sup.slots] == [(str(small_embedding_path), "cpu")] * 2
    assert (sup.board.workers, sup.board.processes) == (workers, 2)
    assert sup.workers == [None] * workers and sup.models == [None, None]


def test_a_model_process_is_started_with_its_slot_generation_and_socket(small_embedding_path: Path, ctx: FakeContext,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    sup = supervisor_of(ctx, small_embedding_path, max_wait_ms=7.0, max_batch_requests=9, inflight_batches=2,
                        warmup=False, deterministic=True)
    sup.addresses = "/run/model-{}-{}.sock"
    sup.board.set_ready(0, True)
    ctx.load_error = "never loads"  # the child exits at once: what is checked is how it was started
    with caplog.at_level(logging.INFO, logger="qwen_embed.server"):
        sup.start_model(0)
    first = sup.load_errors[0]
    [child] = ctx.started
    config = child.config
    assert (config.label, config.model, config.slot, config.generation) == (metrics_label(str(small_embedding_path)),
                                                                            0, 0, 1)
    assert config.address == "/run/model-0-1.sock" and config.spec.device == "cpu"
    assert config.spec == ModelSpec(**{**sup.plans[0][1].__dict__, "device": "cpu"})
    assert (config.max_batch_requests, config.max_wait_s, config.inflight, config.warmup, config.deterministic) == \
        (9, 0.007, 2, False, True)
    assert child.args[1] is sup.board and child.args[3] is sup.lifeline_end and child.args[2].closed  # its end
    assert not sup.board.ready(0) and sup.models[0] is child
    assert f"model process 0 ({small_embedding_path}, cpu) started: pid {child.pid}" in caplog.text
    assert sup.load_error(0) == "never loads"
    sup.start_model(0)  # started again: a new generation and socket; the old pipe closed
    assert ctx.started[1].config.generation == 2 and ctx.started[1].config.address == "/run/model-0-2.sock"
    assert first.closed and sup.load_errors[0] is not first


def test_a_worker_is_started_with_the_plans_the_board_and_the_shared_socket(small_embedding_path: Path,
                                                                           ctx: FakeContext) -> None:
    sup = supervisor_of(ctx, small_embedding_path)
    sup.addresses, sup.metrics_dir = "/run/model-{}-{}.sock", "/run/metrics"
    sup.sock = listen("127.0.0.1", 0)
    try:
        sup.start_worker(1)
        [child] = ctx.started
        assert child.target is worker_main and sup.workers[1] is child
        assert child.args == (sup.worker_settings, [sup.plans[0][0]], sup.board, 1, "/run/model-{}-{}.sock",
                              "/run/metrics", sup.sock, sup.lifeline_end)
    finally:
        sup.sock.close()


def test_load_error_is_the_line_sent_or_none(small_embedding_path: Path) -> None:
    sup = Supervisor(ServerSettings(embedding_model=str(small_embedding_path)), ["cpu", "cpu"])
    assert sup.load_error(0) is None  # never started
    said, says = mp.Pipe(duplex=False)
    silent, quiet = mp.Pipe(duplex=False)
    sup.load_errors = [said, silent]
    assert sup.load_error(0) is None  # nothing sent yet
    says.send("config.json is missing")
    assert sup.load_error(0) == "config.json is missing"
    quiet.close()  # exited without a word
    assert sup.load_error(1) is None


def test_waiting_for_the_models_ends_on_a_load_error_in_one_line(small_embedding_path: Path) -> None:
    sup = Supervisor(ServerSettings(embedding_model=str(small_embedding_path)), ["cpu"])
    errors, errors_in = mp.Pipe(duplex=False)
    errors_in.send("weights of shape (3, 5), expected (64, 64); use the model's own checkpoint.")
    sup.models, sup.load_errors = [stand_in(False, 1, exitcode=2)], [errors]
    with pytest.raises(QwenEmbedError) as failed:
        sup.wait_models()
    assert str(failed.value) == (f"the model process for {sup.plans[0][0].path} on cpu could not load it: weights of "
                                 "shape (3, 5), expected (64, 64); use the model's own checkpoint.")
    sup.load_errors = [None]
    sup.models = [stand_in(False, 1, exitcode=-signal.SIGKILL)]
    with pytest.raises(QwenEmbedError, match=r"on cpu was killed by SIGKILL while loading; see its log above\.$"):
        sup.wait_models()
    sup.models = [stand_in(True, 1)]
    sup.signal = signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
        sup.wait_models()
    sup.signal = None
    sup.board.set_ready(0, True)
    sup.wait_models()  # every model process ready: returns


def test_a_dead_model_process_is_started_again_at_most_once_a_second(small_embedding_path: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor(ServerSettings(embedding_model=str(small_embedding_path), workers=1), ["cpu", "cpu"])
    sup.metrics_dir = str(tmp_path)
    dead, young = stand_in(False, 1, exitcode=-signal.SIGKILL), stand_in(False, 2, exitcode=1)
    sup.models = [dead, young]
    now = time.monotonic()
    sup.started_at = {("model", 0): now - supervisor.RESTART_GAP_S, ("model", 1): now}
    errors, errors_in = mp.Pipe(duplex=False)
    errors_in.send("out of memory")
    sup.load_errors = [errors, None]
    for name in (f"gauge_livesum_{dead.pid}.db", f"counter_{dead.pid}.db", f"gauge_livesum_{young.pid}.db"):
        (tmp_path / name).write_bytes(b"")
    sup.board.set_ready(0, True)
    started: list[int] = []
    sup.start_model = started.append  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.WARNING, logger="qwen_embed.server"):
        sup.reap_models()
    assert started == [0] and not sup.board.ready(0)  # the one dead for a second; not the one just started
    # its live gauges go (it holds nothing now); its counts stay counted
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"counter_{dead.pid}.db",
                                                                 f"gauge_livesum_{young.pid}.db"])
    assert "model process 0 (cpu) was killed by SIGKILL (could not load: out of memory); starting it again" in \
        caplog.text


def test_a_dead_worker_is_started_again_with_its_counts_forgotten(small_embedding_path: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    sup = Supervisor(ServerSettings(embedding_model=str(small_embedding_path), workers=2), ["cpu"])
    sup.metrics_dir = str(tmp_path)
    sup.models = [stand_in(True, 1)]
    sup.workers = [stand_in(True, 2), stand_in(False, 3, exitcode=-signal.SIGSEGV)]
    sup.started_at = {("model", 0): 0.0, ("worker", 0): 0.0, ("worker", 1): 0.0}
    for w in (0, 1):
        sup.board.add(w, 0, 2, 50)
        sup.board.set_serving(w)
    (tmp_path / f"gauge_livesum_{sup.workers[1].pid}.db").write_bytes(b"")
    started: list[int] = []
    sup.start_worker = started.append  # type: ignore[method-assign,assignment]
    with caplog.at_level(logging.WARNING, logger="qwen_embed.server"):
        sup.reap()
    assert started == [1]
    assert sup.board.own(1, 0) == (0, 0) and not sup.board.serving(1)  # its requests died with it
    assert sup.board.own(0, 0) == (2, 50) and sup.board.serving(0)  # the other's stay
    assert list(tmp_path.iterdir()) == []
    assert "HTTP worker 1 was killed by SIGSEGV; starting it again" in caplog.text


# -- stopping ----------------------------------------------------------------------------------------------------
def test_drain_closes_the_listener_and_waits_for_the_workers_sigterm(small_embedding_path: Path,
                                                                      ctx: FakeContext) -> None:
    sup = supervisor_of(ctx, small_embedding_path, graceful_timeout=5)
    sup.sock = listen("127.0.0.1", 0)
    sup.addresses = "/run/m-{}-{}.sock"
    sup.start_model(0)
    sup.start_worker(0)
    sup.start_worker(1)
    t0 = time.monotonic()
    sup.drain()
    assert time.monotonic() - t0 < 2.0
    assert sup.sock.fileno() == -1
    assert [w.exitcode for w in sup.workers] == [-signal.SIGTERM] * 2
    assert sup.models[0].is_alive()  # the model processes go after the workers, in stop_all
    sup.stop_all()
    assert sup.models[0].exitcode == -signal.SIGTERM


def test_stop_all_kills_the_workers_and_a_model_process_that_stays_on_sigterm(
        small_embedding_path: Path, ctx: FakeContext, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervisor, "MODEL_STOP_S", 0.2)
    sup = Supervisor(ServerSettings(embedding_model=str(small_embedding_path), workers=1, port=0), ["cpu", "cpu"])
    sup.ctx = ctx  # type: ignore[assignment]
    sup.addresses = "/run/m-{}-{}.sock"
    sup.start_model(0)
    ctx.ignore_sigterm = True
    sup.start_model(1)
    sup.start_worker(0)
    with caplog.at_level(logging.INFO, logger="qwen_embed.server"):
        t0 = time.monotonic()
        sup.stop_all()
        took = time.monotonic() - t0
    assert sup.workers[0].exitcode == -signal.SIGKILL  # their drain time is over
    assert [m.exitcode for m in sup.models] == [-signal.SIGTERM, -signal.SIGKILL]
    assert 0.2 <= took < 2.0
    stubborn = sup.models[1].pid
    assert re.search(rf"model process {stubborn} did not exit on SIGTERM within \d+ s; killed", caplog.text)
    assert caplog.records[-1].getMessage() == "all processes ended"


# -- the whole run -------------------------------------------------------------------------------------------------
def signal_once_serving(ctx: FakeContext, workers: int, signum: int) -> threading.Thread:
    """Send this process `signum` once `workers` HTTP workers are started (the supervisor's handler is set by then)."""
    def wait() -> None:
        deadline = time.monotonic() + 10
        while len(ctx.of(worker_main)) < workers and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signum)

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    return t


@pytest.fixture
def handlers() -> Iterator[dict[int, Any]]:
    """The SIGTERM and SIGINT handlers before the test, put back after it whatever happened."""
    before: dict[int, Any] = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield before
    for s, h in before.items():
        signal.signal(s, h)


@pytest.mark.parametrize(("signum", "code", "users_dir"), [(signal.SIGTERM, 0, None), (signal.SIGINT, 130, None),
                                                          (signal.SIGTERM, 0, "/their/metrics")])
def test_run_starts_models_then_workers_serves_and_puts_everything_back(
        small_embedding_path: Path, ctx: FakeContext, handlers: dict[int, Any], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch, signum: int, code: int, users_dir: str | None) -> None:
    """... the environment too: a PROMETHEUS_MULTIPROC_DIR the caller had set is given back, not removed."""
    if users_dir is None:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    else:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", users_dir)
    sup = supervisor_of(ctx, small_embedding_path, graceful_timeout=5)
    signaller = signal_once_serving(ctx, 2, signum)
    with caplog.at_level(logging.INFO, logger="qwen_embed.server"):
        assert sup.run() == code
    signaller.join(5)
    assert [c.target for c in ctx.started] == [model_server_main, worker_main, worker_main]
    metrics_dir = os.path.join(sup.tmp, "metrics")
    assert {c.env for c in ctx.started} == {metrics_dir}  # set before the first child started
    assert ctx.started[0].config.address == os.path.join(sup.tmp, "model-0-1.sock")
    assert [c.args[5] for c in ctx.of(worker_main)] == [metrics_dir] * 2
    assert not os.path.exists(sup.tmp) and os.environ.get("PROMETHEUS_MULTIPROC_DIR") == users_dir
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert sup.sock is not None and sup.sock.fileno() == -1
    assert [c.exitcode for c in ctx.of(worker_main)] == [-signal.SIGTERM] * 2  # drained
    assert ctx.of(model_server_main)[0].exitcode == -signal.SIGTERM  # then ended
    sockname = ctx.of(worker_main)[0].sockname
    assert sockname is not None
    port = sockname[1]
    assert f"serving on http://127.0.0.1:{port}: 2 HTTP workers, 1 model processes (cpu)" in caplog.text


def test_run_starts_again_a_model_process_that_dies_while_serving(small_embedding_path: Path, ctx: FakeContext,
                                                                  handlers: dict[int, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor, "RESTART_GAP_S", 0.0)
    sup = supervisor_of(ctx, small_embedding_path, workers=1, graceful_timeout=5)

    def kill_then_stop() -> None:
        deadline = time.monotonic() + 10
        while not ctx.of(worker_main) and time.monotonic() < deadline:
            time.sleep(0.005)
        first = ctx.of(model_server_main)[0]
        first.kill()
        while len(ctx.of(model_server_main)) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=kill_then_stop, daemon=True)
    t.start()
    assert sup.run() == 0
    t.join(5)
    first, again = ctx.of(model_server_main)
    assert first.exitcode == -signal.SIGKILL and again.config.generation == 2
    assert again.config.address == os.path.join(sup.tmp, "model-0-2.sock")
    assert len(ctx.of(worker_main)) == 1  # the workers are unaffected


def test_run_ends_on_a_model_that_cannot_load_and_puts_everything_back(small_embedding_path: Path, ctx: FakeContext,
                                                                      handlers: dict[int, Any]) -> None:
    sup = supervisor_of(ctx, small_embedding_path)
    ctx.load_error = "config.json is missing; pass a model folder."
    with pytest.raises(QwenEmbedError, match=r"could not load it: config.json is missing; pass a model folder\.$"):
        sup.run()
    assert ctx.of(worker_main) == [] and sup.sock is None  # no port opened, no worker started
    assert not os.path.exists(sup.tmp) and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert {s: signal.getsignal(s) for s in handlers} == handlers


def test_run_on_a_busy_port_ends_the_model_processes_it_started(small_embedding_path: Path, ctx: FakeContext,
                                                               handlers: dict[int, Any]) -> None:
    taken = listen("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        sup = supervisor_of(ctx, small_embedding_path, port=port)
        with pytest.raises(QwenEmbedError, match=f"cannot listen on 127.0.0.1:{port}"):
            sup.run()
    finally:
        taken.close()
    [model] = ctx.started
    assert model.exitcode == -signal.SIGTERM and not os.path.exists(sup.tmp)
    assert {s: signal.getsignal(s) for s in handlers} == handlers
