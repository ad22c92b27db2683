"""An HTTP worker's side of the model processes (server/remote.py), in process: each model process is a `Peer`, an
in-memory stream pair handed to the batcher when it connects (`asyncio.open_unix_connection` is the seam), whose
frames the test reads and answers (wire.py). Against the module docstring: a request goes to the ready process
with the fewest tokens queued or running; every accepted request is answered exactly once (its rows with the
process's timing, the model's error as its own class, 503 at once when its process hangs up, 503 at the drain
deadline); a client that leaves cancels its request in the model process too and gives its tokens back;
admission is global (the board) and its Retry-After comes from the processes' throughput. Sockets and real
model processes: tests/server/test_workers.py.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import numpy as np
import pytest

from qwen_embed.errors import ConfigError, InputError, ModelOutputError, QwenEmbedError, TokenizerError
from qwen_embed.server import remote, wire
from qwen_embed.server.batcher import BatcherFailed, QueueFull, ShuttingDown, Timing
from qwen_embed.server.board import Board
from qwen_embed.server.errors import status_of
from qwen_embed.server.model_process import ModelError, ModelProcessDied
from qwen_embed.server.remote import Link, RemoteBatcher, remote_error

ADDRESSES = "model-{}-{}.sock"  # slot, generation
T = TypeVar("T")


def frames_of(data: bytes) -> list[wire.Frame]:
    """The frames in `data`, read by wire.py's table (a fixed header, then `size` payload bytes)."""
    out, i = [], 0
    while i < len(data):
        kind, code, rid, a, b, size, q, inf = wire.HEAD.unpack_from(data, i)
        i += wire.HEAD.size
        out.append(wire.Frame(kind, rid, code, a, b, bytes(data[i:i + size]), q, inf))
        i += size
    assert i == len(data), "a frame cut short"
    return out


class FakeWriter:
    """The worker's writing end of one connection: keeps what was written."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def writelines(self, parts: list[bytes]) -> None:
        for p in parts:
            self.data += p

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class Peer:
    """One generation of one model process, as a worker connected to it sees it."""

    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()
        self.writer = FakeWriter()
        self.connections = 0

    def sent(self, kind: int | None = None) -> list[wire.Frame]:
        """The frames the worker sent it (of one kind)."""
        return [f for f in frames_of(bytes(self.writer.data)) if kind is None or f.kind == kind]

    def answer(self, parts: list[bytes]) -> None:
        for p in parts:
            self.reader.feed_data(p)

    def rows(self, rid: int, rows: list[list[float]], queue_s: float = 0.0, inference_s: float = 0.0) -> None:
        self.answer(wire.rows(rid, np.array(rows, dtype=np.float32), queue_s, inference_s))

    def hang_up(self) -> None:
        """The process died: its socket reads EOF."""
        self.reader.feed_eof()


class Processes:
    """The model processes a worker can reach: `start(slot)` is a supervisor starting one (a new generation,
    ready on the board); connecting to an address nobody listens on fails as a socket does."""

    def __init__(self, board: Board) -> None:
        self.board = board
        self.peers: dict[str, Peer] = {}

    def start(self, slot: int) -> Peer:
        generation = self.board.next_generation(slot)
        peer = self.peers[ADDRESSES.format(slot, generation)] = Peer()
        self.board.set_ready(slot, True)
        return peer

    async def open_unix_connection(self, path: str) -> tuple[asyncio.StreamReader, FakeWriter]:
        peer = self.peers.get(path)
        if peer is None:
            raise FileNotFoundError(2, "No such file or directory", path)
        peer.connections += 1
        return peer.reader, peer.writer


@pytest.fixture
def board() -> Board:
    return Board.create(mp.get_context("spawn"), workers=2, processes=3)


@pytest.fixture
def processes(board: Board, monkeypatch: pytest.MonkeyPatch) -> Iterator[Processes]:
    procs = Processes(board)
    monkeypatch.setattr(remote.asyncio, "open_unix_connection", procs.open_unix_connection)
    yield procs


def batcher_of(board: Board, slots: int = 1, *, worker: int = 0, max_queue: int = 8, max_queue_tokens: int = 1000,
               metrics: Any = None) -> RemoteBatcher:
    links = [Link(s, f"cuda:{s}") for s in range(slots)]
    return RemoteBatcher("emb", 0, links, ADDRESSES, board, worker, max_batch_tokens=64, max_queue=max_queue,
                         max_queue_tokens=max_queue_tokens, metrics=metrics)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(scenario(), 10)
    return asyncio.run(bounded())


async def settle() -> None:
    """Let every task that can run, run (the readers, the senders)."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- errors crossing by name ------------------------------------------------------------------------------
