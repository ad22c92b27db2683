"""Embedder: Qwen3-Embedding as a dual encoder.

Queries go through the instruction template `Instruct: {instruction}\\nQuery:{query}` (no space after
`Query:`), documents are embedded as they are. `<|endoftext|>` is appended exactly once and kept when
truncating; the embedding is the final hidden state at that token, sliced to the Matryoshka `dim`
first and L2-normalised after. Follows the official usage code of the Qwen3-Embedding model card.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint, CheckpointFacts
from .config import adapter_base
from .engine import make_engine
from .errors import InputError
from .hub import model_name_text
from .pooling import check_dim, finish
from .quantize import check_precision
from .settings import DEFAULT_EMBEDDING_MODEL as DEFAULT_EMBEDDING_MODEL  # the model this class defaults to
from .settings import DEFAULT_MAX_LENGTH as DEFAULT_MAX_LENGTH
from .settings import check_max_length as check_max_length
from .threads import use_threads
from .tokenizer import check_texts
from .tokenizer import format_query as format_query  # public here too (qwen_embed.format_query)

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
PROGRESS_MIN_TEXTS = 512
TOKENIZE_CHUNK = 4096  # texts per chunk: the worker pool tokenizes the next chunk while the device runs


class Embedder(CheckpointFacts):
    """Text -> embeddings with a Qwen3-Embedding checkpoint (CPU float32 or CUDA bfloat16)."""

    def __init__(self, checkpoint: Checkpoint, *, max_length: int | None = None,
                 batch_tokens: int | None = None, compile: bool | None = None,
                 deterministic: bool = False) -> None:
        self.checkpoint = checkpoint
        self.max_length = check_max_length(max_length, checkpoint.config)
        self.deterministic = deterministic
        self.engine = make_engine(checkpoint.model, checkpoint.device, batch_tokens, compile, deterministic)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None, *, max_length: int | None = None,
        batch_tokens: int | None = None, compile: bool | None = None, adapter: str | os.PathLike[str] | None = None,
        allow_causal_lm: bool = False, threads: int | None = None, deterministic: bool = False,
    ) -> Embedder:
        """Load from a local folder or a hub id (e.g. "Qwen/Qwen3-Embedding-0.6B").

        device: None picks CUDA when present; dtype: None picks bfloat16 on CUDA, float32 on CPU;
        "int8" quantizes the linear layers for the CPU (faster, approximate: int8.py).
        max_length: tokens per input including the end token (default 8192, or the model's limit where
            it is lower; at most the model's limit).
        batch_tokens: token budget of one forward pass (default 65536 on CUDA, 8192 on CPU).
        compile: torch.compile the layers on CUDA (default on; the first call then compiles, ~10 s).
        adapter: a PEFT LoRA adapter folder applied on top of the base without merging (needs peft, the
            `train` extra). A LoRA adapter folder given as `name_or_path` is loaded on the base it records.
        allow_causal_lm: embed with the trunk of a reranker / causal-LM checkpoint on purpose (refused
            by default, as loading an embedding checkpoint as a Reranker is).
        threads: torch CPU threads for this process (default: the cores it may use; threads.py).
        deterministic: batch-invariant kernels, so that a text's vector is bitwise the same whatever else
        is in its batch (docs/deterministic.md says what is guaranteed and what it costs).
        """
        use_threads(threads)
        if adapter is None:
            base = adapter_base(Path(model_name_text(name_or_path)).expanduser())
            if base:  # an adapter folder given as the model: load it on its recorded base
                name_or_path, adapter = base, name_or_path
        ckpt = Checkpoint.load(name_or_path, device, dtype, want_head=False, allow_causal_lm=allow_causal_lm)
        if adapter is not None:
            from .train.lora import load_adapter  # peft, lazily: only adapter users need it

            load_adapter(ckpt.model, Path(os.fspath(adapter)))
            ckpt.model.eval().requires_grad_(False)
        return cls(ckpt, max_length=max_length, batch_tokens=batch_tokens, compile=compile,
                   deterministic=deterministic)

    # -- tokens ------------------------------------------------------------------------------------
    def prepare(self, texts: Sequence[str], instruction: str | None = None) -> list[str]:
        """Validate texts and apply the query template when an instruction is given."""
        items = check_texts(texts)
        if instruction is None:
            return items
        if not isinstance(instruction, str):
            raise InputError(f"instruction must be a string, got {type(instruction).__name__}")
        return [format_query(t, instruction) for t in items]

    def tokenize(self, texts: Sequence[str], instruction: str | None = None) -> list[list[int]]:
        """Token ids exactly as embedded: template, truncation to max_length, end token last."""
        return self.tokenizer.encode_for_embedding(self.prepare(texts, instruction), self.max_length)

    # -- vectors -----------------------------------------------------------------------------------
    def embed_ids(self, seqs: Sequence[Sequence[int]], *, dim: int | None = None, normalize: bool = True,
                  progress: bool | None = None, precision: str = "float32",
                  ranges: np.ndarray | None = None) -> np.ndarray:
        """Embed already tokenized inputs (each ending with the end token) -> [n, dim] (float32 unless a
        `precision` of `quantize.PRECISIONS` is asked)."""
        d = check_dim(dim, self.hidden_size)
        check_precision(precision, d)
        seqs = self._check_ids(seqs)
        show = len(seqs) >= PROGRESS_MIN_TEXTS if progress is None else progress
        return finish(self.engine.last_hidden(seqs, progress=show), d, normalize, precision, ranges)

    def encode(self, texts: str | Sequence[str], *, instruction: str | None = None, dim: int | None = None,
               normalize: bool = True, progress: bool | None = None, precision: str = "float32",
               ranges: np.ndarray | None = None, convert_to_tensor: bool = False) -> Any:
        """Embed texts -> numpy float32 [n, dim]; with `instruction`, the query template is applied.

        One string (not in a list) gives one vector [dim], as sentence-transformers does;
        `convert_to_tensor=True` returns a torch tensor (CPU) instead of a numpy array.
        `precision` quantizes the normalised vectors (`float16`, `int8`, `uint8`, `binary`,
        `ubinary`; byte-compatible with sentence-transformers' `quantize_embeddings`); int8/uint8 use
        `ranges` ([2, dim] minima/maxima from `qwen_embed.quantize.calibration_ranges`) or, without
        them, the batch itself when it holds at least two texts.
        Long inputs are tokenized in chunks by a worker pool while the device embeds earlier chunks."""
        if isinstance(texts, str):
            one = self.encode([texts], instruction=instruction, dim=dim, normalize=normalize, progress=progress,
                              precision=precision, ranges=ranges, convert_to_tensor=convert_to_tensor)
            return one[0]
        vecs = self._encode(texts, instruction, dim, normalize, progress, precision, ranges)
        return torch.from_numpy(vecs) if convert_to_tensor else vecs

    def _encode(self, texts: Sequence[str], instruction: str | None, dim: int | None, normalize: bool,
                progress: bool | None, precision: str, ranges: np.ndarray | None) -> np.ndarray:
        d = check_dim(dim, self.hidden_size)
        check_precision(precision, d)
        items = self.prepare(texts, instruction)  # validates everything before any work starts
        if len(items) <= TOKENIZE_CHUNK:
            return self.embed_ids(self.tokenize(items), dim=dim, normalize=normalize, progress=progress,
                                  precision=precision, ranges=ranges)
        show = len(items) >= PROGRESS_MIN_TEXTS if progress is None else progress
        chunks = [items[i : i + TOKENIZE_CHUNK] for i in range(0, len(items), TOKENIZE_CHUNK)]
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="qwen-embed-tokenize") as pool:
            futures = [pool.submit(self.tokenize, c) for c in chunks]
            pooled = self.engine.last_hidden_stream((f.result() for f in futures), len(items), show)
        return finish(pooled, d, normalize, precision, ranges)

    def encode_queries(self, texts: str | Sequence[str], *, instruction: str | None = None,
                       dim: int | None = None, progress: bool | None = None, precision: str = "float32",
                       ranges: np.ndarray | None = None, convert_to_tensor: bool = False) -> Any:
        """Embed search queries with the query template (default: the web-search instruction)."""
        return self.encode(texts, instruction=instruction or DEFAULT_INSTRUCTION, dim=dim, progress=progress,
                           precision=precision, ranges=ranges, convert_to_tensor=convert_to_tensor)

    def encode_documents(self, texts: str | Sequence[str], *, dim: int | None = None,
                         progress: bool | None = None, precision: str = "float32",
                         ranges: np.ndarray | None = None, convert_to_tensor: bool = False) -> Any:
        """Embed documents as they are (no instruction), optionally quantized (see `encode`)."""
        return self.encode(texts, dim=dim, progress=progress, precision=precision, ranges=ranges,
                           convert_to_tensor=convert_to_tensor)

    def token_lengths(self, texts: Sequence[str], instruction: str | None = None) -> list[int]:
        """Tokens of each input before truncation (template and end token included), to report what
        `max_length` cuts."""
        return self.tokenizer.embedding_lengths(self.prepare(texts, instruction))

    def __repr__(self) -> str:
        c = self.config
        return (f"Embedder({self.name!r}, hidden={c.hidden_size}, layers={c.num_hidden_layers}, "
                f"device={self.device}, dtype={str(self.dtype).removeprefix('torch.')})")
