"""The server's threads, made in one place: the CPU pool (tokenization, validation of large bodies,
response encoding) and the model worker threads (one per model, or one per CUDA device shared by the
models on it: CUDA-graph capture and compilation in one thread must not race the other's kernels).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from .batcher import model_worker


def device_key(device: torch.device) -> tuple[str, int | None]:
    """A device as the hardware it names: `cuda` is the current CUDA device (`cuda:0` unless set otherwise)."""
    if device.type == "cuda" and device.index is None:
        return "cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0
    return device.type, device.index


class Pools:
    """The CPU pool and the model workers of one app; `shutdown` ends them all."""

    def __init__(self, cpu_threads: int, devices: list[torch.device]) -> None:
        self.cpu = ThreadPoolExecutor(max_workers=cpu_threads, thread_name_prefix="tokenize")
        # models on one CUDA device share one worker; elsewhere each batcher makes its own (None here)
        cuda = [d for d in devices if d.type == "cuda"]
        self.shared: ThreadPoolExecutor | None = None
        if len(cuda) >= 2 and all(device_key(d) == device_key(cuda[0]) for d in cuda):  # `cuda` is `cuda:0` too
            self.shared = model_worker("cuda")

    def worker_for(self, device: torch.device) -> ThreadPoolExecutor | None:
        """The shared worker of `device` when its models share one, else None (the batcher's own)."""
        return self.shared if self.shared is not None and device.type == "cuda" else None

    def shutdown(self) -> None:
        if self.shared is not None:
            self.shared.shutdown(wait=True, cancel_futures=True)
        self.cpu.shutdown(wait=True, cancel_futures=True)
