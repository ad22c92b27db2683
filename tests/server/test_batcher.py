"""Batcher: merging, budgets, backpressure, errors, cancellation and draining, with a fake model at the edge."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from qwen_embed.server.batcher import Batcher, BatcherFailed, QueueFull, ShuttingDown, Timing
from qwen_embed.server.metrics import Metrics


class FakeModel:
    """Row i = [first token, length] of sequence i; records each call and its thread."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[list[list[int]]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.fail = fail

    def __call__(self, seqs: list[Sequence[int]]) -> np.ndarray:
        self.calls.append([list(s) for s in seqs])
        self.threads.add(threading.current_thread().name)
        if self.delay:
            threading.Event().wait(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        return np.array([[s[0], len(s)] for s in seqs], dtype=np.float32)


def run(coro_fn):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(coro_fn(), 30))


def test_concurrent_requests_merge_and_get_their_own_rows() -> None:
    model = FakeModel()

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=1000, max_wait_s=0.05)
        b.start()
        jobs = [[[i, 1, 2]] * (i % 3 + 1) for i in range(6)]
        outs = await asyncio.gather(*(b.submit(j) for j in jobs))
        await b.stop()
        assert len(model.calls) == 1  # all six arrived within the wait window
        for i, (job, out) in enumerate(zip(jobs, outs, strict=True)):
            assert out.shape == (len(job), 2) and (out[:, 0] == i).all()
        assert model.threads == {"model-m_0"}  # the model's own worker thread, never the event loop
        assert b.pending_requests == 0 and b.pending_tokens == 0

    run(scenario)


def test_token_and_request_budgets_split_batches_in_fifo_order() -> None:
    model = FakeModel()

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=10, max_batch_requests=3, max_wait_s=0.05)
        b.start()
        outs = await asyncio.gather(*(b.submit([[i] * 4]) for i in range(5)))  # 4 tokens each
        big = await b.submit([[9] * 25])  # over the budget alone: runs alone
        await b.stop()
        assert [len(c) for c in model.calls] == [2, 2, 1, 1]
        assert [c[0][0] for c in model.calls[:3]] == [0, 2, 4]
        assert [int(o[0, 0]) for o in outs] == [0, 1, 2, 3, 4] and big[0, 1] == 25

    run(scenario)


def test_queue_limit_answers_overloaded_at_once() -> None:
    model = FakeModel(delay=0.2)

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=100, max_wait_s=0.0, max_queue=2, max_queue_tokens=50)
        b.start()
        first = asyncio.ensure_future(b.submit([[1, 2]]))
        second = asyncio.ensure_future(b.submit([[3, 4]]))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as e:
            await b.submit([[5]])
        assert e.value.retry_after >= 1  # errors.py maps it to 429 with Retry-After (test_errors.py)
        assert "2 requests" in str(e.value)
        await asyncio.gather(first, second)
        big = asyncio.ensure_future(b.submit([[1] * 30]))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="tokens"):
            await b.submit([[1] * 30])  # 60 tokens > 50 while another request is pending
        await big
        assert (await b.submit([[1] * 60]))[0, 1] == 60  # alone, a big request is taken
        await b.stop()

    run(scenario)


