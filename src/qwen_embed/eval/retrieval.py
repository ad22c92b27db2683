"""Retrieval evaluation, the MTEB/BEIR protocol: embed corpus and queries, exact top-k, score the run.

- Queries get the instruction template, documents none (Qwen3-Embedding). A document whose text is empty is
  embedded as the end token alone, which is what the reference tokenizer makes of "". Tokenizing is a seam
  (`Tokenize`, default `tokenize_texts`): a caller evaluating several models of one tokenizer on the same
  texts (a recipe's held-out check after every stage) may keep the ids instead of tokenizing again.
- The corpus is embedded once at the full hidden size without normalisation; each Matryoshka dimension is
  then the first `dim` features, L2-normalised (the core's `pooling.finish`), so one pass
  serves every `--dim`. Corpus embeddings are cached in shards under `<output>/cache/`, keyed by model,
  tokenizer, max length, dtype, corpus and shard size, so an interrupted run resumes where it stopped.
- Search is exact: scores = queries @ documents.T by chunks of documents and queries (memory bounded by the
  chunk sizes), a running top-k merged chunk by chunk, on the GPU when present.
- The run keeps the top `depth` (default 1000, MTEB's largest k) documents per query and is scored with
  every trec_eval measure and MTEB's @k measures (metrics.py). For the datasets where MTEB sets
  `ignore_identical_ids` (ArguAna, FiQA2018, FEVER, MSMARCO, Quora), a retrieved document whose id equals
  the query id is dropped after the search, as MTEB does (`ignore_identical_ids=None` picks that by name).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import InputError
from ..files import atomic_file, fingerprint, fingerprint_rows
from ..pooling import check_dim, finish
from .at_k import DEFAULT_K, check_ks
from .beir import BeirDataset
from .metrics import Evaluation, evaluate
from .trec import Run

if TYPE_CHECKING:
    from ..embedder import Embedder

DEFAULT_DEPTH = 1000
SHARD_DOCS = 4096
# MTEB v2 tasks with `ignore_identical_ids = True` (mteb/tasks/retrieval/eng): a document that has the query's
# own id is dropped from the results before scoring (ArguAna's queries are documents of its corpus, etc.).
IGNORE_IDENTICAL_IDS = frozenset({"arguana", "fiqa2018", "fiqa", "fever", "msmarco", "quora", "quoraretrieval"})


def ignores_identical_ids(dataset_name: str) -> bool:
    """Whether MTEB drops documents whose id equals the query's for this dataset (by its name)."""
    return dataset_name.lower().replace("-", "").replace("_", "") in IGNORE_IDENTICAL_IDS


# -- embedding ------------------------------------------------------------------------------------------
def tokenize_texts(embedder: Embedder, texts: Sequence[str], instruction: str | None = None) -> list[list[int]]:
    """Token ids as embedded; an empty text becomes the end token alone (the reference's encoding of "")."""
    eos = embedder.tokenizer.eos_id
    full = [i for i, t in enumerate(texts) if t]
    out: list[list[int]] = [[eos] for _ in texts]
    if full:
        for i, ids in zip(full, embedder.tokenize([texts[i] for i in full], instruction), strict=True):
            out[i] = ids
    return out


# (embedder, texts, instruction) -> the ids `tokenize_texts` makes of them
Tokenize = Callable[["Embedder", Sequence[str], "str | None"], list[list[int]]]


def embed_texts(embedder: Embedder, texts: Sequence[str], instruction: str | None = None,
                progress: bool | None = None, tokenize: Tokenize = tokenize_texts) -> np.ndarray:
    """Full-size, un-normalised embeddings float32 [n, hidden]; slice and normalise with `at_dim`."""
    if not texts:
        raise InputError("nothing to embed: the list of texts is empty.")
    return embedder.embed_ids(tokenize(embedder, texts, instruction), normalize=False, progress=progress)


