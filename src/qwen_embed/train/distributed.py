"""Data parallel training over torch.distributed: gloo on CPU, NCCL on GPU, any world size.

Started by `torchrun --nproc-per-node N -m qwen_embed train embed --config ...` (torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); a plain start is a world of one and needs no
process group. Every rank reads the same global batch and keeps its slice of rows; the query and
positive embeddings are gathered with gradients (`torch.distributed.nn.functional.all_gather`, whose
backward sums the gradient that every rank's loss sends to a rank's rows), each rank computes the loss
of its own rows with labels offset by its rank, and the parameter gradients are averaged. With equal
slices this gives the loss and gradients of one process on the whole global batch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Rank, world size and the device of this process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 - immutable

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init(device: str | None = None, backend: str | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment (a world of one otherwise).

    device: "cpu", "cuda" or None (CUDA when available); on CUDA each rank takes cuda:LOCAL_RANK.
    backend: None picks NCCL for CUDA and gloo for CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        dev = torch.device("cuda", local) if world > 1 or device in (None, "cuda") else torch.device(device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        # device_id binds NCCL to this rank's GPU (barriers and collectives then never guess the device)
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"), rank=rank, world_size=world,
                                device_id=dev if use_cuda else None)
    return DistInfo(rank, world, local, dev)


def gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """[b, ...] on every rank -> [world * b, ...] in rank order, differentiable."""
    if not info.active:
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # deprecated in favour of a private API; still the public autograd gather
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_tensor(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Like gather_with_grad, without a graph (for keys)."""
    if not info.active:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo, bucket: int = 1 << 25) -> None:
    """Average .grad over the ranks (all-reduces of flat buckets of about `bucket` elements)."""
    if not info.active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    group: list[torch.Tensor] = []
    size = 0
    for i, g in enumerate(grads):
        group.append(g)
        size += g.numel()
        if size >= bucket or i == len(grads) - 1:
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= info.world_size
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()
            group, size = [], 0


def average_scalar(value: float, info: DistInfo) -> float:
    """Mean of a float over the ranks (for logging)."""
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()