def test_a_failing_batch_fails_its_requests_and_the_loop_goes_on() -> None:
    model = FakeModel(fail=True)

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=100, max_wait_s=0.02)
        b.start()
        results = await asyncio.gather(b.submit([[1]]), b.submit([[2]]), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        model.fail = False
        assert (await b.submit([[3]]))[0, 0] == 3
        await b.stop()

    run(scenario)


def test_a_dead_batch_loop_answers_its_requests_and_refuses_new_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug that kills the batch loop itself (here: forming a batch raises) must not leave requests waiting
    forever: the queued ones get BatcherFailed at once, the batcher reports not ready and refuses more."""
    model = FakeModel()

    def broken(self: Batcher) -> list[Any]:
        raise RuntimeError("a bug in forming the batch")

    monkeypatch.setattr(Batcher, "_take", broken)

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=100, max_wait_s=0.02)
        b.start()
        assert b.ready
        results = await asyncio.gather(b.submit([[1]]), b.submit([[2]]), return_exceptions=True)
        assert all(isinstance(r, BatcherFailed) for r in results), results
        assert "batch loop stopped on an internal error (RuntimeError: a bug in forming the batch)" in str(results[0])
        assert not b.ready and b.failed is not None and b.pending_requests == 0 and b.pending_tokens == 0
        with pytest.raises(BatcherFailed):
            await b.submit([[3]])
        with pytest.raises(BatcherFailed):
            b.admit()
        assert model.calls == []

    run(scenario)


def test_cancelled_request_is_skipped_and_released() -> None:
    model = FakeModel()

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=100, max_wait_s=0.1)
        b.start()
        gone = asyncio.ensure_future(b.submit([[7, 7]]))
        stays = asyncio.ensure_future(b.submit([[8]]))
        await asyncio.sleep(0.01)
        gone.cancel()
        assert (await stays)[0, 0] == 8
        await b.stop()
        assert model.calls == [[[8]]]
        assert b.pending_requests == 0 and b.pending_tokens == 0

    run(scenario)


def test_stop_drains_accepted_work_then_refuses() -> None:
    model = FakeModel()
    metrics = Metrics()

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=100, max_wait_s=5.0, metrics=metrics)  # would wait 5 s
        b.start()
        timing = Timing()
        pending = asyncio.ensure_future(b.submit([[1, 2, 3]], timing))
        await asyncio.sleep(0.01)
        await b.stop()  # does not wait out the window: it runs what was accepted, then ends
        assert (await pending)[0, 1] == 3
        assert timing.queue < 1.0 and timing.inference > 0
        with pytest.raises(ShuttingDown):  # errors.py maps it to 503
            await b.submit([[1]])

    run(scenario)
    text = metrics.render().decode()
    assert 'qwen_embed_batch_requests_count{model="m"} 1.0' in text
    assert 'qwen_embed_batch_tokens_sum{model="m"} 3.0' in text
    assert 'qwen_embed_queue_requests{model="m"} 0.0' in text


def test_two_batchers_can_share_one_worker_thread() -> None:
    a, b = FakeModel(), FakeModel()

    async def scenario() -> None:
        from concurrent.futures import ThreadPoolExecutor

        shared = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-cuda")
        x = Batcher("a", a, max_batch_tokens=100, max_wait_s=0.01, worker=shared)
        y = Batcher("b", b, max_batch_tokens=100, max_wait_s=0.01, worker=shared)
        x.start()
        y.start()
        out = await asyncio.gather(x.submit([[1]]), y.submit([[2]]))
        await x.stop()  # does not shut the shared worker: y still runs
        assert (await y.submit([[3]]))[0, 0] == 3
        await y.stop()
        shared.shutdown(wait=True)
        assert [o[0, 0] for o in out] == [1, 2]
        assert a.threads == b.threads == {"model-cuda_0"}

    run(scenario)


def test_two_batches_in_flight_answer_every_request_once() -> None:
    import asyncio

    import numpy as np

    from qwen_embed.server.batcher import Batcher

    calls: list[int] = []

    def run(seqs):  # type: ignore[no-untyped-def]
        calls.append(len(seqs))
        return np.array([[float(s[0])] for s in seqs], dtype=np.float32)

    async def main() -> list[float]:
        b = Batcher("t", run, max_batch_tokens=8, max_wait_s=0.001, max_inflight=2)
        b.start()
        outs = await asyncio.gather(*(b.submit([[i, i]]) for i in range(40)))
        await b.stop()
        return [float(o[0, 0]) for o in outs]

    assert asyncio.run(main()) == [float(i) for i in range(40)]
    assert sum(calls) == 40 and max(calls) <= 4  # budget 8 tokens: at most 4 two-token requests a batch


def test_an_admission_holds_a_place_from_before_tokenization() -> None:
    model = FakeModel()

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=100, max_wait_s=0.0, max_queue=1)
        b.start()
        adm = b.admit()  # a request being tokenized: counted
        with pytest.raises(QueueFull, match="1 requests"):
            b.admit()
        with pytest.raises(QueueFull):
            await b.submit([[1]])
        assert (await adm.submit([[4, 5]]))[0, 1] == 2
        adm.release()  # after submit: nothing left to give back
        assert b.pending_requests == 0
        other = b.admit()
        other.release()  # failed before submit: the place is given back
        assert b.pending_requests == 0 and (await b.submit([[6]]))[0, 0] == 6
        await b.stop()

    run(scenario)


def test_a_request_admitted_before_the_drain_is_run_not_refused() -> None:
    """SIGTERM while an accepted request is still being tokenized (admitted, not yet queued): the drain runs
    it when it arrives, and the loop, drained with an empty queue, waits for it (before: 503 shutting_down,
    a flake of tests/server/test_cli.py's SIGTERM test). New requests are refused meanwhile."""
    model = FakeModel()

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=100, max_wait_s=5.0)
        b.start()
        tokenizing = b.admit()
        b.drain(timeout=10.0)
        with pytest.raises(ShuttingDown, match="shutting down; retry"):
            b.admit()
        with pytest.raises(ShuttingDown, match="shutting down; retry"):
            await b.submit([[1]])
        await asyncio.sleep(0.05)  # the loop has seen the drain with nothing queued
        stopping = asyncio.ensure_future(b.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()  # it waits for the request being tokenized
        assert (await tokenizing.submit([[7, 8, 9]]))[0].tolist() == [7, 3]
        await asyncio.wait_for(stopping, 5)
        assert b.pending_requests == 0

    run(scenario)


def test_a_request_admitted_before_the_drain_gets_503_once_the_drain_time_ran_out() -> None:
    model = FakeModel()

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=100, max_wait_s=0.0)
        b.start()
        late, dropped = b.admit(), b.admit()
        # the stop waits for the places still held until the deadline, not longer (one never given back
        # cannot hold the server up)
        await asyncio.wait_for(b.stop(timeout=0.05), 5)
        with pytest.raises(ShuttingDown, match="drain time ran out"):
            await late.submit([[1, 2]])
        dropped.release()  # the route failed before submitting
        assert b.pending_requests == 0 and model.calls == []

    run(scenario)


def test_a_request_over_the_budget_runs_as_several_batches_in_order() -> None:
    model = FakeModel()

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=10, max_wait_s=0.0)
        b.start()
        seqs = [[i] * 4 for i in range(7)]  # 28 tokens, 2 sequences (8 tokens) a batch
        out = await b.submit(seqs)
        await b.stop()
        assert [len(c) for c in model.calls] == [2, 2, 2, 1]
        assert out[:, 0].tolist() == list(range(7))

    run(scenario)


