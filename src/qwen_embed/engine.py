"""The forward loop shared by the embedder and the reranker: token ids in, last-token states out.

Sequences are grouped into token-budget batches sorted by length (longest first), each packed
without padding and run through the trunk, which computes the last layer's MLP and final norm only at
each sequence's last token. Results come back in input order, in float32 on the CPU.

Input may arrive in chunks (an iterator), so that the caller tokenizes chunk i + 1 in a worker pool
while the device runs chunk i. Nothing waits for the device inside the loop: batches are built on the
host (pinned memory on CUDA) and copied asynchronously; each result is copied, non-blocking, into
one pinned buffer in processing order; a single synchronisation at the end precedes the reordering.

On the CPU the eager `Engine` runs: its time goes to the float32 matmuls (about 70% on the 0.6B shape)
and attention is the kernel chosen in attention.py; torch.compile of the layers was measured there and
dropped (the per-sequence attention loop breaks the graph and recompiles for each batch shape).

On CUDA (`CudaEngine`) the decoder layers are compiled with torch.compile (dynamic shapes: no
recompilation per batch size; Inductor fuses RMSNorm, q/k-norm + RoPE, SwiGLU and the residual adds)
and small batches (up to GRAPH_TOKENS tokens) replay CUDA graphs captured per (tokens, sequences)
bucket, padded with dummy sequences, so that single queries are not launch-bound.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .batching import PackedBatch, pack, plan_batches
from .model import Qwen3Model, SharedPrefix
from .settings import DEFAULT_BATCH_TOKENS as DEFAULT_BATCH_TOKENS
from .settings import check_batch_tokens


@dataclass
class Chunk:
    """Sequences that all continue `prefix_ids` (empty: no shared prefix), for `last_hidden_stream`."""

    seqs: Sequence[Sequence[int]]
    prefix_ids: Sequence[int] = ()


class Engine:
    """Runs a trunk over many sequences under a token budget (any device; eager)."""

    def __init__(self, model: Qwen3Model, device: torch.device, batch_tokens: int | None = None,
                 max_seqs: int | None = None) -> None:
        self.model = model
        self.device = device
        self.batch_tokens = check_batch_tokens(batch_tokens, device.type)
        self.max_seqs = max_seqs
        self.pin = device.type == "cuda"

    # -- one batch ------------------------------------------------------------------------------
    def _to_device(self, batch: PackedBatch) -> PackedBatch:
        if self.pin:
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def run_batch(self, seqs: Sequence[Sequence[int]], prefix_kv: tuple[list[torch.Tensor], list[torch.Tensor]]
                  | None = None, start_position: int = 0) -> torch.Tensor:
        """Last-token states of one batch, [n, H] on the device (model dtype)."""
        host = pack(seqs, start_position)
        prefix = SharedPrefix(prefix_kv[0], prefix_kv[1], host) if prefix_kv is not None else None
        batch = self._to_device(host)
        return self.model(batch, output_indices=batch.last_indices, prefix=prefix)

    def prefix_kv(self, prefix_ids: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every layer's k, v of a prefix, computed once."""
        record: list[tuple[torch.Tensor, torch.Tensor]] = []
        batch = self._to_device(pack([prefix_ids]))
        self.model(batch, output_indices=batch.last_indices, record=record)
        return [k for k, _ in record], [v for _, v in record]

    # -- many sequences -------------------------------------------------------------------------
    @torch.inference_mode()
    def last_hidden(self, seqs: Sequence[Sequence[int]], progress: bool = False) -> torch.Tensor:
        """Final hidden state at each sequence's last token, [n, H] float32 on the CPU, input order."""
        return self.last_hidden_stream([seqs], len(seqs), progress)

    @torch.inference_mode()
    def last_hidden_stream(self, chunks: Iterable[Sequence[Sequence[int]] | Chunk], total: int,
                           progress: bool = False) -> torch.Tensor:
        """As `last_hidden`, over sequences that arrive in chunks (overlapping their preparation).

        A `Chunk` may carry a shared prefix (one reranker query each): the prefix runs once and each of
        its sequences attends to the prefix's keys and values."""
        hidden = self.model.config.hidden_size
        done = torch.empty(total, hidden, dtype=torch.float32, pin_memory=self.pin)  # processing order
        order: list[int] = []
        bar = tqdm(total=total, disable=not progress, unit="text", desc="embedding", leave=False)
        offset = 0
        for item in chunks:
            chunk, prefix = (item.seqs, item.prefix_ids) if isinstance(item, Chunk) else (item, ())
            kv, start = (self.prefix_kv(prefix), len(prefix)) if prefix else (None, 0)
            for idx in plan_batches([len(s) for s in chunk], self.batch_tokens, self.max_seqs):
                h = self.run_batch([chunk[i] for i in idx], kv, start).float()  # [b, H]
                done[len(order) : len(order) + len(idx)].copy_(h, non_blocking=self.pin)
                order.extend(offset + i for i in idx)
                bar.update(len(idx))
            offset += len(chunk)
        if len(order) != total:
            raise AssertionError(f"engine saw {len(order)} sequences, expected {total}")
        if self.pin:
            torch.cuda.synchronize(self.device)
        bar.close()
        out = torch.empty_like(done, pin_memory=False)
        out[torch.tensor(order)] = done
        return out


