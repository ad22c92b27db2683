"""Scale-out on Ray Data: embed (and rerank) a dataset with one model per actor, and the embed-corpus job.

- `stages.py`: the Ray Data stages (`TokenizeStage`, `EmbedStage`, `RerankStage`) and `embed_dataset` /
  `rerank_dataset`, which add them to a `ray.data.Dataset` with an actor pool (one GPU each, or CPU actors).
- `job.py`: `embed_corpus(CorpusJob(...))`, the `qwen-embed embed-corpus` job: JSONL/Parquet in, a folder
  of Parquet vectors out, resumable, on Ray (`engine="ray"`) or on this host without Ray (`"local"`).
- `source.py` (the input, checked), `parts.py` (the output folder), `ingest.py` (the output into a
  LanceDB table without embedding again), `cli.py` (the command).

Ray itself is the optional extra `qwen-embed[ray]` and is imported only when a Ray function runs, so
this package (and `--engine local`) works without it.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"CorpusJob": "job", "CorpusReport": "job", "embed_corpus": "job", "EmbedStage": "stages",
            "ModelLoad": "stages", "RerankStage": "stages", "TokenizeStage": "stages", "embed_dataset": "stages",
            "rerank_dataset": "stages", "ingest_vectors": "ingest"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Load the exports on first use, so that `qwen-embed --help` does not import pyarrow."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