@pytest.mark.parametrize(("cls", "status"), [
    (ShuttingDown, (503, "shutting_down")),
    (BatcherFailed, (503, "batcher_failed")),
    (ModelError, (500, "model_error")),
    (ModelOutputError, (500, "model_output_not_finite")),
    (InputError, (400, None)),
    (TokenizerError, (400, None)),
    (ConfigError, (400, None)),
])
def test_a_known_error_is_raised_again_as_its_own_class_with_its_message(cls: type[QwenEmbedError],
                                                                         status: tuple[int, str | None]) -> None:
    err = remote_error(cls.__name__, "what the model process said")
    assert type(err) is cls and str(err) == "what the model process said" and status_of(err) == status


@pytest.mark.parametrize("name", ["RuntimeError", "WeightsError", "QueueFull", ""])
def test_any_other_error_is_a_model_error_that_names_it(name: str) -> None:
    err = remote_error(name, "CUDA error: an illegal memory access")
    assert type(err) is ModelError and status_of(err) == (500, "model_error")
    assert str(err) == f"the model failed on this request: {name}: CUDA error: an illegal memory access"


def test_a_link_is_up_only_while_connected_and_not_closing() -> None:
    link = Link(0, "cpu")
    assert not link.up and link.generation == 0 and link.tokens == 0 and link.pending == {}
    writer = FakeWriter()
    link.writer = cast(asyncio.StreamWriter, writer)
    assert link.up
    writer.close()
    assert not link.up


# -- sending ------------------------------------------------------------------------------------------------
def test_rows_come_back_with_the_model_process_timing_and_the_tokens_are_given_back(board: Board,
                                                                                     processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board)
        peer = processes.start(0)
        timing = Timing(tokenization=0.125)
        task = asyncio.create_task(b.send([[1, 2, 3], [4]], timing))
        await settle()
        [frame] = peer.sent()
        assert (frame.kind, frame.code) == (wire.REQUEST, 0) and wire.sequences(frame) == [[1, 2, 3], [4]]
        assert b.links[0].tokens == 4 and list(b.links[0].pending) == [frame.id]
        peer.rows(frame.id, [[3.0, 0.5], [1.0, 0.25]], queue_s=0.25, inference_s=0.5)
        out = await task
        assert out.tolist() == [[3.0, 0.5], [1.0, 0.25]] and out.dtype == np.float32
        assert (timing.tokenization, timing.queue, timing.inference) == (0.125, 0.25, 0.5)
        assert b.links[0].tokens == 0 and b.links[0].pending == {} and b.links[0].generation == 1
        await b.stop()

    run(scenario)


def test_answers_in_any_order_reach_their_own_requests(board: Board, processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board)
        peer = processes.start(0)
        tasks = [asyncio.create_task(b.send([[k] * (k + 1)], Timing())) for k in range(6)]
        await settle()
        sent = peer.sent(wire.REQUEST)
        assert len({f.id for f in sent}) == 6 and peer.connections == 1  # one connection, one id each
        for f in reversed(sent):  # each answer is the request's one sequence: its first token and its length
            [seq] = wire.sequences(f)
            peer.rows(f.id, [[float(seq[0]), float(len(seq))]])
        got = await asyncio.gather(*tasks)
        assert [g.tolist() for g in got] == [[[k, k + 1]] for k in range(6)]
        assert b.links[0].tokens == 0
        await b.stop()

    run(scenario)


