"""An encoder the `mteb` package (v2, the `eval` extra) evaluates directly, with the per-task instructions.

`QwenEmbedMTEB` follows mteb's `EncoderProtocol` (mteb.models.models_protocols): `encode(inputs, *,
task_metadata, hf_split, hf_subset, prompt_type)` receives a DataLoader of batches whose "text" holds the
strings (mteb has already joined title and text of documents, and a query's own instruction column when the
task has one); `similarity` / `similarity_pairwise` are cosine (our vectors are L2-normalised);
`mteb_model_meta` describes the model. Queries (`prompt_type == "query"`) get the instruction of the task
from the official table (`instructions.lookup`, the official default for tasks it does not list) or the
`instructions` mapping given here; documents and symmetric tasks without a prompt type get none, as in the
official Qwen3-Embedding evaluation (mteb's `qwen3_models.py` does the same). Empty strings are embedded as
the end token alone.

    import mteb
    from qwen_embed.eval.mteb_adapter import QwenEmbedMTEB
    model = QwenEmbedMTEB.from_pretrained("Qwen/Qwen3-Embedding-0.6B")
    mteb.evaluate(model, mteb.get_tasks(tasks=["SciFact"]))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .instructions import lookup
from .retrieval import at_dim, embed_texts

if TYPE_CHECKING:
    from ..embedder import Embedder


class QwenEmbedMTEB:
    """mteb EncoderProtocol over a qwen-embed `Embedder`."""

    def __init__(self, embedder: Embedder, *, dim: int | None = None,
                 instructions: Mapping[str, str] | None = None, name: str | None = None,
                 revision: str | None = None) -> None:
        from ..pooling import check_dim

        self.embedder = embedder
        self.dim = check_dim(dim, embedder.hidden_size)
        self.instructions = dict(instructions or {})
        self.name = name or _meta_name(str(embedder.name))
        self.revision = revision

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str | None = None, dtype: str | None = None,
                        max_length: int | None = None, dim: int | None = None, **kwargs: Any) -> QwenEmbedMTEB:
        """Load an Embedder and wrap it."""
        from ..embedder import Embedder

        emb = Embedder.from_pretrained(name_or_path, device=device, dtype=dtype, max_length=max_length)
        return cls(emb, dim=dim, **kwargs)

    def instruction_for(self, task_name: str) -> str:
        """The query instruction used for an MTEB task."""
        return self.instructions.get(task_name) or lookup(task_name)

    def encode(self, inputs: Iterable[Mapping[str, Any]], *, task_metadata: Any, hf_split: str = "",
               hf_subset: str = "", prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
        """Embed every text of the DataLoader -> float32 [n, dim], L2-normalised."""
        texts: list[str] = []
        for batch in inputs:
            texts += [str(t) for t in batch["text"]]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        kind = getattr(prompt_type, "value", prompt_type)
        instruction = self.instruction_for(task_metadata.name) if kind == "query" else None
        return at_dim(embed_texts(self.embedder, texts, instruction=instruction, progress=False), self.dim)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> Any:
        """Cosine similarity matrix [n1, n2] (inner product of normalised vectors)."""
        return _unit_rows(embeddings1) @ _unit_rows(embeddings2).T

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> Any:
        """Cosine similarity of corresponding rows [n]."""
        return (_unit_rows(embeddings1) * _unit_rows(embeddings2)).sum(-1)

    @property
    def mteb_model_meta(self) -> Any:
        """mteb's ModelMeta of this model (name, dims, max tokens, cosine, instructions)."""
        from mteb.models.model_meta import ModelMeta

        cfg = self.embedder.config
        return ModelMeta.create_empty({
            "name": self.name, "revision": self.revision or "local", "embed_dim": self.dim,
            "max_tokens": self.embedder.max_length, "similarity_fn_name": "cosine", "use_instructions": True,
            "n_parameters": cfg.num_parameters(include_embeddings=True), "framework": ["PyTorch"],
            "open_weights": True,
        })


def _unit_rows(x: Any) -> Any:
    """numpy or torch [n, d] (or [d]) -> L2-normalised float32 torch rows [n, d]."""
    import torch

    t = x.detach().float().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(x, dtype=np.float32))
    return torch.nn.functional.normalize(t.reshape(-1, t.shape[-1]), dim=-1)


def _meta_name(name: str) -> str:
    """mteb wants "organization/model"; a local folder becomes "local/<folder name>"."""
    parts = name.rstrip("/").split("/")
    if len(parts) == 2 and not name.startswith((".", "/")):
        return name
    return f"local/{parts[-1]}"
