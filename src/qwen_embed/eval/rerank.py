"""Rerank evaluation, the published protocol: rerank the top N (default 100) candidates of a saved run.

The candidates come from a run file (normally the embedding model's, written by `eval retrieval`). For each
judged query, its top N documents in trec_eval's order are scored by the reranker and the reranked list is
evaluated; "before" is the same top N in the candidate order, so both sides see the same documents.
- A run that names a query the dataset does not know, or a document missing from the corpus, is an error
  (a wrong run file or dataset). Queries of queries.jsonl that the split does not judge are skipped and
  counted; judged queries without candidates are counted and left out of both sides (trec_eval's rule).
- A document whose text is empty is scored with an empty document part.
- Scores are saved block by block through `files.ResumableJsonl` (rows `{"qid", "scores"}` keyed by the
  query id); an interrupted run resumes from them when the model, template, instruction, N and candidates
  are the same (the job fingerprint), and starts again otherwise. `eval rerank` keeps them resumable
  (`keep_partial`) until its results are written, so an interruption at any point loses no score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, is_whole
from ..files import ResumableJsonl, fingerprint, fingerprint_rows
from .at_k import DEFAULT_K, check_ks
from .beir import BeirDataset
from .metrics import Evaluation, evaluate
from .trec import Run, sorted_docs

if TYPE_CHECKING:
    from ..reranker import Reranker

DEFAULT_TOP = 100
BLOCK_QUERIES = 16


@dataclass
class RerankEvaluation:
    """Before/after evaluations of a rerank, and the reranked run."""

    dataset: str
    split: str
    model: str
    instruction: str
    top: int
    ks: list[int]
    before: Evaluation
    after: Evaluation
    run: Run
    stats: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def check_candidates(dataset: BeirDataset, run: Run) -> dict[str, int]:
    """Refuse a run naming unknown queries or documents; count what is skipped."""
    judged, unjudged = set(dataset.query_ids), set(dataset.unjudged_query_ids)
    unknown = [q for q in run if q not in judged and q not in unjudged]
    if unknown:
        raise InputError(f"the candidate run names {len(unknown)} queries that {dataset.name} does not have "
                         f"(e.g. {unknown[0]!r}); it was made for another dataset or split.")
    corpus = set(dataset.corpus_ids)
    for q, docs in run.items():
        missing = next((d for d in docs if d not in corpus), None)
        if missing is not None:
            raise InputError(f"the candidate run names document {missing!r} (query {q!r}) that is not in "
                             f"{dataset.name}'s corpus; it was made for another corpus.")
    return {"run_queries_not_judged": sum(1 for q in run if q in unjudged),
            "judged_queries_without_candidates": sum(1 for q in judged if q not in run)}


def pair_ids(reranker: Reranker, query: str, docs: Sequence[str], instruction: str) -> list[list[int]]:
    """Reranker inputs for one query; documents with empty text get an empty document part."""
    full = [i for i, d in enumerate(docs) if d]
    out: list[list[int]] = [[] for _ in docs]
    if full:
        built = reranker.build_input_ids(query, [docs[i] for i in full], instruction=instruction)
        for i, ids in zip(full, built, strict=True):
            out[i] = ids
    if len(full) < len(docs):
        tok, tmpl = reranker.tokenizer, reranker.template
        empty = tok.encode_one(tmpl.prefix) + tok.encode_one(tmpl.body(instruction, query, "")) + \
            tok.encode_one(tmpl.tail)
        for i, d in enumerate(docs):
            if not d:
                out[i] = empty
    return out


def _job(reranker: Reranker, instruction: str, top: int, candidates: Run) -> str:
    """The fingerprint of a rerank job: what must be equal for saved scores to be reused."""
    return fingerprint(str(reranker.name), reranker.template.name, instruction, top, reranker.max_length,
                       reranker.tokenizer.fingerprint,
                       fingerprint_rows([q, sorted_docs(candidates[q])[:top]] for q in sorted(candidates)))


def rerank_run(reranker: Reranker, dataset: BeirDataset, candidates: Run, *, top: int = DEFAULT_TOP,
               instruction: str, partial: Path | None = None, progress: bool | None = None,
               keep_partial: bool = False) -> Run:
    """Score the top `top` candidates of every judged query -> the reranked run {qid: {docid: score}}.

    With `partial`, scores are kept there as they come (resumable JSONL, finished into `partial` at the end;
    with `keep_partial` left resumable instead, for a caller that removes them once its results are written)."""
    if not is_whole(top, 1):
        raise InputError(f"top must be a positive number of candidates, got {top!r}")
    queries = [q for q in dataset.query_ids if q in candidates]
    done: Run = {}
    saved = None
    if partial is not None:  # another job's scores are dropped: overwrite=True
        saved = ResumableJsonl(partial, key="qid", job=_job(reranker, instruction, top, candidates), overwrite=True)
        done = {row["qid"]: row["scores"] for row in saved.rows()}
    try:
        run = _score_queries(reranker, dataset, candidates, [q for q in queries if q not in done], done, top,
                             instruction, saved, progress, len(queries))
    except BaseException:
        if saved is not None:
            saved.close()  # resumable
        raise
    if saved is not None:
        if keep_partial:
            saved.close()
        else:
            saved.finish()
    return {q: run[q] for q in queries}


def _score_queries(reranker: Reranker, dataset: BeirDataset, candidates: Run, todo: list[str], done: Run, top: int,
                   instruction: str, saved: ResumableJsonl | None, progress: bool | None, total: int) -> Run:
    """Score the queries of `todo` block by block into `done` (and `saved`)."""
    text = dataset.corpus
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=total - len(todo), disable=not progress, unit="query", desc="reranking",
               leave=False)
    for b in range(0, len(todo), BLOCK_QUERIES):
        block = todo[b:b + BLOCK_QUERIES]
        seqs: list[list[int]] = []
        docs_of: list[list[str]] = []
        for q in block:
            docs = [d for d, _ in sorted_docs(candidates[q])[:top]]
            docs_of.append(docs)
            seqs += pair_ids(reranker, dataset.queries[q], [text[d] for d in docs], instruction)
        scores = reranker.score_ids(seqs, progress=False).tolist()
        rows = []
        for q, docs in zip(block, docs_of, strict=True):
            done[q] = dict(zip(docs, scores[:len(docs)], strict=True))
            scores = scores[len(docs):]
            rows.append({"qid": q, "scores": done[q]})
        if saved is not None:
            saved.write_many(rows)
        bar.update(len(block))
    bar.close()
    return done


def evaluate_rerank(
    reranker: Reranker, dataset: BeirDataset, candidates: Run, *, instruction: str, top: int = DEFAULT_TOP,
    ks: Sequence[int] = DEFAULT_K, partial: Path | None = None, progress: bool | None = None,
    on_stage: Callable[[str], None] | None = None, keep_partial: bool = False,
) -> RerankEvaluation:
    """Rerank the top `top` candidates and evaluate before and after on the same documents."""
    ks_ = check_ks(ks)
    stats = check_candidates(dataset, candidates)
    judged = {q: candidates[q] for q in dataset.query_ids if q in candidates}
    if not judged:
        raise InputError(f"the candidate run has no judged query of split {dataset.split!r}.")
    before_run = {q: dict(sorted_docs(d)[:top]) for q, d in judged.items()}
    say = on_stage or (lambda _s: None)
    say(f"reranking the top {top} of {len(judged)} queries")
    t = time.perf_counter()
    after_run = rerank_run(reranker, dataset, judged, top=top, instruction=instruction, partial=partial,
                           progress=progress, keep_partial=keep_partial)
    timings = {"rerank_s": time.perf_counter() - t}
    t = time.perf_counter()
    before = evaluate(dataset.qrels, before_run, extra_k=ks_)
    after = evaluate(dataset.qrels, after_run, extra_k=ks_)
    timings["metrics_s"] = time.perf_counter() - t
    stats |= {"queries": len(judged), "pairs": sum(len(d) for d in after_run.values())}
    return RerankEvaluation(dataset.name, dataset.split, str(reranker.name), instruction, top, ks_, before, after,
                            after_run, stats, timings)
