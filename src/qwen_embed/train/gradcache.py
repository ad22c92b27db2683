"""GradCache: a large contrastive batch trained in bounded memory.

Follows Gao et al., "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup" (2021)
and its reference code (luyug/GradCache): the loss couples every embedding of the batch, but the
encoder only couples the tokens of one sequence. So:

1. forward every chunk without a graph and keep only the embeddings [n, H] (and the RNG state
   before each chunk);
2. compute the loss on the cached embeddings and backpropagate to them (d loss / d embedding);
3. forward each chunk again with a graph, with the RNG state of step 1 replayed, and backpropagate
   the cached embedding gradients through it (surrogate: sum(embedding * gradient)).

Parameter gradients equal those of the full batch up to float rounding. Peak memory is that of one
chunk plus the [n, H] embeddings. Replaying the RNG makes dropout (or anything random in the encoder)
draw the same numbers in both passes; the global RNG ends where a plain full-batch step leaves it.
Chunks are formed from consecutive sequences under a token budget and packed without padding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..batching import PackedBatch, pack

Encoder = Callable[[PackedBatch], torch.Tensor]  # packed chunk -> [n, H] embeddings
LossFn = Callable[[torch.Tensor], torch.Tensor]  # all embeddings [N, H] -> scalar loss


def chunk_sequences(seqs: Sequence[Sequence[int]], chunk_tokens: int) -> list[list[int]]:
    """Consecutive groups of sequence indices with at most `chunk_tokens` tokens each (at least one)."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    tokens = 0
    for i, s in enumerate(seqs):
        if cur and tokens + len(s) > chunk_tokens:
            chunks.append(cur)
            cur, tokens = [], 0
        cur.append(i)
        tokens += len(s)
    if cur:
        chunks.append(cur)
    return chunks


@dataclass
class RngState:
    """The CPU generator's state and that of each CUDA device in use."""

    cpu: torch.Tensor
    cuda: list[torch.Tensor]
    devices: list[int]

    @classmethod
    def capture(cls, devices: Sequence[int]) -> RngState:
        return cls(torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices], list(devices))

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block with this state, and leave the global generators as they were before it."""
        with torch.random.fork_rng(devices=self.devices, enabled=True):
            torch.set_rng_state(self.cpu)
            for d, st in zip(self.devices, self.cuda, strict=True):
                torch.cuda.set_rng_state(st, d)
            yield


def cuda_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def full_batch_step(encode: Encoder, chunks: Sequence[PackedBatch], loss_fn: LossFn) -> torch.Tensor:
    """The plain step (reference): every chunk forward with a graph, one loss, one backward."""
    emb = torch.cat([encode(c) for c in chunks])  # [N, H]
    loss = loss_fn(emb)
    loss.backward()
    return loss.detach()


def grad_cache_step(encode: Encoder, chunks: Sequence[PackedBatch], loss_fn: LossFn,
                    device: torch.device | None = None) -> torch.Tensor:
    """One GradCache step: accumulates parameter gradients (.grad) and returns the loss."""
    devices = cuda_devices(device) if device is not None else []
    states: list[RngState] = []
    cached: list[torch.Tensor] = []
    with torch.no_grad():
        for c in chunks:
            states.append(RngState.capture(devices))
            cached.append(encode(c))  # [n_c, H]
    emb = torch.cat(cached).detach().requires_grad_(True)  # [N, H]
    loss = loss_fn(emb)
    loss.backward()
    assert emb.grad is not None
    grads = emb.grad.split([e.shape[0] for e in cached])
    del cached, emb
    for c, st, g in zip(chunks, states, grads, strict=True):
        with st.replay():
            e = encode(c)  # [n_c, H], with a graph
        torch.sum(e * g.to(e.dtype)).backward()
    return loss.detach()


def pack_chunks(seqs: Sequence[Sequence[int]], chunk_tokens: int, device: torch.device) -> list[PackedBatch]:
    """Pack consecutive sequences into token-budget chunks on `device`."""
    return [pack([seqs[i] for i in idx]).to(device) for idx in chunk_sequences(seqs, chunk_tokens)]
