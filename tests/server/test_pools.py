"""The server's threads (server/pools.py), against its docstring: one CPU pool of `cpu_threads` threads named
"tokenize"; one model worker shared by the models only when two or more sit on one CUDA device (CUDA-graph
capture in one thread must not race the other's kernels), else None (each batcher makes its own); `shutdown`
ends them all, cancelling what was queued. No GPU is needed: `torch.device("cuda:0")` is only a name here.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest
import torch

from qwen_embed.server.pools import Pools

CPU, CUDA0, CUDA1 = torch.device("cpu"), torch.device("cuda:0"), torch.device("cuda:1")


def thread_name(pool: ThreadPoolExecutor) -> str:
    return pool.submit(lambda: threading.current_thread().name).result(5)


def test_the_cpu_pool_has_the_threads_asked_for_named_tokenize() -> None:
    pools = Pools(3, [])
    try:
        assert pools.cpu._max_workers == 3
        assert thread_name(pools.cpu).startswith("tokenize")
        gate = threading.Event()
        names: set[str] = set()
        started = threading.Barrier(4)

        def busy() -> None:  # three tasks run at once: three threads (a barrier of 3 + this thread)
            names.add(threading.current_thread().name)
            started.wait(5)
            gate.wait(5)

        futures = [pools.cpu.submit(busy) for _ in range(3)]
        started.wait(5)
        gate.set()
        for f in futures:
            f.result(5)
        assert len(names) == 3
    finally:
        pools.shutdown()


@pytest.mark.parametrize(("devices", "shared"), [
    ([], False),
    ([CPU], False),
    ([CPU, CPU], False),  # CPU models never share: each batcher has its own thread
    ([CUDA0], False),  # one model on the device: nothing to share
    ([CUDA0, CUDA0], True),  # both models on one device: one thread
    ([CUDA0, CUDA1], False),  # two devices: each model its own
    ([torch.device("cuda"), CUDA0], True),  # two spellings of the current device (no GPU here: device 0)
    ([torch.device("cuda"), CUDA1], False),
    ([CPU, CUDA0], False),
])
def test_models_share_a_worker_only_on_one_cuda_device(devices: list[torch.device], shared: bool) -> None:
    pools = Pools(1, devices)
    try:
        assert (pools.shared is not None) is shared
        for d in devices:
            worker = pools.worker_for(d)
            if d.type == "cuda" and shared:
                assert worker is pools.shared
            else:
                assert worker is None
        assert pools.worker_for(CPU) is None  # a CPU model never gets the CUDA worker
    finally:
        pools.shutdown()


def test_the_shared_worker_is_one_model_thread() -> None:
    pools = Pools(1, [CUDA0, CUDA0])
    try:
        assert pools.shared is not None and pools.shared._max_workers == 1
        assert thread_name(pools.shared).startswith("model-cuda")
    finally:
        pools.shutdown()


def test_shutdown_ends_every_pool_and_cancels_what_was_queued() -> None:
    pools = Pools(1, [CUDA0, CUDA0])
    assert pools.shared is not None
    gate = threading.Event()
    running = threading.Event()

    def block() -> None:
        running.set()
        gate.wait(5)

    first = pools.cpu.submit(block)
    queued = pools.cpu.submit(lambda: "never")
    running.wait(5)
    stopper = threading.Thread(target=pools.shutdown)
    stopper.start()  # waits for the running task; the queued one is cancelled at once
    with pytest.raises(CancelledError):
        queued.result(5)
    gate.set()
    stopper.join(5)
    assert not stopper.is_alive() and first.done() and first.exception() is None
    for pool in (pools.cpu, pools.shared):
        with pytest.raises(RuntimeError, match="after shutdown"):
            pool.submit(lambda: None)