GRAPH_TOKENS = (32, 64, 128, 256, 512, 1024, 2048)
GRAPH_SEQS = (2, 4, 8, 16, 32, 64)


class _Graph:
    def __init__(self, tokens: int, seqs: int, device: torch.device) -> None:
        self.tokens, self.seqs = tokens, seqs
        self.input_ids = torch.zeros(tokens, dtype=torch.long, device=device)
        self.position_ids = torch.zeros(tokens, dtype=torch.long, device=device)
        self.cu_seqlens = torch.arange(seqs + 1, dtype=torch.int32, device=device)  # filled per call
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per-layer k, v (prefix graphs)

    def batch(self) -> PackedBatch:
        return PackedBatch(self.input_ids, self.position_ids, self.cu_seqlens, self.tokens)


class CudaEngine(Engine):
    """Engine with compiled layers and CUDA graphs for small batches."""

    def __init__(self, model: Qwen3Model, device: torch.device, batch_tokens: int | None = None,
                 max_seqs: int | None = None, compile: bool = True, graphs: bool = True) -> None:
        super().__init__(model, device, batch_tokens, max_seqs)
        if compile:
            for layer in model.layers:
                layer.compile(dynamic=True)
        # graphs need the flash kernel (bf16 / fp16): the float32 fallback reads sequence bounds on the host
        flash = next(model.parameters()).dtype in (torch.bfloat16, torch.float16)
        self.graphs: dict[tuple[int, int, bool], _Graph] | None = {} if graphs and flash else None
        self.pool: Any = None  # one memory pool shared by every captured graph

    def run_batch(self, seqs: Sequence[Sequence[int]], prefix_kv: tuple[list[torch.Tensor], list[torch.Tensor]]
                  | None = None, start_position: int = 0) -> torch.Tensor:
        if self.graphs is not None and prefix_kv is None and start_position == 0:
            n, tokens = len(seqs), sum(len(s) for s in seqs)
            s_b = next((b for b in GRAPH_SEQS if b >= n + 1), None)
            t_b = next((b for b in GRAPH_TOKENS if s_b and b >= tokens + s_b - n), None)
            if s_b is not None and t_b is not None:
                out = self._replay(seqs, t_b, s_b).out
                assert out is not None
                return out[: len(seqs)]
        return super().run_batch(seqs, prefix_kv, start_position)

    def prefix_kv(self, prefix_ids: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The prefix pass through a CUDA graph too (it is small, so launch-bound when run eagerly).

        The k, v returned are views of the graph's static outputs: they stay valid for the work queued
        after them on the stream, until this bucket is replayed again."""
        p = len(prefix_ids)
        t_b = next((b for b in GRAPH_TOKENS if b >= p + 1), None)
        if self.graphs is None or t_b is None:
            return super().prefix_kv(prefix_ids)
        g = self._replay([prefix_ids], t_b, 2, record=True)
        assert g.kv is not None
        return [k[:p] for k, _ in g.kv], [v[:p] for _, v in g.kv]

    def _replay(self, seqs: Sequence[Sequence[int]], t_b: int, s_b: int, record: bool = False) -> _Graph:
        """Pad with dummy sequences to the bucket (one token each, the last takes the rest), replay."""
        n = len(seqs)
        fill = t_b - sum(len(s) for s in seqs) - (s_b - n - 1)
        lengths = [len(s) for s in seqs] + [1] * (s_b - n - 1) + [fill]
        ids = [t for s in seqs for t in s] + [0] * (t_b - sum(len(s) for s in seqs))
        host = PackedBatch(
            torch.tensor(ids, dtype=torch.long),
            torch.cat([torch.arange(m) for m in lengths]),
            torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32),
            t_b,
        ).pin_memory()
        assert self.graphs is not None
        key = (t_b, s_b, record)
        g = self.graphs.get(key)
        if g is None:
            g = self.graphs[key] = _Graph(t_b, s_b, self.device)
        g.input_ids.copy_(host.input_ids, non_blocking=True)
        g.position_ids.copy_(host.position_ids, non_blocking=True)
        g.cu_seqlens.copy_(host.cu_seqlens, non_blocking=True)
        # capture and replay use the current device's stream: make it ours (an engine on cuda:1 in a process
        # whose current device is cuda:0 otherwise fails: "operation not permitted when stream is capturing")
        with torch.cuda.device(self.device):
            if g.graph is None:
                self._capture(g, record)
            assert g.graph is not None and g.out is not None
            g.graph.replay()
        return g

    def _capture(self, g: _Graph, record: bool) -> None:
        batch = g.batch()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: compilation and autotuning outside the capture
                self.model(batch, output_indices=batch.last_indices, record=[] if record else None)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        # thread_local: GPU work of other threads (a second model in a server) cannot break the capture
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            kv: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if record else None
            g.out = self.model(batch, output_indices=batch.last_indices, record=kv)
            g.kv = kv
        g.graph = graph


DETERMINISTIC_RECOMPILE_LIMIT = 64  # compiled variants per function in a process with a deterministic model


def _guard_recompiles() -> None:
    """Raise torch._dynamo's recompile limit (8 by default, shared by every model of the process) and make
    reaching it an error instead of a silent fall back to eager code (process-wide settings)."""
    import torch._dynamo.config as dynamo

    dynamo.recompile_limit = max(dynamo.recompile_limit, DETERMINISTIC_RECOMPILE_LIMIT)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 8 * DETERMINISTIC_RECOMPILE_LIMIT)
    dynamo.fail_on_recompile_limit_hit = True


def make_engine(model: Qwen3Model, device: torch.device, batch_tokens: int | None = None,
                compile: bool | None = None, deterministic: bool = False) -> Engine:
    """CudaEngine on CUDA (compile unless `compile=False`), the eager Engine elsewhere.

    deterministic: switch the model to batch-invariant kernels first (kernels/batch_invariant.py). On
    CUDA its layers are compiled too unless `compile=False` (eager layers: 0.69x the throughput), with
    torch._dynamo's recompile limit raised to DETERMINISTIC_RECOMPILE_LIMIT and made an error when hit:
    past the limit compiled code would fall back to eager for new shapes, and eager rounds the fused
    elementwise steps differently, silently breaking the guarantee."""
    if deterministic:
        from .kernels.batch_invariant import make_batch_invariant

        make_batch_invariant(model)
        if device.type == "cuda" and compile is not False:
            _guard_recompiles()
            compile = True
        else:
            compile = False
    if device.type == "cuda":
        return CudaEngine(model, device, batch_tokens, compile=compile is not False)
    return Engine(model, device, batch_tokens)
