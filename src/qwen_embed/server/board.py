"""Counters in shared memory that every process of `serve --workers N` reads: the `Board`.

One flat int64 array (`multiprocessing.RawArray`, handed to each process when it is started), in two parts:

- per HTTP worker and model: requests admitted (from before tokenization until answered) and their tokens;
  and whether the worker serves (warmed up and accepting; kept in its slots of model 0).
  Only that worker writes its slots; admission sums the slots of every worker, so that `--max-queue` and
  `--max-queue-tokens` bound the whole server, not one worker's share. The supervisor zeroes a dead
  worker's slots before its replacement starts.
- per model process: ready (loaded, warmed up, listening), generation (bumped by the supervisor at each
  start, so a worker never reconnects to the process that died), tokens queued or running in its batcher
  and its throughput (tokens/s, for Retry-After). Only that process writes its load, only the supervisor
  its generation; ready is set by the process and cleared by the supervisor when it dies.

Reads and writes are single aligned 8-byte words, each written by one process: no lock is needed, and a
reader sees each value whole. Several workers admitting at the same moment may each see the other's
count a moment late, so the queue limit can be passed by at most (workers - 1) requests.
"""

from __future__ import annotations

from typing import Any

MODELS = ("embedding", "reranker")
_WORKER_FIELDS = 3  # requests, tokens, serving
_PROCESS_FIELDS = 4  # ready, generation, pending tokens, tokens per second


class Board:
    """The shared counters of one server (module docstring)."""

    def __init__(self, workers: int, processes: int, array: Any) -> None:
        self.workers = workers
        self.processes = processes
        self.array = array
        self._base = workers * len(MODELS) * _WORKER_FIELDS

    @classmethod
    def create(cls, ctx: Any, workers: int, processes: int) -> Board:
        """A zeroed board for `workers` HTTP workers and `processes` model processes (`ctx`: the
        multiprocessing context the processes are started with)."""
        size = workers * len(MODELS) * _WORKER_FIELDS + processes * _PROCESS_FIELDS
        return cls(workers, processes, ctx.RawArray("q", size))

    # -- HTTP workers ------------------------------------------------------------------------------
    def _w(self, worker: int, model: int) -> int:
        return (worker * len(MODELS) + model) * _WORKER_FIELDS

    def add(self, worker: int, model: int, requests: int, tokens: int) -> None:
        """Worker `worker` admits (or, negative, answers) requests and tokens of model `model`."""
        i = self._w(worker, model)
        self.array[i] += requests
        self.array[i + 1] += tokens

    def own(self, worker: int, model: int) -> tuple[int, int]:
        """(requests, tokens) that worker `worker` holds for model `model`."""
        i = self._w(worker, model)
        return int(self.array[i]), int(self.array[i + 1])

    def admitted(self, model: int) -> tuple[int, int]:
        """(requests, tokens) of model `model` admitted by every worker and not yet answered."""
        requests = tokens = 0
        for w in range(self.workers):
            i = self._w(w, model)
            requests += self.array[i]
            tokens += self.array[i + 1]
        return int(requests), int(tokens)

    def clear_worker(self, worker: int) -> None:
        """Forget what a dead worker held (its requests died with it), and that it served."""
        for m in range(len(MODELS)):
            i = self._w(worker, m)
            self.array[i] = self.array[i + 1] = self.array[i + 2] = 0

    def set_serving(self, worker: int) -> None:
        """Worker `worker` has warmed up and accepts connections."""
        self.array[self._w(worker, 0) + 2] = 1

    def serving(self, worker: int) -> bool:
        """Whether HTTP worker `worker` has warmed up and accepts connections."""
        return bool(self.array[self._w(worker, 0) + 2])

    # -- model processes ---------------------------------------------------------------------------
    def _p(self, process: int) -> int:
        return self._base + process * _PROCESS_FIELDS

    def ready(self, process: int) -> bool:
        """Whether model process `process` is loaded, warmed up and listening."""
        return bool(self.array[self._p(process)])

    def set_ready(self, process: int, ready: bool) -> None:
        """Set by the model process once listening; cleared by it on exit and by the supervisor on its death."""
        self.array[self._p(process)] = int(ready)

    def generation(self, process: int) -> int:
        """How many times the supervisor has started model process `process`."""
        return int(self.array[self._p(process) + 1])

    def next_generation(self, process: int) -> int:
        """The supervisor starts a new process in slot `process`: its generation, one more than before."""
        self.array[self._p(process) + 1] += 1
        return self.generation(process)

    def set_load(self, process: int, tokens: int, tokens_per_s: float | None = None) -> None:
        """The model process's tokens queued or running, and (when given) its throughput."""
        i = self._p(process)
        self.array[i + 2] = tokens
        if tokens_per_s is not None:
            self.array[i + 3] = int(tokens_per_s)

    def load(self, process: int) -> tuple[int, int]:
        """(tokens queued or running, tokens per second) of model process `process`."""
        i = self._p(process)
        return int(self.array[i + 2]), int(self.array[i + 3])
