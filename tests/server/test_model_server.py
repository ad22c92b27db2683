"""A model process of `serve --workers N` (server/model_server.py), in this process: `ModelServer` around a fake
`run` whose rows are worked by hand ([length, sum] of each sequence), fed frames (wire.py) as HTTP workers send
them. Against the module docstring: each request is answered once with its rows and its timing, or its error by
class name (a library error as it is, any other as ModelError) while the process serves on; the requests of
several workers merge into one batch; a CANCEL, or a worker that disconnects, skips its requests' batches; a
worker's warm-up runs outside the queue and the metrics; `serve` warms up before it listens and says ready,
and ends on SIGTERM, not ready; the batch metrics go to the board (load, throughput); `load_model` is the model
as in process; a model that cannot load is one line through the pipe and exit status 2. Real processes:
tests/server/test_workers.py.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import pytest

from qwen_embed import Embedder, Reranker
from qwen_embed.errors import ConfigError, ModelOutputError
from qwen_embed.server import model_server, wire
from qwen_embed.server.board import Board
from qwen_embed.server.model_process import ModelSpec
from qwen_embed.server.model_server import (
    WARMUP_TEXT,
    BoardMetrics,
    ModelServer,
    ModelServerConfig,
    forget,
    load_model,
    model_server_main,
)

SLOT = 1  # the model process under test is the second of two (the board has room for both)
T = TypeVar("T")


class Run:
    """A model: each sequence's row is [its length, the sum of its ids]; records each batch it runs; `fail`
    makes the next batch raise it."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []
        self.fail: Exception | None = None
        self.ready_seen: list[bool] = []
        self.board: Board | None = None

    def __call__(self, seqs: list[Sequence[int]]) -> np.ndarray:
        self.batches.append([list(s) for s in seqs])
        if self.board is not None:
            self.ready_seen.append(self.board.ready(SLOT))
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail
        return np.array([[len(s), sum(s)] for s in seqs], dtype=np.float32)


