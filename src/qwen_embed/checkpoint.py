"""A loaded checkpoint: folder, config, tokenizer, trunk and (for rerankers) the score vector.

Shared by `Embedder` and `Reranker`, so that both load through one path, which refuses the wrong kind
both ways: an embedding checkpoint loaded as a reranker, and a reranker (causal LM or sequence
classification) loaded as an embedder unless its trunk is wanted on purpose (`allow_causal_lm`). A PEFT
adapter folder given where a checkpoint is expected is named as such, with its base and the two ways to
use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import ModelConfig, check_not_adapter
from .errors import ConfigError
from .int8 import check_int8_device, is_int8, quantize_linear_int8
from .model import Qwen3Model
from .tokenizer import QwenTokenizer, check_ids
from .weights import load_trunk, pick_device, pick_dtype, resolve_model_dir


@dataclass
class Checkpoint:
    name: str
    path: Path
    config: ModelConfig
    tokenizer: QwenTokenizer
    model: Qwen3Model
    head: torch.Tensor | None  # [H] float32 for rerankers: W[yes] - W[no]
    yes_no_ids: tuple[int, int] | None
    device: torch.device
    dtype: torch.dtype

    @classmethod
    def load(
        cls, name_or_path: str | os.PathLike[str], device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None, want_head: bool = True, *, allow_causal_lm: bool = True,
    ) -> Checkpoint:
        """Resolve, parse and load. `want_head=False` loads only the trunk; a reranker needs the head.

        allow_causal_lm: with `want_head=False`, accept the trunk of a reranker or base causal-LM
        checkpoint (training starts from one); `Embedder` passes False unless told otherwise, so that a
        reranker is not silently used as an embedder. dtype "int8": float32 weights with int8 linear
        layers (CPU only, int8.py)."""
        dev = pick_device(device)
        int8 = is_int8(dtype)
        if int8:
            check_int8_device(dev)
        path = resolve_model_dir(name_or_path)
        check_not_adapter(path)
        config = ModelConfig.from_file(path / "config.json")
        tokenizer = QwenTokenizer.from_dir(path)
        dt = torch.float32 if int8 else pick_dtype(dtype, dev)
        yes_no = None
        if want_head and not config.is_reranker:
            raise ConfigError(
                f"{path} is an embedding checkpoint ({config.architecture}); a reranker needs "
                "Qwen3ForCausalLM or a converted Qwen3ForSequenceClassification. Use Embedder for this one."
            )
        if not want_head and config.is_reranker and not allow_causal_lm:
            raise ConfigError(
                f"{path} is a reranker checkpoint ({config.architecture}), not an embedding one (Qwen3Model); "
                "load it with Reranker (`qwen-embed rerank`, --reranker-model), or pass allow_causal_lm=True "
                "(--allow-causal-lm) to embed with its trunk on purpose."
            )
        if want_head and config.is_reranker:
            yes_no = (tokenizer.single_token_id("yes"), tokenizer.single_token_id("no"))
        model, head = load_trunk(path, config, dev, dt, head_rows=yes_no, want_head=want_head)
        if int8:
            quantize_linear_int8(model)
        if head is not None:
            head = head.to(dev)
        return cls(os.fspath(name_or_path), path, config, tokenizer, model, head, yes_no, dev, dt)


class CheckpointFacts:
    """Read-only facts of a loaded checkpoint, shared by Embedder and Reranker (`self.checkpoint`)."""

    checkpoint: Checkpoint

    @property
    def config(self) -> ModelConfig:
        """The parsed config.json (ModelConfig)."""
        return self.checkpoint.config

    @property
    def tokenizer(self) -> QwenTokenizer:
        """The checkpoint's tokenizer (QwenTokenizer)."""
        return self.checkpoint.tokenizer

    @property
    def hidden_size(self) -> int:
        """Width of the trunk, the largest embedding dimension."""
        return self.checkpoint.config.hidden_size

    def _check_ids(self, seqs: Sequence[Sequence[int]], what: str = "seqs") -> list[Sequence[int]]:
        """Already tokenized inputs, validated against this model's vocabulary and position limit."""
        c = self.checkpoint.config
        return check_ids(seqs, c.vocab_size, c.max_position_embeddings, what)

    @property
    def device(self) -> torch.device:
        """Device the weights are on."""
        return self.checkpoint.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the weights."""
        return self.checkpoint.dtype

    @property
    def name(self) -> str:
        """The hub id or folder it was loaded from, as given."""
        return self.checkpoint.name
