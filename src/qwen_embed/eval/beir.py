"""BEIR dataset folders: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`.

Follows BEIR's GenericDataLoader and MTEB's retrieval loader:
- corpus lines `{"_id", "title", "text"}`; a document's text for embedding is `(title + " " + text).strip()`
  when it has a title, else `text.strip()` (MTEB's `_corpus_to_dict`). A document whose text is empty
  stays in the corpus (MTEB embeds the empty string); the evaluation embeds it as the end token alone.
- queries lines `{"_id", "text"}`; qrels TSV `query-id  corpus-id  score` with a header line.
- Qrels files are read by their content, never their name (`read_qrels_file`): the first line that is not
  blank has 3 fields (BEIR; a header `query-id corpus-id score` is skipped) or 4 (TREC `qid iter docno rel`,
  the format of MS MARCO's `qrels.dev.tsv`), and every line must then have that many; anything else is an
  error naming `file:line`, never a field silently dropped.
- Ids are one word: a corpus or query id that is empty or holds whitespace is refused when the dataset is
  loaded (before anything is embedded), as is a tab-separated qrels field holding whitespace, because TREC
  runs split their fields at whitespace and a run naming such an id could not be read back.
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
from ..textio import one_word
from ..tokenizer import document_text
from .trec import Qrels, numbered_lines, parse_grade


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
    with path.open(encoding="utf-8-sig") as f:
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
        if not one_word(doc_id):
            raise InputError(f"{path}:{n}: {what} id {doc_id!r} {'is empty' if not doc_id else 'holds whitespace'}; "
                             f"TREC runs split their fields at whitespace, so a run naming it could not be read "
                             f"back; give it an id of one word (e.g. '_' for each space).")
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


_FORMATS = {3: ("BEIR", "'query-id corpus-id score'"), 4: ("TREC", "'qid iter docno rel'")}


def _qrels_fields(path: Path, n: int, line: str) -> list[str]:
    """The whitespace-separated fields of a qrels line; a tab-separated field holding whitespace (an id with
    a space, which would otherwise read as two fields) is an error."""
    spaced = next((f.strip() for f in line.split("\t") if len(f.split()) > 1), None) if "\t" in line else None
    if spaced is not None:
        raise InputError(f"{path}:{n}: qrels field {spaced[:60]!r} holds whitespace; ids are one word (TREC runs "
                         f"split their fields at whitespace); replace the spaces in that id.")
    return line.split()


def _is_header(fields: list[str]) -> bool:
    score = fields[2]
    return score.isascii() and score.isalpha() and score.lower() not in ("nan", "inf", "infinity")


def _read_qrels(path: Path, width: int | None) -> Qrels:
    """Qrels of `width` fields per line (3 BEIR, 4 TREC), or of the first line's width when None."""
    qrels: Qrels = {}
    first = True
    for n, line in numbered_lines(path, "qrels"):
        fields = _qrels_fields(path, n, line)
        if first:
            first = False
            if width is None and len(fields) in _FORMATS:
                width = len(fields)
            if len(fields) == 3 == width and _is_header(fields):
                continue  # BEIR's header: query-id corpus-id score
        if len(fields) != width:
            expected = (f"{width} fields {_FORMATS[width][1]} ({_FORMATS[width][0]}, as the file's first line)"
                        if width is not None else "4 fields 'qid iter docno rel' (TREC) or 3 'query-id corpus-id "
                        "score' (BEIR)")
            raise InputError(f"{path}:{n}: a qrels line has {expected}, got {len(fields)}; fix that line.")
        qid, doc, grade = (fields[0], fields[2], fields[3]) if width == 4 else fields
        value = parse_grade(grade, f"{path}:{n}")
        judged = qrels.setdefault(qid, {})
        if doc in judged:
            raise InputError(f"{path}:{n}: duplicate judgment: document {doc!r} is judged twice for query {qid!r}; "
                             f"keep one line.")
        judged[doc] = value
    if not qrels:
        raise InputError(f"qrels file {path} holds no judgments.")
    return qrels


def read_qrels_file(path: str | os.PathLike[str]) -> Qrels:
    """TREC or BEIR qrels -> {qid: {docid: grade}}, the format told by the content (see the module docstring)."""
    return _read_qrels(Path(path), None)


def read_beir_qrels(path: str | os.PathLike[str]) -> Qrels:
    """A BEIR qrels TSV (`query-id corpus-id score`, header optional); every line has exactly 3 fields."""
    return _read_qrels(Path(path), 3)


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
    raw = read_qrels_file(qrels_path)
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
