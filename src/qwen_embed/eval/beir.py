"""BEIR dataset folders: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`.

Follows BEIR's GenericDataLoader and MTEB's retrieval loader:
- corpus lines `{"_id", "title", "text"}`; a document's text for embedding is `(title + " " + text).strip()`
  when it has a title, else `text.strip()` (MTEB's `_corpus_to_dict`). A document whose text is empty
  stays in the corpus (MTEB embeds the empty string); the evaluation embeds it as the end token alone.
- queries lines `{"_id", "text"}`; qrels TSV `query-id  corpus-id  score` with a header line.
- Only queries judged in the split are evaluated. Queries without judgments are counted and reported (MTEB
  drops them too); judgments that name a query or document missing from the files are counted, reported
  and dropped.
- Duplicate ids (corpus, queries, or a (query, document) pair in the qrels) are errors, as is an empty
  corpus or a missing split (the message lists the splits that exist).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..jsonl import iter_jsonl
from ..tokenizer import document_text
from .trec import Qrels, parse_grade


@dataclass
class BeirDataset:
    """One split of a BEIR folder, ready to evaluate."""

    name: str
    split: str
    corpus_ids: list[str]
    corpus_texts: list[str]  # title and text joined as MTEB does; may be "" for an empty document
    query_ids: list[str]  # the judged queries of the split, in queries.jsonl order
    query_texts: list[str]
    qrels: Qrels
    stats: dict[str, Any] = field(default_factory=dict)
    unjudged_query_ids: list[str] = field(default_factory=list)  # in queries.jsonl, not judged in this split

    @property
    def queries(self) -> dict[str, str]:
        return dict(zip(self.query_ids, self.query_texts, strict=True))

    @property
    def corpus(self) -> dict[str, str]:
        return dict(zip(self.corpus_ids, self.corpus_texts, strict=True))




def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise InputError(f"{path} is missing; a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv.")
    with path.open(encoding="utf-8") as f:
        for n, obj in iter_jsonl(f, str(path)):
            if not isinstance(obj, dict) or "_id" not in obj:
                raise InputError(f"{path}:{n}: each line needs an '_id' field.")
            yield n, obj


def _read_ids_texts(path: Path, what: str, with_title: bool) -> tuple[list[str], list[str]]:
    ids: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    for n, obj in _jsonl(path):
        doc_id = str(obj["_id"])
        if doc_id in seen:
            raise InputError(f"{path}:{n}: duplicate {what} id {doc_id!r} (first on line {seen[doc_id]}); "
                             f"ids must be unique.")
        seen[doc_id] = n
        text = obj.get("text")
        if text is not None and not isinstance(text, str):
            raise InputError(f"{path}:{n}: 'text' must be a string.")
        ids.append(doc_id)
        texts.append(document_text(obj.get("title"), text) if with_title else (text or ""))
    return ids, texts


def splits(folder: str | os.PathLike[str]) -> list[str]:
    """The qrels splits of a BEIR folder (names of qrels/*.tsv)."""
    return sorted(p.stem for p in (Path(folder) / "qrels").glob("*.tsv"))


def read_beir_qrels(path: Path) -> Qrels:
    """A BEIR qrels TSV (`query-id corpus-id score`, header optional) -> {qid: {docid: score}}."""
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.rstrip("\n\r").split("\t")
            if not line.strip():
                continue
            if len(fields) < 3:
                fields = line.split()
            if len(fields) < 3:
                raise InputError(f"{path}:{n}: a qrels line has 3 tab-separated fields: query-id corpus-id score.")
            qid, doc, score = fields[0].strip(), fields[1].strip(), fields[2].strip()
            if n == 1 and score.isascii() and score.isalpha() and score.lower() not in ("nan", "inf", "infinity"):
                continue  # the header: query-id corpus-id score
            value = parse_grade(score, f"{path}:{n}")
            judged = qrels.setdefault(qid, {})
            if doc in judged:
                raise InputError(f"{path}:{n}: duplicate judgment of document {doc!r} for query {qid!r}.")
            judged[doc] = value
    return qrels


def load_beir(folder: str | os.PathLike[str], split: str = "test") -> BeirDataset:
    """Load one split of a BEIR folder; see the module docstring for the rules."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist.")
    if not (root / "corpus.jsonl").is_file() and not (root / "qrels").is_dir():
        raise InputError(f"{root} is not a BEIR folder: it needs corpus.jsonl, queries.jsonl and qrels/<split>.tsv "
                         f"(download one, e.g. `make data` or the BEIR zip of SciFact, and pass its folder).")
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = splits(root)
        raise InputError(f"{root} has no qrels for split {split!r} ({qrels_path} is missing); "
                         f"available splits: {', '.join(have) or 'none'}. Pass --split with one of them.")
    corpus_ids, corpus_texts = _read_ids_texts(root / "corpus.jsonl", "document", with_title=True)
    if not corpus_ids:
        raise InputError(f"{root / 'corpus.jsonl'} holds no documents; a retrieval corpus needs at least one.")
    all_qids, all_qtexts = _read_ids_texts(root / "queries.jsonl", "query", with_title=False)
    raw = read_beir_qrels(qrels_path)
    corpus_set = set(corpus_ids)
    query_text = dict(zip(all_qids, all_qtexts, strict=True))
    missing_queries = sorted(q for q in raw if q not in query_text)
    missing_docs = sorted({d for q in raw for d in raw[q] if d not in corpus_set})
    qrels: Qrels = {}
    for q, docs in raw.items():
        if q in query_text:
            kept = {d: r for d, r in docs.items() if d in corpus_set}
            if kept:
                qrels[q] = kept
    empty_queries = [q for q in qrels if not query_text[q].strip()]
    if empty_queries:
        raise InputError(f"{root / 'queries.jsonl'}: judged query {empty_queries[0]!r} has no text "
                         f"({len(empty_queries)} such queries); give it a text or drop its judgments.")
    query_ids = [q for q in all_qids if q in qrels]
    if not query_ids:
        raise InputError(f"split {split!r} of {root} judges no query of queries.jsonl; check the ids in {qrels_path}.")
    stats = {
        "documents": len(corpus_ids),
        "empty_documents": sum(1 for t in corpus_texts if not t),
        "queries": len(query_ids),
        "queries_without_judgments": len(all_qids) - len(query_ids),
        "judgments": sum(len(d) for d in qrels.values()),
        "relevant_judgments": sum(1 for d in qrels.values() for r in d.values() if r > 0),
        "judged_queries_missing_from_queries_file": missing_queries,
        "judged_documents_missing_from_corpus": missing_docs,
    }
    return BeirDataset(root.name, split, corpus_ids, corpus_texts, query_ids,
                       [query_text[q] for q in query_ids], qrels, stats,
                       [q for q in all_qids if q not in qrels])