def at_dim(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Matryoshka: first `dim` features, then L2-normalised (`pooling.finish`, as `Embedder.encode(dim=...)`)."""
    return finish(vectors, dim)


def _corpus_key(embedder: Embedder, ids: Sequence[str], texts: Sequence[str], shard: int) -> str:
    # the shard size too: shard n holds documents [n * shard, (n + 1) * shard), so another size reads other rows
    return fingerprint(str(embedder.name), embedder.tokenizer.fingerprint, embedder.max_length, str(embedder.dtype),
                       fingerprint_rows(zip(ids, texts, strict=True)), shard)[:16]


def embed_corpus(embedder: Embedder, ids: Sequence[str], texts: Sequence[str], cache_dir: Path | None = None,
                 shard: int = SHARD_DOCS, progress: bool | None = None,
                 tokenize: Tokenize = tokenize_texts) -> np.ndarray:
    """Embed a corpus in shards; with `cache_dir`, finished shards are kept and reused (resume)."""
    if cache_dir is None:
        return embed_texts(embedder, texts, progress=progress, tokenize=tokenize)
    folder = cache_dir / f"corpus-{_corpus_key(embedder, ids, texts, shard)}"
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for n, start in enumerate(range(0, len(texts), shard)):
        path = folder / f"{n:05d}.npy"
        if path.is_file():
            parts.append(np.load(path))
            continue
        vecs = embed_texts(embedder, texts[start:start + shard], progress=progress, tokenize=tokenize)
        with atomic_file(path, "wb") as f:
            np.save(f, vecs)
        parts.append(vecs)
    return np.concatenate(parts)


# -- exact search ---------------------------------------------------------------------------------------
def search_device(device: str | torch.device | None = None) -> torch.device:
    """The device for the similarity search: CUDA when present, unless told otherwise."""
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def exact_topk(queries: np.ndarray, docs: np.ndarray, k: int, *, device: str | torch.device | None = None,
               query_chunk: int = 4096, doc_chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products, exact: (scores [nq, k'], doc indices [nq, k']), k' = min(k, n_docs), best first.

    Memory: one [query_chunk, doc_chunk] score block plus the running [nq, k'] top-k, whatever the corpus size.
    """
    if queries.ndim != 2 or docs.ndim != 2 or queries.shape[1] != docs.shape[1]:
        raise InputError(f"query and document vectors must be [n, d] with the same d, got {queries.shape} "
                         f"and {docs.shape}.")
    if k < 1 or len(docs) == 0 or len(queries) == 0:
        raise InputError(f"exact_topk needs k >= 1 and non-empty inputs (k={k}, {len(queries)} queries, "
                         f"{len(docs)} documents).")
    dev = search_device(device)
    kk = min(k, len(docs))
    best_s = torch.full((len(queries), kk), -torch.inf, device=dev)
    best_i = torch.zeros((len(queries), kk), dtype=torch.long, device=dev)
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    for d0 in range(0, len(docs), doc_chunk):
        d = torch.from_numpy(np.ascontiguousarray(docs[d0:d0 + doc_chunk], dtype=np.float32)).to(dev)
        for q0 in range(0, len(queries), query_chunk):
            q = q_all[q0:q0 + query_chunk].to(dev)
            s = q @ d.T  # [qc, dc]
            ts, ti = s.topk(min(kk, s.shape[1]), dim=1)
            cat_s = torch.cat([best_s[q0:q0 + len(q)], ts], dim=1)
            cat_i = torch.cat([best_i[q0:q0 + len(q)], ti + d0], dim=1)
            ms, mi = cat_s.topk(kk, dim=1)
            best_s[q0:q0 + len(q)] = ms
            best_i[q0:q0 + len(q)] = cat_i.gather(1, mi)
    return best_s.cpu().numpy(), best_i.cpu().numpy()


def build_run(query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, indices: np.ndarray) -> Run:
    """{qid: {docid: score}} from the top-k arrays (scores as Python floats)."""
    return {q: {doc_ids[j]: float(s) for s, j in zip(srow, irow, strict=True)}
            for q, srow, irow in zip(query_ids, scores.tolist(), indices.tolist(), strict=True)}


# -- the protocol ---------------------------------------------------------------------------------------
@dataclass
class DimResult:
    """One Matryoshka dimension: its run and its evaluation."""

    dim: int
    run: Run
    evaluation: Evaluation


@dataclass
class RetrievalResult:
    """Everything a retrieval evaluation produced."""

    dataset: str
    split: str
    model: str
    instruction: str
    ks: list[int]
    depth: int
    dims: list[DimResult]
    stats: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def check_dims(dims: Sequence[int] | None, hidden_size: int) -> list[int]:
    """Validate Matryoshka dims against the model (32..hidden); None means the full size."""
    if not dims:
        return [hidden_size]
    if len(set(dims)) != len(dims):
        raise InputError(f"--dim lists a dimension twice: {list(dims)}.")
    return [check_dim(d, hidden_size) for d in dims]


def evaluate_retrieval(
    embedder: Embedder, dataset: BeirDataset, *, instruction: str, dims: Sequence[int] | None = None,
    ks: Sequence[int] = DEFAULT_K, depth: int = DEFAULT_DEPTH, cache_dir: Path | None = None,
    device: str | None = None, progress: bool | None = None, ignore_identical_ids: bool | None = None,
    on_stage: Callable[[str], None] | None = None, tokenize: Tokenize = tokenize_texts,
) -> RetrievalResult:
    """Embed, search and score one BEIR split; see the module docstring."""
    drop_same = ignores_identical_ids(dataset.name) if ignore_identical_ids is None else ignore_identical_ids
    dims_ = check_dims(dims, embedder.hidden_size)
    ks_ = check_ks(ks)
    if depth < max(ks_):
        raise InputError(f"depth={depth} is below the largest cutoff k={max(ks_)}; raise --depth.")
    say = on_stage or (lambda _s: None)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    say(f"embedding {len(dataset.corpus_ids)} documents")
    doc_vecs = embed_corpus(embedder, dataset.corpus_ids, dataset.corpus_texts, cache_dir, progress=progress,
                            tokenize=tokenize)
    timings["embed_corpus_s"] = time.perf_counter() - t
    t = time.perf_counter()
    say(f"embedding {len(dataset.query_ids)} queries")
    query_vecs = embed_texts(embedder, dataset.query_texts, instruction=instruction, progress=progress,
                             tokenize=tokenize)
    timings["embed_queries_s"] = time.perf_counter() - t

    results = []
    timings["search_s"] = timings["metrics_s"] = 0.0
    for d in dims_:
        t = time.perf_counter()
        say(f"searching at dim {d}")
        scores, idx = exact_topk(at_dim(query_vecs, d), at_dim(doc_vecs, d), depth, device=device)
        run = build_run(dataset.query_ids, dataset.corpus_ids, scores, idx)
        if drop_same:
            run = {q: {d: v for d, v in docs.items() if d != q} for q, docs in run.items()}
        timings["search_s"] += time.perf_counter() - t
        t = time.perf_counter()
        ev = evaluate(dataset.qrels, run, extra_k=ks_)
        timings["metrics_s"] += time.perf_counter() - t
        results.append(DimResult(d, run, ev))
    stats = dict(dataset.stats) | {"ignore_identical_ids": drop_same}
    return RetrievalResult(dataset.name, dataset.split, str(embedder.name), instruction, ks_, depth, results,
                           stats, timings)
