"""Pooling and the vector post-processing of the embedder, each a small function.

Qwen3-Embedding takes the last layer's hidden state at the appended `<|endoftext|>` (the last token
of each sequence), slices it to the Matryoshka dimension first and L2-normalises after, in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .errors import InputError

MIN_DIM = 32


def last_token_pool(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """hidden [T, H] of a packed batch -> [n, H], the state at each sequence's last token."""
    return hidden[cu_seqlens[1:].long() - 1]


def check_dim(dim: int | None, hidden_size: int, param: str = "dim") -> int:
    """Validate a Matryoshka dimension (32 .. hidden size); None means the full size.

    `param` is the caller's name for the argument (the server's `dimensions`); the error carries it."""
    if dim is None:
        return hidden_size
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise InputError(f"{param} must be an integer, got {dim!r}", param=param)
    if not MIN_DIM <= dim <= hidden_size:
        raise InputError(
            f"{param}={dim} is out of range: this model supports {MIN_DIM}..{hidden_size}; "
            f"pass a value in that range or leave it out for the full {hidden_size}.", param=param
        )
    return dim


def truncate_dim(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Matryoshka: keep the first `dim` features ([n, H] -> [n, dim])."""
    return x[..., :dim]


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise L2 normalisation in float32 (as torch.nn.functional.normalize)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def finish(pooled: torch.Tensor | np.ndarray, dim: int, normalize: bool = True, precision: str = "float32",
           ranges: np.ndarray | None = None) -> np.ndarray:
    """The one post-processing rule: [n, H] float32 states -> Matryoshka slice to `dim` -> optional L2
    normalisation -> numpy [n, dim], quantized to `precision` (see `quantize.py`) when not float32.
    Every path (Embedder, server, eval, training) calls this."""
    x = torch.from_numpy(np.ascontiguousarray(pooled)) if isinstance(pooled, np.ndarray) else pooled
    out = truncate_dim(x.float(), dim)
    if normalize:
        out = l2_normalize(out)
    vectors = out.detach().cpu().numpy().astype(np.float32, copy=False)
    if precision == "float32":
        return vectors
    from .quantize import quantize

    return quantize(vectors, precision, ranges=ranges)


def rank_by_score(scores: Sequence[float] | np.ndarray | torch.Tensor) -> list[int]:
    """The one ranking rule: indices sorted by score, best first, ties in input order."""
    values = [float(s) for s in (scores.tolist() if hasattr(scores, "tolist") else scores)]
    return sorted(range(len(values)), key=lambda i: (-values[i], i))
