"""Index: documents in, chunk vectors upserted into a vector store; search out.

    index = Index.open("my-db", model="Qwen/Qwen3-Embedding-0.6B")
    index.add([Document("a", "some text")])
    hits = index.search("a question", k=10, reranker=Reranker.from_pretrained("Qwen/Qwen3-Reranker-0.6B"))

Upserts are by document id with a content hash (text, title, metadata): a document whose hash is
stored already is skipped, a changed one is re-embedded and replaces all its chunks. Documents are
written in batches, each one atomic commit, so an interrupted run (Ctrl-C, kill, crash) loses at most
the batch in flight and the next run picks up where it stopped, with no duplicates. After a run that
changed the table, the store builds or refreshes its ANN index when the table is large enough.

The table records the model (its name, where it was loaded from, and a fingerprint of its weights),
dimension, query instruction, tokenizer fingerprint and chunking; opening it with other weights or
another dimension is an error (the same weights in a moved folder or under a hub id are accepted), and
the recorded model is the default for searching.

`check_db_folder` runs before any work: a database folder is updated in place by design, but a file,
or a folder holding anything other than LanceDB tables, is refused so that no user file is touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..embedder import DEFAULT_INSTRUCTION, Embedder
from ..errors import InputError, is_whole
from ..pooling import check_dim
from ..reranker import Reranker
from ..settings import DEFAULT_EMBEDDING_MODEL, ModelSettings
from ..store import (
    ChunkRows,
    TableInfo,
    TableNotFoundError,
    VectorStore,
    check_compatible,
    check_metadata_name,
    open_store,
)
from .chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP, ChunkSettings, split_texts
from .search import DEFAULT_CANDIDATES, DEFAULT_K, Hit, passage, search
from .sources import Document

DEFAULT_TABLE = "documents"
DEFAULT_BATCH_DOCS = 256
DEFAULT_MODEL = DEFAULT_EMBEDDING_MODEL


def doc_hash(doc: Document) -> str:
    """Content hash of a document: its text, title and metadata."""
    payload = json.dumps([doc.text, doc.title, doc.metadata], ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def model_id(model: str | os.PathLike[str]) -> str:
    """A hub id as given; a local folder as its absolute path (where to load it from by default)."""
    text = os.fspath(model)
    path = Path(text).expanduser()
    return str(path.resolve()) if path.exists() else text


def model_fingerprint(model: str | os.PathLike[str]) -> str:
    """The weights fingerprint of a hub id or folder (resolving it, without loading it)."""
    from ..weights import resolve_model_dir, weights_fingerprint

    return weights_fingerprint(resolve_model_dir(model))


def _db_entry(entry: Path) -> bool:
    """Whether a folder entry is the store's own: a table (`NAME.lance/`) or a writer lock (`.NAME.write.lock`)."""
    name = entry.name
    return (name.endswith(".lance") and entry.is_dir()) or (name.startswith(".") and name.endswith(".write.lock"))


def check_db_folder(db: str | os.PathLike[str], *, create: bool = True) -> Path:
    """Refuse, before any work, a --db that is a file, sits under a file or a missing folder, or is a
    folder holding other things than LanceDB tables (`NAME.lance`); a database is updated in place."""
    from ..files import check_output_dir

    path = Path(db).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"--db {path} is a file; give a folder for the database: "
                         + ("one made by `qwen-embed index`." if not create else "a new one is created."))
    if not path.exists():
        if not create:
            return path
        check_output_dir(path, what="--db")
        return path
    others = sorted(e.name for e in path.iterdir() if not _db_entry(e))
    if others:
        raise InputError(f"--db {path} is a folder that holds other files ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}), not a LanceDB database; choose a new folder "
                         f"or one made by `qwen-embed index`.")
    return path


