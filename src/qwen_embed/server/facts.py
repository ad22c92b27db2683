"""What the HTTP side needs to know of a model, without its weights: `ModelFacts`.

A service tokenizes, validates and finishes requests; it needs the checkpoint's folder, config and
tokenizer, the max length, the token budget of a batch, and the device and dtype to report, never the
weights. In process they come from a loaded `Embedder` / `Reranker`; in front of model processes
(model_pool.py) they come from the folder alone (`ModelFacts.from_folder`), so the HTTP process never
loads a model, and torch is not imported here (the `serve --workers` supervisor reads them too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ModelConfig
from ..hub import resolve_model_dir
from ..settings import check_max_length, default_batch_tokens, device_type, weights_dtype_name
from ..tokenizer import QwenTokenizer

if TYPE_CHECKING:
    from ..embedder import Embedder
    from ..reranker import Reranker


@dataclass(frozen=True)
class ModelFacts:
    """A served model's facts (module docstring)."""

    name: str
    path: Path
    config: ModelConfig
    tokenizer: QwenTokenizer
    max_length: int
    batch_tokens: int
    device: str  # as reported by /info: "cpu", "cuda:0", or "cuda:0,cuda:1" for several model processes
    dtype: str  # of the weights, torch's name: "float32", "bfloat16", "float16"

    @classmethod
    def of(cls, model: Embedder | Reranker) -> ModelFacts:
        """The facts of a loaded model."""
        ck = model.checkpoint
        return cls(ck.name, ck.path, ck.config, ck.tokenizer, model.max_length, model.engine.batch_tokens,
                   str(ck.device), str(ck.dtype).removeprefix("torch."))

    @classmethod
    def from_folder(cls, name_or_path: str, devices: list[str], dtype: str | None, max_length: int | None,
                    batch_tokens: int | None) -> ModelFacts:
        """The facts of a checkpoint folder (config and tokenizer read, no weights) served on `devices`."""
        path = resolve_model_dir(name_or_path)
        config = ModelConfig.from_file(path / "config.json")
        return cls(name_or_path, path, config, QwenTokenizer.from_dir(path), check_max_length(max_length, config),
                   batch_tokens or default_batch_tokens(device_type(devices[0])), ",".join(devices),
                   weights_dtype_name(dtype, devices[0]))