def test_a_model_error_is_raised_in_its_request_only(board: Board, processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board)
        peer = processes.start(0)
        bad, good = (asyncio.create_task(b.send([[n]], Timing())) for n in (1, 2))
        await settle()
        first, second = peer.sent(wire.REQUEST)
        peer.answer(wire.error(first.id, "ModelOutputError", "NaN in the output of batch 1"))
        peer.rows(second.id, [[2.0]])
        with pytest.raises(ModelOutputError, match=r"^NaN in the output of batch 1$"):
            await bad
        assert (await good).tolist() == [[2.0]] and b.links[0].up and b.links[0].tokens == 0
        await b.stop()

    run(scenario)


def test_the_ready_process_with_the_fewest_tokens_queued_or_running_gets_the_request(board: Board,
                                                                                    processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board, slots=3)
        p0, p1 = processes.start(0), processes.start(1)  # slot 2: never started, not ready, 0 tokens
        board.set_load(0, 50)
        first = asyncio.create_task(b.send([[7] * 80], Timing()))  # 50 + 0 vs 0 + 0: process 1
        await settle()
        assert len(p1.sent()) == 1 and p0.sent() == [] and b.links[1].tokens == 80
        # process 0: 100 queued + 0 of ours = 100; process 1: 30 queued + 80 of ours in flight = 110
        board.set_load(0, 100)
        board.set_load(1, 30)
        second = asyncio.create_task(b.send([[1]], Timing()))
        await settle()
        assert len(p0.sent()) == 1 and len(p1.sent()) == 1
        assert b.links[2].writer is None and b.links[2].generation == 0
        p1.rows(p1.sent()[0].id, [[1.0]])
        p0.rows(p0.sent()[0].id, [[2.0]])
        assert (await first).tolist() == [[1.0]] and (await second).tolist() == [[2.0]]
        await b.stop()

    run(scenario)


def test_a_process_that_hangs_up_answers_each_request_in_it_503_at_once(board: Board, processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board, slots=2)
        peer = processes.start(1)
        tasks = [asyncio.create_task(b.send([[1, 2]], Timing())) for _ in range(3)]
        await settle()
        assert b.ready and len(peer.sent()) == 3
        peer.hang_up()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            assert isinstance(r, ModelProcessDied) and status_of(r) == (503, "model_unavailable")
            assert str(r) == ("the model process of emb on cuda:1 exited while this request was in it; it is being "
                              "restarted: retry shortly.")
        link = b.links[1]
        assert link.writer is None and link.pending == {} and link.tokens == 0 and peer.writer.closed
        assert not b.ready  # the board still says ready, but for the generation this worker lost
        with pytest.raises(ModelProcessDied, match=r"^every model process of emb is restarting; retry shortly\.$"):
            await b.send([[1]], Timing())
        again = processes.start(1)  # the supervisor started generation 2: the next request reaches it
        assert b.ready
        task = asyncio.create_task(b.send([[5]], Timing()))
        await settle()
        again.rows(again.sent()[0].id, [[5.0]])
        assert (await task).tolist() == [[5.0]] and link.generation == 2
        await b.stop()

    run(scenario)


def test_a_ready_process_that_cannot_be_reached_is_a_503_not_a_socket_error(board: Board,
                                                                           processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board)
        board.next_generation(0)
        board.set_ready(0, True)  # ready on the board, but its socket is gone already
        assert b.ready
        with pytest.raises(ModelProcessDied, match="every model process of emb is restarting"):
            await b.send([[1]], Timing())
        assert b.links[0].writer is None and b.links[0].generation == 0
        await b.stop()

    run(scenario)


def test_a_client_that_leaves_cancels_its_request_in_the_model_process(board: Board, processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board)
        peer = processes.start(0)
        task = asyncio.create_task(b.send([[1, 2, 3]], Timing()))
        await settle()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        [request] = peer.sent(wire.REQUEST)
        [cancel] = peer.sent(wire.CANCEL)
        assert cancel.id == request.id and cancel.payload == b""
        assert b.links[0].tokens == 0 and b.links[0].pending == {}
        peer.rows(request.id, [[9.0]])  # its answer, sent before the cancel arrived: dropped
        later = asyncio.create_task(b.send([[4]], Timing()))
        await settle()
        peer.rows(peer.sent(wire.REQUEST)[-1].id, [[4.0]])
        assert (await later).tolist() == [[4.0]] and b.links[0].tokens == 0
        await b.stop()

    run(scenario)