def new_table_chunking(chunk_tokens: int | None, overlap: int | None, max_length: int) -> ChunkSettings:
    """The chunking of a new table: the given values, else 512 / 64 or what fits `max_length`; a chunk and
    its end token must fit in max_length, or most of each chunk would never reach its vector."""
    fit = max_length - 1
    c = min(DEFAULT_CHUNK_TOKENS, fit) if chunk_tokens is None else chunk_tokens
    o = min(DEFAULT_OVERLAP, c // 8) if overlap is None else overlap
    if is_whole(c) and c > fit:
        raise InputError(f"chunk_tokens={c} does not fit max_length={max_length} (a chunk and its end token are "
                         f"embedded together): use --chunk-tokens {fit} or less, or raise --max-length.")
    return ChunkSettings(c, o)


def as_document(doc: Document | Mapping[str, Any], position: int = 0) -> Document:
    """A `Document` from itself or from a dict like a JSONL source line (see `Index.add`)."""
    if isinstance(doc, Document):
        return doc
    if not isinstance(doc, Mapping):
        raise InputError(f"documents[{position}] is a {type(doc).__name__}; pass Document objects or dicts with "
                         f"'id' and 'text'.")
    doc_id = doc.get("id", doc.get("_id"))
    text, title = doc.get("text", ""), doc.get("title") or ""
    if isinstance(doc_id, bool) or not isinstance(doc_id, str | int) or doc_id == "":
        raise InputError(f"documents[{position}] needs an 'id' (or '_id') string or integer, got {doc_id!r}.")
    if not isinstance(text, str) or not isinstance(title, str):
        raise InputError(f"documents[{position}] ({doc_id!r}): 'text' and 'title' must be strings.")
    meta = dict(doc.get("metadata") or {})
    meta.update({k: v for k, v in doc.items() if k not in ("id", "_id", "text", "title", "metadata")})
    return Document(str(doc_id), text, title, meta)


@dataclass
class IndexReport:
    """What an indexing run did, with its time split into embedding and store writes."""

    documents: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    chunks: int = 0
    tokens: int = 0
    embed_seconds: float = 0.0
    store_seconds: float = 0.0
    maintenance: str | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        s = (f"{self.documents} documents: {self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
             f"{self.deleted} deleted; {self.chunks} chunks, {self.tokens} tokens embedded in "
             f"{self.embed_seconds:.1f} s, stored in {self.store_seconds:.1f} s")
        if self.skipped:
            s += f"; {len(self.skipped)} skipped"
        return s


class Index:
    """A vector store plus the embedder that fills and queries it."""

    def __init__(self, store: VectorStore, embedder: Embedder | None = None,
                 load: ModelSettings | None = None) -> None:
        self.store = store
        self._embedder = embedder
        self._load = load or ModelSettings()  # how to load the embedder on first use (model None: the table's)

    @property
    def info(self) -> TableInfo:
        """How the table was made (model, weights fingerprint, dimension, chunking, instruction)."""
        return self.store.info

    @classmethod
    def open(
        cls, db: str | os.PathLike[str], *, table: str = DEFAULT_TABLE, model: str | os.PathLike[str] | Embedder |
        None = None, dim: int | None = None, instruction: str | None = None, chunk_tokens: int | None = None,
        overlap: int | None = None, create: bool = True, device: str | None = None, dtype: str | None = None,
        max_length: int | None = None, batch_tokens: int | None = None, precision: str | None = None,
        ranges: Any = None, deterministic: bool = False,
    ) -> Index:
        """Open (or, with `create`, make) the table `table` in the LanceDB folder `db`.

        model: hub id, local folder or loaded Embedder; default: the table's model, or
        Qwen/Qwen3-Embedding-0.6B for a new table. dim: Matryoshka dimension (default: the table's, or the
        model's hidden size). instruction: default query instruction recorded in a new table (default:
        the web-search one). chunk_tokens / overlap: chunking of a new table (default 512 / 64, or what
        fits max_length: a chunk and its end token); an existing table keeps its own and refuses other
        values. max_length: tokens per embedded chunk (default 8192 or the model's limit where lower; an
        existing table's own, and adding to it at another is refused). The table itself is made by the
        first write of `add`. precision: how a new table stores its
        vectors (float32 default, float16, int8, uint8, binary, ubinary; see `quantize.py`), with int8
        calibration `ranges` ([2, dim]; default: calibrated on the first batch); an existing table keeps
        its own and refuses another. deterministic: batch-invariant embedding (see `Embedder`).
        """
        load = ModelSettings(device=device, dtype=dtype, max_length=max_length, batch_tokens=batch_tokens,
                             deterministic=deterministic)
        embedder: Embedder | None = None
        wanted: str | None = None
        fingerprint: str | None = None
        check_db_folder(db, create=create)
        if chunk_tokens is not None or overlap is not None:  # the values alone, checked before any loading
            ChunkSettings(chunk_tokens or DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP if overlap is None else overlap)
        if isinstance(model, Embedder):
            embedder, wanted = model, model_id(model.name)
            fingerprint = model_fingerprint(model.checkpoint.path)
        elif model is not None:
            wanted = model_id(model)
            fingerprint = model_fingerprint(model)
        try:
            store: VectorStore = open_store(db, table)
        except TableNotFoundError:
            if not create:
                raise
        else:
            info = store.info
            check_compatible(info, table, model=wanted, dim=dim, precision=precision, weights_fingerprint=fingerprint)
            for name, value, have in (("chunk_tokens", chunk_tokens, info.chunk_tokens),
                                      ("overlap", overlap, info.overlap), ("instruction", instruction,
                                                                            info.query_instruction)):
                if value is not None and value != have:
                    flag = "--" + name.replace("_", "-")
                    why = ("a search takes --instruction of its own" if name == "instruction" else
                           f"the stored chunks were cut with {name}={have}; another value means indexing anew")
                    raise InputError(f"table {table!r} was made with {name}={have!r}, not {value!r}; leave {flag} "
                                     f"out ({why}), or index into a new --table.")
            if wanted is None and info.weights_fingerprint and not Path(info.model).exists() \
                    and Path(info.model).is_absolute():
                raise InputError(f"table {table!r} was indexed with the model folder {info.model}, which is no longer "
                                 f"there; pass the model with --model (the same weights are recognised wherever "
                                 f"they are).")
            if max_length is None:  # queries and new chunks are embedded as the stored chunks were
                load = dataclasses.replace(load, max_length=info.max_length)
            index = cls(store, embedder, load.with_model(wanted or info.model))
            if embedder is not None:
                index._check_embedder(embedder)
            return index
        if embedder is None:
            embedder = load.with_model(wanted or DEFAULT_MODEL).load_embedder()
        settings = new_table_chunking(chunk_tokens, overlap, embedder.max_length)
        info = TableInfo(
            weights_fingerprint=fingerprint or model_fingerprint(embedder.checkpoint.path),
            model=wanted or DEFAULT_MODEL, dim=check_dim(dim, embedder.hidden_size), hidden_size=embedder.hidden_size,
            tokenizer_fingerprint=embedder.tokenizer.fingerprint, query_instruction=instruction or DEFAULT_INSTRUCTION,
            chunk_tokens=settings.chunk_tokens, overlap=settings.overlap, max_length=embedder.max_length,
            precision=precision or "float32",
            ranges=None if ranges is None else np.asarray(ranges, dtype=np.float32).tolist(),
        )
        return cls(open_store(db, table, info), embedder)

    # -- the embedder -------------------------------------------------------------------------------
    def _check_embedder(self, embedder: Embedder) -> None:
        check_compatible(self.info, self.store.name, model=model_id(self._load.model or embedder.name),
                         hidden_size=embedder.hidden_size, tokenizer_fingerprint=embedder.tokenizer.fingerprint,
                         weights_fingerprint=model_fingerprint(embedder.checkpoint.path))

    @property
    def embedder(self) -> Embedder:
        """The table's embedder, loaded on first use."""
        if self._embedder is None:
            emb = (self._load if self._load.model else self._load.with_model(self.info.model)).load_embedder()
            self._check_embedder(emb)
            self._embedder = emb
        return self._embedder

    # -- writing ------------------------------------------------------------------------------------
    def add(self, documents: Iterable[Document | Mapping[str, Any]], *, batch_docs: int = DEFAULT_BATCH_DOCS,
            progress: bool | None = None) -> IndexReport:
        """Upsert documents (`Document`s or dicts with `id` / `_id`, `text`, optional `title` and `metadata`,
        other keys kept as metadata): skip unchanged ones, embed and write the others in atomic batches.

        The whole run holds the table's writer lock, so concurrent runs take turns and never duplicate
        a chunk; documents found duplicated (by runs of older versions) are rewritten; maintenance left
        undone by a run that died after its last commit is done now."""
        if not is_whole(batch_docs, 1):
            raise InputError(f"batch_docs must be a positive integer, got {batch_docs!r}")
        docs = [as_document(d, i) for i, d in enumerate(documents)]
        seen: set[str] = set()
        for d in docs:  # the whole input checked before any work
            if d.id in seen:
                raise InputError(f"document id {d.id!r} occurs twice in one add; ids must be unique (keep one).")
            seen.add(d.id)
            for key in d.metadata:
                check_metadata_name(key, d.id)
        have = self._load.max_length if self._embedder is None else self._embedder.max_length
        if have is not None and have != self.info.max_length:
            raise InputError(f"table {self.store.name!r} was made with max_length={self.info.max_length}, not "
                             f"{have}; its chunks are embedded at one length: leave --max-length out, or index "
                             f"into a new --table.")
        report = IndexReport(documents=len(docs))
        with self.store.writing():
            stored = self.store.doc_hashes()
            repaired = self.store.duplicate_doc_ids()
            if repaired:
                self.store.delete_documents(sorted(repaired))
                report.skipped.extend((d, "stored twice by concurrent writers: rewritten") for d in sorted(repaired))
            todo = [(d, h) for d in docs if stored.get(d.id) != (h := doc_hash(d)) or d.id in repaired]
            report.unchanged = len(docs) - len(todo)
            if todo:
                self._write(todo, stored, report, batch_docs, progress)
            if todo or repaired or self.store.maintenance_due():
                t = time.perf_counter()
                report.maintenance = self.store.maintain()
                report.store_seconds += time.perf_counter() - t
        return report

    def _write(self, todo: list[tuple[Document, str]], stored: dict[str, str], report: IndexReport,
               batch_docs: int, progress: bool | None) -> None:
        settings = ChunkSettings(self.info.chunk_tokens, self.info.overlap)
        emb = self.embedder
        show = progress if progress is not None else len(todo) >= 64
        with tqdm(total=len(todo), unit="doc", desc="indexing", disable=not show, leave=False) as bar:
            for start in range(0, len(todo), batch_docs):
                batch = todo[start : start + batch_docs]
                t0 = time.perf_counter()
                rows = self._embed(emb, batch, settings, report)
                t1 = time.perf_counter()
                self.store.replace_documents([d.id for d, _ in batch], rows)
                report.store_seconds += time.perf_counter() - t1
                report.embed_seconds += t1 - t0
                for d, _ in batch:
                    if d.id in stored:
                        report.updated += 1
                    else:
                        report.added += 1
                bar.update(len(batch))
                bar.set_postfix(tokens=report.tokens, refresh=False)

    def _embed(self, emb: Embedder, batch: Sequence[tuple[Document, str]], settings: ChunkSettings,
               report: IndexReport) -> ChunkRows:
        chunked = split_texts(emb.tokenizer, [d.text for d, _ in batch], settings)
        cols: dict[str, list[Any]] = {k: [] for k in ("ids", "doc_ids", "chunks", "texts", "titles", "hashes",
                                                     "metadata", "inputs")}
        for (doc, h), chunks in zip(batch, chunked, strict=True):
            for n, text in enumerate(chunks):
                for key, value in (("ids", f"{doc.id}#{n}"), ("doc_ids", doc.id), ("chunks", n), ("texts", text),
                                   ("titles", doc.title), ("hashes", h), ("metadata", doc.metadata),
                                   ("inputs", passage(doc.title, text) or doc.id)):
                    cols[key].append(value)
        seqs = emb.tokenize(cols.pop("inputs"))
        report.tokens += sum(len(s) for s in seqs)
        report.chunks += len(seqs)
        return ChunkRows(**cols, vectors=emb.embed_ids(seqs, dim=self.info.dim, progress=False))

    def delete(self, ids: Iterable[str]) -> int:
        """Delete documents by id; returns the number of chunk rows removed."""
        with self.store.writing():
            n = self.store.delete_documents(list(ids))
            if n:
                self.store.maintain()
        return n

    def missing(self, present: Iterable[str]) -> list[str]:
        """Ids of stored documents that are not in `present` (what `delete_missing` would remove), sorted."""
        keep = set(present)
        return sorted(d for d in self.store.doc_hashes() if d not in keep)

    def delete_missing(self, present: Iterable[str]) -> int:
        """Delete every stored document whose id is not in `present`; returns the number of documents."""
        keep = set(present)
        with self.store.writing():
            gone = [d for d in self.store.doc_hashes() if d not in keep]
            if gone:
                self.store.delete_documents(gone)
                self.store.maintain()
        return len(gone)

    def plan(self, documents: Iterable[Document | Mapping[str, Any]]) -> IndexReport:
        """What `add` would do (added / updated / unchanged counts), without embedding or writing."""
        docs = [as_document(d, i) for i, d in enumerate(documents)]
        stored = self.store.doc_hashes()
        report = IndexReport(documents=len(docs))
        for d in docs:
            h = stored.get(d.id)
            if h is None:
                report.added += 1
            elif h == doc_hash(d):
                report.unchanged += 1
            else:
                report.updated += 1
        return report

    # -- reading ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.store.count()

    def search(self, query: str, k: int = DEFAULT_K, *, reranker: Reranker | None = None,
               candidates: int = DEFAULT_CANDIDATES, instruction: str | None = None, where: str | None = None,
               exact: bool = False, nprobes: int | None = None, rescore_multiplier: int | None = None,
               params: dict[str, Any] | None = None) -> list[Hit]:
        """Ranked hits for `query`: top-`candidates` by embedding, reranked when a reranker is given.
        Binary tables rescore `k * rescore_multiplier` Hamming candidates with the float query (default 4)."""
        return search(self.store, self.embedder, query, k=k, reranker=reranker, candidates=candidates,
                      instruction=instruction, where=where, exact=exact, nprobes=nprobes,
                      rescore_multiplier=rescore_multiplier, params=params)
