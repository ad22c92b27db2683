"""The shared counters of `serve --workers N` (server/board.py), against its module docstring.

The contract: one zeroed int64 array (`RawArray("q")`) of `workers x models x 3` worker slots then
`processes x 4` process slots; each slot has one writer; admission sums every worker's slots; the supervisor
clears a dead worker's slots (its requests and its `serving` flag) and bumps a process's generation at each
start; `set_load` keeps the throughput when none is given; every value is one whole 8-byte word, so a board
rebuilt in another process over the same array (what each started process holds) sees the same values.
Values are hand-worked. Real processes are not started here (tests/server/test_workers.py does).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import threading
from typing import Any

import pytest

from qwen_embed.server.board import MODELS, Board

EMBEDDING, RERANKER = 0, 1


@pytest.fixture
def ctx() -> Any:
    return mp.get_context("spawn")


@pytest.fixture
def board(ctx: Any) -> Board:
    return Board.create(ctx, workers=3, processes=2)


def test_a_new_board_is_zeroed_and_sized_as_documented(ctx: Any) -> None:
    b = Board.create(ctx, workers=3, processes=2)
    assert len(MODELS) == 2
    assert len(b.array) == 3 * 2 * 3 + 2 * 4 == 26
    assert list(b.array) == [0] * 26
    assert ctypes.sizeof(b.array._type_) == 8  # int64: whole 8-byte words
    assert not any(b.serving(w) for w in range(3)) and not any(b.ready(p) for p in range(2))
    assert [b.generation(p) for p in range(2)] == [0, 0] and b.load(1) == (0, 0)
    assert b.admitted(EMBEDDING) == b.admitted(RERANKER) == (0, 0)


def test_admission_sums_every_worker_of_one_model(board: Board) -> None:
    board.add(0, EMBEDDING, 2, 100)
    board.add(1, EMBEDDING, 1, 30)
    board.add(2, EMBEDDING, 4, 7)
    board.add(1, RERANKER, 5, 500)
    assert board.admitted(EMBEDDING) == (7, 137)
    assert board.admitted(RERANKER) == (5, 500)
    assert board.own(1, EMBEDDING) == (1, 30) and board.own(1, RERANKER) == (5, 500)
    assert board.own(0, RERANKER) == (0, 0)


def test_answering_gives_back_what_admission_took(board: Board) -> None:
    board.add(0, RERANKER, 1, 40)
    board.add(0, RERANKER, 1, 60)
    board.add(0, RERANKER, -1, -40)
    assert board.own(0, RERANKER) == board.admitted(RERANKER) == (1, 60)
    board.add(0, RERANKER, -1, -60)
    assert board.admitted(RERANKER) == (0, 0)


def test_counts_past_32_bits_are_whole(board: Board) -> None:
    board.add(2, EMBEDDING, 1, 3 * 2**32 + 5)
    board.add(1, EMBEDDING, 1, 2**40)
    assert board.admitted(EMBEDDING) == (2, 3 * 2**32 + 5 + 2**40)
    board.set_load(1, 2**33, 2**34 + 0.9)
    assert board.load(1) == (2**33, 2**34)


def test_clearing_a_dead_worker_forgets_its_requests_and_that_it_served(board: Board) -> None:
    for w in range(3):
        board.add(w, EMBEDDING, w + 1, 10 * (w + 1))
        board.add(w, RERANKER, 1, 5)
        board.set_serving(w)
    board.set_ready(0, True)
    board.next_generation(0)
    board.set_load(0, 9, 99.0)
    board.clear_worker(1)
    assert board.own(1, EMBEDDING) == board.own(1, RERANKER) == (0, 0) and not board.serving(1)
    assert board.admitted(EMBEDDING) == (1 + 3, 10 + 30) and board.admitted(RERANKER) == (2, 10)
    assert board.serving(0) and board.serving(2)
    assert (board.ready(0), board.generation(0), board.load(0)) == (True, 1, (9, 99))  # processes untouched


def test_serving_is_one_flag_per_worker(board: Board) -> None:
    board.set_serving(2)
    assert [board.serving(w) for w in range(3)] == [False, False, True]
    assert board.admitted(EMBEDDING) == board.admitted(RERANKER) == (0, 0)  # not counted as a request


def test_ready_is_set_and_cleared_per_process(board: Board) -> None:
    board.set_ready(1, True)
    assert [board.ready(p) for p in range(2)] == [False, True]
    board.set_ready(1, False)
    assert not board.ready(1)


def test_each_start_is_one_more_generation(board: Board) -> None:
    assert [board.next_generation(0) for _ in range(3)] == [1, 2, 3]
    assert board.generation(0) == 3 and board.generation(1) == 0
    board.set_ready(0, False)
    assert board.generation(0) == 3  # a death clears ready, never the generation


def test_set_load_keeps_the_throughput_when_none_is_given(board: Board) -> None:
    board.set_load(0, 120, 5000.7)
    assert board.load(0) == (120, 5000)  # whole tokens per second
    board.set_load(0, 30)
    assert board.load(0) == (30, 5000)
    board.set_load(0, 0, 0.0)
    assert board.load(0) == (0, 0)
    assert board.load(1) == (0, 0)


def test_no_slot_overlaps_another(ctx: Any) -> None:
    """Write a distinct value through every setter; each reads back its own, whatever the order."""
    b = Board.create(ctx, workers=2, processes=3)
    for w in range(2):
        for m in range(len(MODELS)):
            b.add(w, m, 10 * w + m + 1, 1000 * w + 100 * m + 7)
    for p in range(3):
        b.set_ready(p, p != 1)
        for _ in range(p + 1):
            b.next_generation(p)
        b.set_load(p, 50 + p, 600.0 + p)
    b.set_serving(1)
    for w in range(2):
        for m in range(len(MODELS)):
            assert b.own(w, m) == (10 * w + m + 1, 1000 * w + 100 * m + 7)
    assert [b.serving(w) for w in range(2)] == [False, True]
    assert [b.ready(p) for p in range(3)] == [True, False, True]
    assert [b.generation(p) for p in range(3)] == [1, 2, 3]
    assert [b.load(p) for p in range(3)] == [(50, 600), (51, 601), (52, 602)]


def test_a_board_over_the_same_array_sees_the_same_values(board: Board) -> None:
    """What each started process holds: a Board of the same shape over the array it was handed."""
    other = Board(board.workers, board.processes, board.array)
    other.add(2, RERANKER, 3, 33)
    other.set_ready(1, True)
    board.set_load(1, 8, 80.0)
    assert board.admitted(RERANKER) == (3, 33) and board.ready(1)
    assert other.load(1) == (8, 80)


def test_workers_adding_to_their_own_slots_from_threads_lose_nothing(board: Board) -> None:
    """One writer per slot: concurrent writers of different slots never lose an update."""
    rounds = 2000

    def worker(w: int) -> None:
        for _ in range(rounds):
            board.add(w, EMBEDDING, 1, 3)
            board.add(w, EMBEDDING, -1, -3)
            board.add(w, EMBEDDING, 1, 3)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert board.admitted(EMBEDDING) == (3 * rounds, 9 * rounds)


def test_a_board_with_no_workers_has_only_process_slots(ctx: Any) -> None:
    b = Board.create(ctx, workers=0, processes=1)
    assert len(b.array) == 4 and b.admitted(EMBEDDING) == (0, 0)
    b.set_ready(0, True)
    assert b.ready(0)
