"""One model process per device behind one `RunFn`: `ModelPool`, and `start_pool` that makes it.

`serve --devices cuda:0,cuda:1` (or `cpu,cpu`) starts a `ModelProcess` per device for each served
model; the model's batcher (in the HTTP process) hands each batch to the pool, which sends it to the
ready process with the fewest tokens in flight, so two devices share the load by what they hold, not
by turns. The batcher gets two worker threads per process (`inflight`): while one batch runs in a
process, the next waits on its pipe and starts the moment the first ends.

Faults: a process that dies fails only the batches it held (`ModelProcessDied`, a 503), is restarted
in the background (model_process.py), and takes no batch until it is ready again; the pool is `ready`
(and /health 200) while any of its processes is.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import InputError
from ..settings import device_type
from .model_process import ModelProcess, ModelProcessDied, ModelSpec

DEVICE = re.compile(r"([a-z]+)(?::(\d+))?")  # torch's spelling of a device: type[:index]
OTHER_DEVICE_TYPES = ("mps", "xpu", "meta", "hpu", "xla", "mtia", "maia", "ipu", "lazy", "vulkan")


def parse_devices(text: str | None) -> list[str]:
    """`cuda:0,cuda:1` / `cpu,cpu` -> the list; None -> every CUDA device, else one `cpu`.

    torch is imported only to look for CUDA (None, or a cuda device named): a `serve --workers` supervisor
    on CPU devices never imports it."""
    if text is None or text == "":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    devices = [d.strip() for d in text.split(",") if d.strip()]
    for d in devices:
        match = DEVICE.fullmatch(d)
        kind = match.group(1) if match else None
        if kind in OTHER_DEVICE_TYPES:
            raise InputError(f"--devices: {d!r} is neither cpu nor cuda:N.")
        if kind not in ("cpu", "cuda"):
            raise InputError(f"--devices: {d!r} is not a device; use cpu, cuda or cuda:N, comma-separated "
                             "(cuda:0,cuda:1).")
        if kind == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise InputError(f"--devices: {d!r} was asked for but CUDA is not available here; use cpu.")
    if not devices:
        raise InputError(f"--devices {text!r} names no device; use e.g. cuda:0,cuda:1 or cpu.")
    return devices


class ModelPool:
    """A `RunFn` over several model processes of one model (module docstring); `close` ends them."""

    def __init__(self, processes: Sequence[ModelProcess]) -> None:
        self.processes = list(processes)
        self._tokens = [0] * len(self.processes)  # tokens in flight per process
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """True while at least one process is loaded and serving."""
        return any(p.ready for p in self.processes)

    @property
    def inflight(self) -> int:
        """Batches the batcher should hand over at once: two per process."""
        return 2 * len(self.processes)

    def __call__(self, seqs: list[Sequence[int]]) -> np.ndarray:
        """Run one batch on the ready process with the fewest tokens in flight."""
        tokens = sum(len(s) for s in seqs)
        with self._lock:
            live = [i for i, p in enumerate(self.processes) if p.ready]
            if not live:
                raise ModelProcessDied(f"every model process of {self.processes[0].spec.path} is restarting; "
                                       "retry shortly.")
            i = min(live, key=lambda k: self._tokens[k])
            self._tokens[i] += tokens
        try:
            return self.processes[i](seqs)
        finally:
            with self._lock:
                self._tokens[i] -= tokens

    def worker(self) -> ThreadPoolExecutor:
        """The batcher's worker threads: one per batch in flight."""
        return ThreadPoolExecutor(max_workers=self.inflight, thread_name_prefix="model-client")

    def close(self, timeout: float = 10.0) -> None:
        """End every process (each gets `timeout` seconds to exit)."""
        for p in self.processes:
            p.close(timeout)


def start_pool(spec: ModelSpec, devices: Sequence[str]) -> ModelPool:
    """A process per device loading `spec` (each started and loaded before this returns). Several CPU
    processes share the cores unless `spec.threads` is given (`ModelSpec.thread_share`: one gets the
    default of threads.py, as the in-process model)."""
    cpus = sum(device_type(d) == "cpu" for d in devices)
    processes: list[ModelProcess] = []
    try:
        for d in devices:
            one = ModelSpec(**{**spec.__dict__, "device": d, "thread_share": max(1, cpus)})
            processes.append(ModelProcess(one))
    except BaseException:
        for p in processes:
            p.close(2.0)
        raise
    return ModelPool(processes)
