"""The forward loop shared by the embedder and the reranker: token ids in, last-token states out.

Sequences are grouped into token-budget batches sorted by length (longest first), each packed
without padding and run through the trunk, which computes the last layer's MLP and final norm only at
each sequence's last token. Results come back in input order, in float32 on the CPU.

On CUDA the batches are built on pinned host memory, copied asynchronously, and the results are copied
back with non-blocking copies collected after the loop, so that the GPU never waits on the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .batching import PackedBatch, pack, plan_batches
from .model import Qwen3Model

DEFAULT_BATCH_TOKENS = {"cpu": 8192, "cuda": 65536}


class Engine:
    """Runs a trunk over many sequences under a token budget."""

    def __init__(self, model: Qwen3Model, device: torch.device, batch_tokens: int | None = None,
                 max_seqs: int | None = None) -> None:
        self.model = model
        self.device = device
        self.batch_tokens = batch_tokens or DEFAULT_BATCH_TOKENS.get(device.type, 16384)
        self.max_seqs = max_seqs

    def _run(self, batch: PackedBatch) -> torch.Tensor:
        return self.model(batch, output_indices=batch.last_indices)  # [n, H]

    @torch.inference_mode()
    def last_hidden(self, seqs: Sequence[Sequence[int]], progress: bool = False) -> torch.Tensor:
        """Final hidden state at each sequence's last token, [n, H] float32 on the CPU, input order."""
        n, hidden = len(seqs), self.model.config.hidden_size
        out = torch.empty(n, hidden, dtype=torch.float32)
        cuda = self.device.type == "cuda"
        if cuda:
            out = out.pin_memory()
        plan = plan_batches([len(s) for s in seqs], self.batch_tokens, self.max_seqs)
        bar = tqdm(total=n, disable=not progress, unit="text", desc="embedding", leave=False)
        pending: list[tuple[list[int], torch.Tensor]] = []
        for idx in plan:
            batch = pack([seqs[i] for i in idx])
            if cuda:
                batch = batch.pin_memory().to(self.device, non_blocking=True)
            h = self._run(batch).float()  # [b, H]
            if cuda:
                host = torch.empty(h.shape, dtype=torch.float32, pin_memory=True)
                host.copy_(h, non_blocking=True)
                pending.append((idx, host))
            else:
                out[idx] = h
            bar.update(len(idx))
        if cuda:
            torch.cuda.synchronize(self.device)
            for idx, host in pending:
                out[idx] = host
        bar.close()
        return out