class FakeWriter:
    """A worker's connection as the model process writes to it: keeps the frames."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.data += p

    async def drain(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def frames(self) -> list[wire.Frame]:
        out, i = [], 0
        while i < len(self.data):
            kind, code, rid, a, b, size, q, inf = wire.HEAD.unpack_from(self.data, i)
            i += wire.HEAD.size
            out.append(wire.Frame(kind, rid, code, a, b, bytes(self.data[i:i + size]), q, inf))
            i += size
        return out


class Worker:
    """One HTTP worker connected to the model process: `send` / `cancel` frames, read its answers."""

    def __init__(self, server: ModelServer) -> None:
        self.reader = asyncio.StreamReader()
        self.writer = FakeWriter()
        self.task = asyncio.create_task(server.connection(self.reader, cast(asyncio.StreamWriter, self.writer)))

    def send(self, rid: int, seqs: list[list[int]], warmup: bool = False) -> None:
        for part in wire.request(rid, seqs, warmup):
            self.reader.feed_data(part)

    def cancel(self, rid: int) -> None:
        self.reader.feed_data(wire.cancel(rid))

    async def answers(self, n: int) -> list[wire.Frame]:
        for _ in range(500):
            if len(self.writer.frames()) >= n:
                break
            await asyncio.sleep(0.002)
        return self.writer.frames()


@pytest.fixture
def board() -> Board:
    return Board.create(mp.get_context("spawn"), workers=1, processes=2)


def config_of(tmp_path: Path, **kw: Any) -> ModelServerConfig:
    options: dict[str, Any] = {"max_wait_s": 0.0, "warmup": False, **kw}
    return ModelServerConfig(ModelSpec("embedding", "unused", batch_tokens=64), "emb", 0, SLOT, 1,
                             str(tmp_path / "m.sock"), **options)


def run_async(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), 10)
    return asyncio.run(bounded())


def rows_of(frame: wire.Frame) -> list[list[float]]:
    assert frame.kind == wire.ROWS, wire.error_of(frame)
    return wire.array(frame).tolist()


# -- the board's metrics --------------------------------------------------------------------------------
def test_the_queue_gauge_is_the_boards_load_and_batches_update_the_throughput(board: Board) -> None:
    m = BoardMetrics(board, SLOT)
    m.set_queue("emb", 3, 120)  # the workers own the request gauge: only the tokens go to the board
    assert board.load(SLOT) == (120, 0) and board.load(0) == (0, 0)
    m.observe_batch("emb", 2, 4, 1000, 0.5, [0.01, 0.02])  # 2000 tokens/s: the first measure is taken as it is
    assert board.load(SLOT) == (120, 2000)
    m.observe_batch("emb", 1, 1, 1000, 1.0, [0.03])  # 1000 tokens/s: 0.8 * 2000 + 0.2 * 1000
    assert board.load(SLOT) == (120, 1800)
    m.observe_batch("emb", 1, 1, 50, 0.0, [])  # no time measured: the throughput stands
    assert board.load(SLOT) == (120, 1800)
    m.set_queue("emb", 0, 0)
    assert board.load(SLOT) == (0, 1800)  # the throughput is kept when the load changes
    assert m.registry.get_sample_value("qwen_embed_batch_requests_count", {"model": "emb"}) == 3
    assert m.registry.get_sample_value("qwen_embed_batch_tokens_sum", {"model": "emb"}) == 2050
    assert m.registry.get_sample_value("qwen_embed_queue_seconds_count", {"model": "emb"}) == 3


def test_forget_drops_a_finished_request_and_ignores_one_already_gone() -> None:
    tasks: dict[int, Any] = {1: "a", 2: "b"}
    forget(tasks, 1, cast(Any, None))
    forget(tasks, 7, cast(Any, None))
    assert tasks == {2: "b"}


# -- answering workers ------------------------------------------------------------------------------------
def test_each_request_is_answered_once_with_its_rows_and_its_timing(tmp_path: Path, board: Board) -> None:
    run = Run()

    async def scenario() -> None:
        server = ModelServer(config_of(tmp_path), board, run)
        server.batcher.start()
        w = Worker(server)
        w.send(7, [[1, 2, 3], [4]])
        w.send(9, [[5, 5]])
        frames = await w.answers(2)
        await asyncio.sleep(0.02)
        assert len(w.writer.frames()) == 2  # once each
        by_id = {f.id: f for f in frames}
        assert rows_of(by_id[7]) == [[3, 6], [1, 4]] and rows_of(by_id[9]) == [[2, 10]]
        for f in frames:
            assert f.code == ord("f") and f.queue_s >= 0 and f.inference_s > 0
        w.reader.feed_eof()
        await w.task
        await server.batcher.stop()

    run_async(scenario)


def test_the_requests_of_several_workers_merge_into_one_batch(tmp_path: Path, board: Board) -> None:
    run = Run()
    board.add(0, 0, 2, 0)  # two requests admitted by the workers: the first waits for the other

    async def scenario() -> None:
        server = ModelServer(config_of(tmp_path, max_wait_s=2.0, max_batch_requests=2), board, run)
        server.batcher.start()
        a, b = Worker(server), Worker(server)
        a.send(1, [[1, 1]])
        b.send(1, [[2, 2, 2]])  # ids are each worker's own: both may be 1
        fa, fb = await a.answers(1), await b.answers(1)
        assert rows_of(fa[0]) == [[2, 2]] and rows_of(fb[0]) == [[3, 6]]
        assert run.batches == [[[1, 1], [2, 2, 2]]]
        for w in (a, b):
            w.reader.feed_eof()
            await w.task
        await server.batcher.stop()

    run_async(scenario)


@pytest.mark.parametrize(("error", "name", "message"), [
    (RuntimeError("boom"), "ModelError", "RuntimeError: boom"),  # the model failed: the worker raises ModelError
    (ModelOutputError("NaN in the output of batch 1"), "ModelOutputError", "NaN in the output of batch 1"),
    (ConfigError("a library error"), "ConfigError", "a library error"),
])
def test_a_failed_batch_answers_its_error_by_name_and_the_process_serves_on(tmp_path: Path, board: Board,
                                                                            error: Exception, name: str,
                                                                            message: str) -> None:
    from qwen_embed.server.remote import remote_error

    run = Run()

    async def scenario() -> None:
        server = ModelServer(config_of(tmp_path), board, run)
        server.batcher.start()
        w = Worker(server)
        run.fail = error
        w.send(1, [[1]])
        [frame] = await w.answers(1)
        assert frame.kind == wire.ERROR and frame.id == 1 and wire.error_of(frame) == (name, message)
        if name != "ModelError":
            assert type(remote_error(name, message)) is type(error)  # what the worker raises again
        w.send(2, [[4, 4]])
        frames = await w.answers(2)
        assert frames[1].id == 2 and rows_of(frames[1]) == [[2, 8]]
        w.reader.feed_eof()
        await w.task
        await server.batcher.stop()

    run_async(scenario)


def test_a_cancel_skips_the_requests_batch(tmp_path: Path, board: Board) -> None:
    run = Run()
    board.add(0, 0, 2, 0)  # not alone: the request waits out its batching window

    async def scenario() -> None:
        server = ModelServer(config_of(tmp_path, max_wait_s=0.1), board, run)
        server.batcher.start()
        w = Worker(server)
        w.send(1, [[1, 2]])
        await asyncio.sleep(0.01)
        w.cancel(1)
        w.cancel(99)  # an id it never sent (answered already): nothing happens
        await asyncio.sleep(0.15)
        assert run.batches == [] and w.writer.frames() == []  # never run, never answered
        assert server.batcher.pending_requests == 0
        board.add(0, 0, -2, 0)  # the next request alone: it runs at once
        w.send(2, [[3]])
        [frame] = await w.answers(1)
        assert frame.id == 2 and run.batches == [[[3]]]
        w.reader.feed_eof()
        await w.task
        await server.batcher.stop()

    run_async(scenario)


def test_a_worker_that_disconnects_has_its_requests_cancelled_and_others_are_unaffected(tmp_path: Path,
                                                                                       board: Board) -> None:
    run = Run()
    board.add(0, 0, 2, 0)

    async def scenario() -> None:
        server = ModelServer(config_of(tmp_path, max_wait_s=0.1), board, run)
        server.batcher.start()
        gone, other = Worker(server), Worker(server)
        gone.send(1, [[1, 2]])
        other.send(1, [[7]])
        await asyncio.sleep(0.01)
        gone.reader.feed_eof()  # the worker died
        await gone.task
        assert gone.writer.closed
        [frame] = await other.answers(1)
        assert rows_of(frame) == [[1, 7]] and run.batches == [[[7]]] and gone.writer.frames() == []
        assert server.batcher.pending_requests == 0
        other.reader.feed_eof()
        await other.task
        await server.batcher.stop()

    run_async(scenario)


def test_a_warm_up_request_runs_outside_the_queue_and_its_metrics(tmp_path: Path, board: Board) -> None:
    run = Run()

    async def scenario() -> None:
        server = ModelServer(config_of(tmp_path), board, run)
        server.batcher.start()
        board.set_load(SLOT, 0, 0)
        w = Worker(server)
        w.send(3, [[1, 2, 3]], warmup=True)
        [frame] = await w.answers(1)
        assert frame.id == 3 and rows_of(frame) == [[3, 6]]
        metrics = server.batcher.metrics
        assert metrics is not None
        assert metrics.registry.get_sample_value("qwen_embed_batch_requests_count", {"model": "emb"}) is None
        assert board.load(SLOT) == (0, 0) and server.batcher.batches_run == 0
        w.reader.feed_eof()
        await w.task
        await server.batcher.stop()

    run_async(scenario)


def test_an_answer_to_a_worker_already_gone_is_not_written(tmp_path: Path, board: Board) -> None:
    run = Run()

    async def scenario() -> None:
        server = ModelServer(config_of(tmp_path), board, run)
        server.batcher.start()
        writer = FakeWriter()
        writer.closed = True
        await server.answer(1, [[1]], cast(asyncio.StreamWriter, writer), warmup=False)
        assert writer.data == b"" and run.batches == [[[1]]]
        await server.batcher.stop()

    run_async(scenario)


# -- the process's life ----------------------------------------------------------------------------------
@pytest.mark.parametrize("warmup", [True, False])
def test_serve_warms_up_then_listens_then_says_ready_and_ends_on_sigterm(tmp_path: Path, board: Board,
                                                                         warmup: bool) -> None:
    run = Run()
    run.board = board
    config = config_of(tmp_path, warmup=warmup)
    Path(config.address).write_text("left by the process that died")  # a stale socket file
    warm = [[[1, 2]], [[3] * 5] * 3]
    before = signal.getsignal(signal.SIGTERM)

    async def scenario() -> None:
        server = ModelServer(config, board, run)
        serving = asyncio.create_task(server.serve(warm))
        for _ in range(500):
            if board.ready(SLOT):
                break
            await asyncio.sleep(0.002)
        assert board.ready(SLOT)
        assert run.batches == (warm if warmup else []) and run.ready_seen == [False] * len(run.batches)
        reader, writer = await asyncio.open_unix_connection(config.address)
        writer.writelines(wire.request(5, [[2, 3]]))
        frame = await wire.read(reader)
        assert frame.id == 5 and rows_of(frame) == [[2, 5]]
        os.kill(os.getpid(), signal.SIGTERM)  # its handler is the server's: it stops at once
        await asyncio.wait_for(serving, 5)
        assert not board.ready(SLOT)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_unix_connection(config.address)
        writer.close()
        await server.batcher.stop()

    try:
        run_async(scenario)
    finally:
        signal.signal(signal.SIGTERM, before)


def test_load_model_is_the_model_as_in_process_with_its_warm_up_batches(small_embedding_path: Path,
                                                                       small_embedder: Embedder,
                                                                       small_reranker_path: Path,
                                                                       small_reranker: Reranker) -> None:
    run, warm = load_model(ModelSpec("embedding", str(small_embedding_path), "cpu", max_length=64, threads=1), False)
    seqs: list[Sequence[int]] = list(small_embedder.tokenize(["The capital of China is Beijing.", "Gravity."]))
    assert np.abs(run(seqs) - small_embedder.embed_ids(seqs, normalize=False)).max() <= 1e-6
    eos = small_embedder.tokenizer.eos_id
    # a short input (the CUDA-graph path) and a long batch (the compiled path)
    assert warm == [small_embedder.tokenizer.encode_for_embedding([WARMUP_TEXT], 64), [[eos] * 1500] * 3]
    score, warm = load_model(ModelSpec("reranker", str(small_reranker_path), "cpu", max_length=256, threads=1), False)
    pairs: list[Sequence[int]] = list(small_reranker.build_input_ids("capital", ["Beijing", "gravity"]))
    assert np.abs(score(pairs) - small_reranker.score_ids(pairs)).max() <= 1e-6
    assert warm == [small_reranker.build_input_ids(WARMUP_TEXT, [WARMUP_TEXT])]


@pytest.fixture
def main_seams(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """model_server_main's calls that would act on this process (the lifeline's watcher, tqdm's lock, SIGINT)
    recorded or put back afterwards."""
    from tqdm import tqdm

    calls: list[str] = []
    monkeypatch.setattr(model_server, "exit_with_parent", lambda end: calls.append("exit_with_parent"))
    lock = tqdm.get_lock()
    sigint = signal.getsignal(signal.SIGINT)
    yield calls
    tqdm.set_lock(lock)
    signal.signal(signal.SIGINT, sigint)


def test_a_model_that_cannot_load_is_one_line_on_the_pipe_and_exit_status_2(tmp_path: Path, board: Board,
                                                                           main_seams: list[str],
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    def cannot_load(spec: ModelSpec, deterministic: bool) -> Any:
        main_seams.append(f"load: SIGINT {'ignored' if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else 'not'}")
        raise ConfigError(f"{spec.path}/config.json is missing; pass a model folder.")

    monkeypatch.setattr(model_server, "load_model", cannot_load)
    errors, errors_in = mp.Pipe(duplex=False)
    lifeline_end, _parent_end = mp.Pipe(duplex=False)
    with pytest.raises(SystemExit) as exited:
        model_server_main(config_of(tmp_path), board, cast(Connection, errors_in), lifeline_end)
    assert exited.value.code == 2
    assert main_seams == ["exit_with_parent", "load: SIGINT ignored"]  # it goes with its parent while loading too
    assert errors.recv() == "unused/config.json is missing; pass a model folder."
    assert errors_in.closed
    with pytest.raises(EOFError):
        errors.recv()  # one line, then the end
    assert not board.ready(SLOT)


def test_a_bug_while_loading_is_not_reported_as_a_load_error(tmp_path: Path, board: Board, main_seams: list[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(spec: ModelSpec, deterministic: bool) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(model_server, "load_model", bug)
    errors, errors_in = mp.Pipe(duplex=False)
    lifeline_end, _parent_end = mp.Pipe(duplex=False)
    with pytest.raises(KeyError, match="a bug"):
        model_server_main(config_of(tmp_path), board, cast(Connection, errors_in), lifeline_end)
    assert not errors.poll()