def test_drain_deadline_answers_shutting_down_between_batches() -> None:
    model = FakeModel(delay=0.05)

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=4, max_wait_s=0.0)
        b.start()
        big = asyncio.ensure_future(b.submit([[i] * 4 for i in range(100)]))  # 100 batches of 50 ms: 5 s
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await b.stop(timeout=0.3)
        assert loop.time() - t0 < 0.6  # the deadline, plus the one batch that was running
        with pytest.raises(ShuttingDown, match="drain time ran out"):
            await big
        assert len(model.calls) < 20 and b.pending_requests == 0

    run(scenario)


def test_a_cancelled_large_request_stops_between_batches() -> None:
    model = FakeModel(delay=0.02)

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=4, max_wait_s=0.0)
        b.start()
        big = asyncio.ensure_future(b.submit([[i] * 4 for i in range(100)]))
        await asyncio.sleep(0.1)
        big.cancel()
        await asyncio.sleep(0.1)
        ran = len(model.calls)
        assert (await b.submit([[7]]))[0, 0] == 7
        await b.stop()
        assert ran < 20 and len(model.calls) <= ran + 2
        assert b.pending_requests == 0 and b.pending_tokens == 0

    run(scenario)


def test_a_request_alone_in_the_server_does_not_wait_for_the_window() -> None:
    model = FakeModel()

    async def scenario() -> None:
        b = Batcher("m", model, max_batch_tokens=100, max_wait_s=0.5)
        b.start()
        t0 = time.perf_counter()
        await b.submit([[1]])  # nobody else admitted: at once
        alone = time.perf_counter() - t0
        adm = b.admit()  # another request holds a place (tokenizing): this one waits for it
        t0 = time.perf_counter()
        await b.submit([[2]])
        company = time.perf_counter() - t0
        adm.release()
        outs = await asyncio.gather(b.submit([[3]]), b.submit([[4]]))  # two at once still merge
        await b.stop()
        assert alone < 0.25 and company >= 0.45, (alone, company)
        assert [int(o[0, 0]) for o in outs] == [3, 4] and model.calls[-1] == [[3], [4]]

    run(scenario)
