"""Pooling and the vector post-processing of the embedder, each a small function.

Qwen3-Embedding takes the last layer's hidden state at the appended `<|endoftext|>` (the last token
of each sequence), slices it to the Matryoshka dimension first and L2-normalises after, in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .errors import InputError
from .settings import MIN_DIM as MIN_DIM  # here too: pooling.MIN_DIM keeps working
from .settings import check_dim as check_dim  # here too: pooling.check_dim keeps working


def last_token_pool(hidden: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """hidden [T, H] of a packed batch -> [n, H], the state at each sequence's last token."""
    return hidden[cu_seqlens[1:].long() - 1]


def truncate_dim(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Matryoshka: keep the first `dim` features ([n, H] -> [n, dim])."""
    return x[..., :dim]


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last dimension in a fixed pairwise order ([..., d] -> [...]), zero-padded to a power of two.

    Built from elementwise additions only, so a row's result never depends on the other rows: library
    reductions pick their order from the tensor's shape (on the CPU, `(x * y).sum(-1)` over 64 columns
    rounds some rows differently in a batch of 32 than alone)."""
    d = x.shape[-1]
    width = 1 << max(d - 1, 0).bit_length()
    if width != d:
        x = torch.nn.functional.pad(x, (0, width - d))
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise L2 normalisation in float32 (as torch.nn.functional.normalize), batch invariant."""
    x = x.float()
    return x / row_sum(x * x).sqrt().unsqueeze(-1).clamp_min(eps)


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
    if not np.isfinite(vectors).all():
        from .errors import ModelOutputError

        bad = int((~np.isfinite(vectors).all(axis=-1)).sum())
        raise ModelOutputError(f"the model produced NaN or infinite values for {bad} of {len(vectors)} inputs; its "
                               f"weights or config.json are broken (nothing was written).")
    if precision == "float32":
        return vectors
    from .quantize import quantize

    return quantize(vectors, precision, ranges=ranges)


def rank_by_score(scores: Sequence[float] | np.ndarray | torch.Tensor) -> list[int]:
    """The one ranking rule: indices sorted by score, best first, ties in input order, NaN scores last (in
    input order: a NaN compares false with everything, which would leave the order to the sort's path)."""
    values = [float(s) for s in (scores.tolist() if hasattr(scores, "tolist") else scores)]
    return sorted(range(len(values)), key=lambda i: (values[i] != values[i], -values[i] if values[i] == values[i]
                                                     else 0.0, i))


def similarity(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Cosine similarity matrix [n, m] of vectors a [n, d] (or [d]) and b [m, d] (or [d]).

    Like sentence-transformers' `similarity` (cosine): a 1-D input counts as one row. numpy in gives
    numpy out, a torch tensor in (either argument) gives a torch tensor out (on a's device when a is one).
    """
    as_torch = isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)
    ta = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    tb = b if isinstance(b, torch.Tensor) else torch.as_tensor(np.asarray(b), device=ta.device)
    ta, tb = (t.unsqueeze(0) if t.ndim == 1 else t for t in (ta, tb))
    if ta.ndim != 2 or tb.ndim != 2 or ta.shape[1] != tb.shape[1]:
        raise InputError(f"similarity needs [n, d] and [m, d] vectors of one dimension d; got shapes "
                         f"{tuple(ta.shape)} and {tuple(tb.shape)}.")
    dt = torch.promote_types(torch.promote_types(ta.dtype, tb.dtype), torch.float32)
    ta = torch.nn.functional.normalize(ta.to(dt), dim=-1)
    tb = torch.nn.functional.normalize(tb.to(ta.device, dt), dim=-1)
    out = ta @ tb.T  # [n, m]
    return out if as_torch else out.cpu().numpy()
