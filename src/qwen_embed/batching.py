"""PackedBatch, the one batch format, and token-budget batching.

Sequences are concatenated without padding; `cu_seqlens` holds the cumulative lengths (int32,
[n + 1]) and positions restart at 0 for each sequence, as flash-attention's varlen kernels expect.
`plan_batches` groups sequences by length under a token budget: longest first, so the first batch
shows the peak memory, and the caller restores the input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    """`input_ids` [T], `position_ids` [T], `cu_seqlens` [n + 1] int32, `max_seqlen`."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_seqs(self) -> int:
        return int(self.cu_seqlens.shape[0]) - 1

    @property
    def last_indices(self) -> torch.Tensor:
        """Index of each sequence's last token in the packed tensor, [n] int64."""
        return self.cu_seqlens[1:].long() - 1

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        return PackedBatch(
            self.input_ids.to(device, non_blocking=non_blocking),
            self.position_ids.to(device, non_blocking=non_blocking),
            self.cu_seqlens.to(device, non_blocking=non_blocking),
            self.max_seqlen,
        )

    def pin_memory(self) -> PackedBatch:
        return PackedBatch(
            self.input_ids.pin_memory(),
            self.position_ids.pin_memory(),
            self.cu_seqlens.pin_memory(),
            self.max_seqlen,
        )


def pack(seqs: Sequence[Sequence[int]], start_position: int = 0) -> PackedBatch:
    """Concatenate token-id sequences into a PackedBatch (every sequence must be non-empty).

    `start_position` offsets the positions (continuations of a shared prefix of that length)."""
    lengths = [len(s) for s in seqs]
    assert lengths and min(lengths) > 0, "pack() needs non-empty sequences"
    flat = [t for s in seqs for t in s]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    input_ids = torch.tensor(flat, dtype=torch.long)
    cu_seqlens = torch.tensor(cu, dtype=torch.int32)
    position_ids = torch.cat([torch.arange(start_position, start_position + n) for n in lengths])
    return PackedBatch(input_ids, position_ids, cu_seqlens, max(lengths))


def plan_batches(lengths: Sequence[int], max_tokens: int, max_seqs: int | None = None) -> list[list[int]]:
    """Group indices into batches of at most `max_tokens` tokens (and `max_seqs` sequences).

    Longest first. A sequence longer than the budget gets a batch of its own (the caller has already
    truncated it to the model's limit). Returns lists of indices into `lengths`.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_tokens = 0
    for i in order:
        n = lengths[i]
        full = cur and (cur_tokens + n > max_tokens or (max_seqs is not None and len(cur) >= max_seqs))
        if full:
            batches.append(cur)
            cur, cur_tokens = [], 0
        cur.append(i)
        cur_tokens += n
    if cur:
        batches.append(cur)
    return batches