def test_an_answer_that_arrives_with_the_cancel_gives_its_tokens_back_once(board: Board,
                                                                          processes: Processes) -> None:
    """The answer is read in the same turn of the loop as the client leaves: the reader finds the request's
    future cancelled, and the sender, woken next, finds the request gone. Its tokens were counted on the link
    for good (a process that looks busier than it is gets fewer requests until it restarts)."""
    async def scenario() -> None:
        b = batcher_of(board)
        peer = processes.start(0)
        task = asyncio.create_task(b.send([[1, 2, 3]], Timing()))
        await settle()
        [request] = peer.sent(wire.REQUEST)
        peer.rows(request.id, [[3.0]])  # the answer is in the socket's buffer...
        task.cancel()  # ...when the client goes away
        with pytest.raises(asyncio.CancelledError):
            await task
        await settle()
        assert b.links[0].pending == {} and b.links[0].tokens == 0
        await b.stop()

    run(scenario)


# -- admission ------------------------------------------------------------------------------------------------
def test_a_full_queue_says_the_count_and_the_limit_and_retry_after_from_the_throughput(board: Board) -> None:
    b = batcher_of(board, slots=2, max_queue=3, max_queue_tokens=400)
    board.add(1, 0, 3, 450)  # worker 1 holds 3 requests of 450 tokens
    with pytest.raises(QueueFull) as full:
        b.admit()
    assert str(full.value) == ("the emb queue is full (3 requests queued or running, limit 3); retry after the "
                               "Retry-After seconds.")
    assert full.value.retry_after == 1  # no throughput measured yet
    board.set_load(0, 0, 100.0)
    board.set_load(1, 0, 50.0)  # the model's processes together: 150 tokens/s
    with pytest.raises(QueueFull) as full:
        b.admit()
    assert full.value.retry_after == math.ceil(450 / 150) == 3
    board.add(1, 0, -1, 0)  # room for one request, but 450 + 10 tokens pass the 400-token limit
    with pytest.raises(QueueFull, match=r"\(450 tokens queued or running, limit 400\)") as full:
        b.check_room(1, 10)
    assert full.value.retry_after == 3
    board.add(1, 0, 0, 1_000_000)
    with pytest.raises(QueueFull) as full:
        b.check_room(1, 10)
    assert full.value.retry_after == 60  # at most a minute
    assert board.admitted(0) == (2, 1_000_450)  # refusals hold nothing


def test_an_admission_holds_its_place_and_tokens_until_answered_on_the_board(board: Board,
                                                                            processes: Processes) -> None:
    seen: list[tuple[str, int, int]] = []

    class Gauge:
        def set_queue(self, model: str, requests: int, tokens: int) -> None:
            seen.append((model, requests, tokens))

    async def scenario() -> None:
        b = batcher_of(board, worker=1, metrics=Gauge())
        peer = processes.start(0)
        adm = b.admit()
        assert board.own(1, 0) == (1, 0) and b.pending_requests == 1 and board.own(0, 0) == (0, 0)
        task = asyncio.create_task(adm.submit([[1, 2], [3, 4, 5]]))
        await settle()
        assert board.own(1, 0) == (1, 5) and board.admitted(0) == (1, 5)
        peer.rows(peer.sent()[0].id, [[1.0], [2.0]])
        await task
        assert board.own(1, 0) == (0, 0) and b.pending_requests == 0
        adm.release()  # idempotent: nothing given back twice
        assert board.own(1, 0) == (0, 0)
        with pytest.raises(AssertionError, match="an admission submits once"):
            await adm.submit([[1]])
        await b.stop()

    run(scenario)
    assert seen == [("emb", 1, 0), ("emb", 1, 5), ("emb", 0, 0)]  # this worker's own share, each change


