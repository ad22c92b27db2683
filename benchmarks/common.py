"""Helpers shared by the benchmark scripts: the synthetic corpus, FLOP counts, timing, result files."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SHAPE_0_6B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                  head_dim=128, intermediate_size=3072)


def lognormal_lengths(n: int, median: float = 160, sigma: float = 0.6, lo: int = 16, hi: int = 1024,
                      seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), lo, hi).astype(int).tolist()


def token_corpus(lengths: Sequence[int], eos_id: int, vocab_hi: int = 151000, seed: int = 0) -> list[list[int]]:
    """Random ordinary-token ids with the end token last (as the embedder's inputs end)."""
    rng = np.random.default_rng(seed + 1)
    return [[*rng.integers(100, vocab_hi, n - 1).tolist(), eos_id] for n in lengths]


_VOCABULARY = ("the of and to in is was for on that with as by at from protein cell search engine query document "
         "gravity water river capital china beijing learning model data neural embedding retrieval energy "
         "climate history music language science market health city network system theory light sound")
WORDS = _VOCABULARY.split(" ")


def word_texts(n: int, median_words: float, seed: int, lo: int = 4, hi: int = 800) -> list[str]:
    rng = np.random.default_rng(seed)
    counts = np.clip(np.round(rng.lognormal(np.log(median_words), 0.6, n)), lo, hi).astype(int)
    return [" ".join(rng.choice(WORDS, k)) for k in counts]


def model_flops(cfg: Any, lengths: Sequence[int]) -> float:
    """Forward FLOPs: 2 x non-embedding parameters per token + causal attention (QK^T and PV)."""
    per_token = 2 * cfg.num_parameters(include_embeddings=False)
    attn_width = cfg.num_attention_heads * cfg.head_dim
    attn = sum(2 * 2 * attn_width * n * (n + 1) / 2 for n in lengths) * cfg.num_hidden_layers
    return per_token * sum(lengths) + attn


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, Any]:
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "triton", "tokenizers", "sentence-transformers", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def write_result(kind: str, payload: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{kind}-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
