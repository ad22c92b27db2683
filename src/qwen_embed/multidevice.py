"""Embed a corpus on several devices at once: one worker process per device (data parallel).

The texts are cut into contiguous shards of about equal token count (character count as the proxy),
one per device; each worker loads the checkpoint on its device, embeds its shard with the ordinary
`Embedder.encode`, and writes the vectors to a temporary .npy; the parent concatenates them in input
order. Each text is embedded exactly as a single process would embed it, so the result equals a
one-device run up to the device's own rounding. Workers are spawned (never forked: CUDA state does
not survive a fork); a failing worker's error is raised in the parent with its device named.

    from qwen_embed.multidevice import encode_on_devices
    vecs = encode_on_devices("Qwen/Qwen3-Embedding-0.6B", texts, ["cuda:0", "cuda:1"])
"""

from __future__ import annotations

import itertools
import os
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, QwenEmbedError
from .threads import check_threads, default_threads
from .tokenizer import check_texts


def shard_bounds(texts: Sequence[str], parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges with about equal total length, one per part (some may be empty)."""
    sizes = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cum = np.cumsum(sizes)
    total = int(cum[-1]) if len(cum) else 0
    cuts = [0] + [int(np.searchsorted(cum, total * k / parts, side="left")) + 1 for k in range(1, parts)] + [len(texts)]
    cuts = [min(max(c, 0), len(texts)) for c in cuts]
    for i in range(1, len(cuts)):  # keep them ordered
        cuts[i] = max(cuts[i], cuts[i - 1])
    return list(itertools.pairwise(cuts))


def _worker(model: str, device: str, texts: list[str], kwargs: dict[str, Any], out: str, err: str) -> None:
    try:
        from .embedder import Embedder

        emb = Embedder.from_pretrained(model, device=device, dtype=kwargs.pop("dtype", None),
                                       max_length=kwargs.pop("max_length", 8192),
                                       batch_tokens=kwargs.pop("batch_tokens", None), threads=kwargs.pop("threads"))
        np.save(out, emb.encode(texts, **kwargs))
    except BaseException as e:  # reported to the parent, which raises it
        Path(err).write_text(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        raise SystemExit(1) from None


def encode_on_devices(model: str | os.PathLike[str], texts: Sequence[str], devices: Sequence[str], *,
                      instruction: str | None = None, dim: int | None = None, normalize: bool = True,
                      dtype: str | None = None, max_length: int = 8192, batch_tokens: int | None = None,
                      threads: int | None = None) -> np.ndarray:
    """Embed `texts` with one worker process per device -> float32 [n, dim] in input order.

    threads: torch CPU threads of each worker (default: the cores available divided among the workers)."""
    import torch.multiprocessing as mp

    items = check_texts(texts)
    if not devices:
        raise InputError("devices is empty; pass e.g. ['cuda:0', 'cuda:1'].")
    per_worker = check_threads(threads) if threads is not None else default_threads(len(devices))
    kwargs = {"instruction": instruction, "dim": dim, "normalize": normalize, "progress": False,
              "dtype": dtype, "max_length": max_length, "batch_tokens": batch_tokens, "threads": per_worker}
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="qwen-embed-devices-") as tmp:
        jobs = []
        for k, (dev, (a, b)) in enumerate(zip(devices, shard_bounds(items, len(devices)), strict=True)):
            if a == b:
                continue
            out, err = str(Path(tmp) / f"{k}.npy"), str(Path(tmp) / f"{k}.err")
            p = ctx.Process(target=_worker, args=(os.fspath(model), dev, items[a:b], dict(kwargs), out, err))
            p.start()
            jobs.append((dev, p, out, err))
        parts = []
        for dev, p, out, err in jobs:
            p.join()
            if p.exitcode != 0:
                msg = Path(err).read_text().splitlines()[0] if Path(err).exists() else f"exit code {p.exitcode}"
                for _, q, _, _ in jobs:
                    q.kill()
                raise QwenEmbedError(f"the worker on {dev} failed: {msg}")
            parts.append(np.load(out))
    return np.concatenate(parts)