def test_a_refused_or_failed_submit_gives_its_place_back(board: Board, processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board)
        adm = b.admit()  # no process ready: the request fails
        with pytest.raises(ModelProcessDied):
            await adm.submit([[1, 2, 3]])
        assert board.admitted(0) == (0, 0)
        adm = b.admit()
        b.drain(0.0)
        await asyncio.sleep(0.01)  # the drain time ran out before it was sent
        with pytest.raises(ShuttingDown, match="drain time ran out"):
            await adm.submit([[1]])
        assert board.admitted(0) == (0, 0)
        with pytest.raises(ShuttingDown, match="drain time ran out"):
            b.check_room(0, 0, reserved=True)
        await b.stop()

    run(scenario)


# -- drain and stop ---------------------------------------------------------------------------------------------
def test_the_drain_deadline_answers_what_is_in_flight_and_cancels_it_in_the_model_process(board: Board,
                                                                                         processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board)
        peer = processes.start(0)
        task = asyncio.create_task(b.send([[1, 2]], Timing()))
        await settle()
        stopping = asyncio.create_task(b.stop(timeout=0.05))
        await settle()
        with pytest.raises(ShuttingDown, match=r"^the server is shutting down; retry on another replica\.$"):
            b.admit()
        assert not task.done() and not stopping.done()  # in flight: it has till the deadline
        with pytest.raises(ShuttingDown, match="the emb drain time ran out before this request finished"):
            await task
        await stopping
        [request] = peer.sent(wire.REQUEST)
        assert [f.id for f in peer.sent(wire.CANCEL)] == [request.id]
        assert b.links[0].pending == {} and b.links[0].tokens == 0 and peer.writer.closed

    run(scenario)


def test_stop_lets_a_request_in_flight_finish_within_the_drain_time(board: Board, processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board)
        peer = processes.start(0)
        task = asyncio.create_task(b.send([[1, 2]], Timing()))
        await settle()
        stopping = asyncio.create_task(b.stop(timeout=5))
        await asyncio.sleep(0.03)
        assert not stopping.done()
        peer.rows(peer.sent()[0].id, [[2.0]])
        assert (await task).tolist() == [[2.0]]
        await stopping
        assert peer.writer.closed and peer.sent(wire.CANCEL) == []

    run(scenario)


# -- connecting ------------------------------------------------------------------------------------------------
def test_the_connect_loop_reaches_each_new_generation_without_a_request(board: Board, processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board, slots=2)
        assert not b.ready and b.failed is None
        b.start()
        b.start()  # once only
        [task] = [t for t in asyncio.all_tasks() if t.get_name() == "links-emb"]
        first = processes.start(0)
        for _ in range(100):
            await asyncio.sleep(remote.RECONNECT_S / 5)
            if b.links[0].up:
                break
        assert b.links[0].up and first.connections == 1 and b.ready
        first.hang_up()
        await settle()
        assert not b.links[0].up
        second = processes.start(0)
        for _ in range(100):
            await asyncio.sleep(remote.RECONNECT_S / 5)
            if b.links[0].up:
                break
        assert b.links[0].up and b.links[0].generation == 2 and second.connections == 1
        await b.stop()
        assert task.cancelled() and second.writer.closed

    run(scenario)


def test_a_warm_up_call_is_marked_and_held_outside_admission(board: Board, processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board)
        peer = processes.start(0)
        task = asyncio.create_task(b.call([[1, 2]], timeout=5))
        await settle()
        [frame] = peer.sent()
        assert frame.code == wire.WARMUP and board.admitted(0) == (0, 0)
        peer.rows(frame.id, [[1.0]])
        assert (await task).tolist() == [[1.0]]
        await b.stop()

    run(scenario)


def test_a_warm_up_with_no_process_ready_gives_up_after_its_timeout(board: Board, processes: Processes) -> None:
    async def scenario() -> None:
        b = batcher_of(board)
        with pytest.raises(ModelProcessDied, match=r"^no model process of emb became ready in \d+ s.$"):
            await b.call([[1]], timeout=0.1)
        await b.stop()

    run(scenario)
