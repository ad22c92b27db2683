"""`qwen-embed index` and `qwen-embed search`: thin commands over `Index` (registered by qwen_embed.cli).

Heavy imports (torch, lancedb) happen inside the handlers so that `qwen-embed --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..cli import DEFAULT_EMBEDDING_MODEL
from ..errors import InputError

SNIPPET_CHARS = 100


def _add_load_options(p: argparse.ArgumentParser, model_help: str) -> None:
    p.add_argument("--model", default=None, help=model_help)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--max-length", type=int, default=8192, help="tokens per input, end token included (default 8192)")
    p.add_argument("--batch-tokens", type=int, default=None, help="token budget of one forward pass")


def _progress() -> bool | None:
    return None if sys.stderr.isatty() else False


def cmd_index(args: argparse.Namespace) -> int:
    if args.vectors is not None:  # vectors embedded by `embed-corpus`: no embedding here
        from ..ray.cli import cmd_index_vectors

        return cmd_index_vectors(args)
    from .index import Index
    from .sources import read_sources

    sources = read_sources(args.sources)
    for path, why in sources.skipped:
        print(f"qwen-embed index: skipped {path}: {why}", file=sys.stderr)
    if not sources.documents and not args.delete_missing:
        raise InputError("nothing to index: every document of the sources was skipped (see above).")
    index = Index.open(args.db, table=args.table, model=args.model, dim=args.dim, instruction=args.instruction,
                       chunk_tokens=args.chunk_tokens, overlap=args.overlap, device=args.device, dtype=args.dtype,
                       max_length=args.max_length, batch_tokens=args.batch_tokens)
    report = index.add(sources.documents, batch_docs=args.batch_docs, progress=_progress())
    report.skipped = sources.skipped
    if args.delete_missing:
        if sources.complete:
            report.deleted = index.delete_missing([d.id for d in sources.documents] + sorted(sources.skipped_ids))
        else:
            print("qwen-embed index: --delete-missing not applied: a JSONL source was skipped, so the set of "
                  "present ids is unknown.", file=sys.stderr)
    info = index.info
    print(f"{args.db} table {args.table!r} ({info.model}, dim {info.dim}): {report.summary()}", file=sys.stderr)
    if report.maintenance:
        print(f"qwen-embed index: {report.maintenance}", file=sys.stderr)
    return 0


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1] + "…"


def format_hits(hits: list[Any]) -> str:
    """Ranked hits as a readable table: rank, score, id, title and a snippet."""
    if not hits:
        return "no hits"
    id_w = min(32, max(2, *(len(h.id) for h in hits)))
    lines = [f"{'#':>3}  {'score':>7}  {'id':<{id_w}}  title / snippet"]
    for n, h in enumerate(hits, 1):
        head = f"{n:>3}  {h.score:7.4f}  {h.id[:id_w]:<{id_w}}  "
        lines.append(head + (h.title if h.title else _snippet(h.text)))
        if h.title:
            lines.append(" " * len(head) + _snippet(h.text))
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace) -> int:
    from ..reranker import Reranker
    from .index import Index

    index = Index.open(args.db, table=args.table, model=args.model, create=False, device=args.device,
                       dtype=args.dtype, max_length=args.max_length, batch_tokens=args.batch_tokens)
    reranker = None
    if args.rerank_model:
        reranker = Reranker.from_pretrained(args.rerank_model, device=args.device, dtype=args.dtype,
                                            template=args.template, max_length=args.max_length,
                                            batch_tokens=args.batch_tokens)
    hits = index.search(args.query, k=args.k, reranker=reranker, candidates=args.candidates,
                        instruction=args.instruction, where=args.where, exact=args.exact, nprobes=args.nprobes)
    if args.json:
        print(json.dumps([h.as_dict() for h in hits], ensure_ascii=False, indent=2))
    else:
        print(format_hits(hits))
    return 0


def register(sub: Any) -> None:
    """Add `index` and `search` to the `qwen-embed` command."""
    p = sub.add_parser(
        "index", help="embed files, folders, JSONL or a BEIR corpus into a LanceDB table",
        description="Read SOURCEs (.txt/.md files, folders, JSONL with id/text/title, BEIR corpora), split long "
        "documents into token chunks, embed them and upsert them by id into a LanceDB table. Unchanged documents "
        "are skipped; an interrupted run resumes where it stopped.")
    p.add_argument("sources", nargs="*", metavar="SOURCE", help="files or folders to index")
    p.add_argument("--vectors", default=None, metavar="FOLDER", help="instead of SOURCEs: the output folder of "
                   "`qwen-embed embed-corpus`, stored without embedding again (same model and dim as the table)")
    p.add_argument("--db", required=True, help="LanceDB folder (created when missing)")
    p.add_argument("--table", default="documents", help="table name (default: documents)")
    _add_load_options(p, f"embedding model: hub id or folder (default: the table's, or {DEFAULT_EMBEDDING_MODEL} "
                      "for a new table)")
    p.add_argument("--dim", type=int, default=None, help="Matryoshka dimension of a new table (default: hidden size)")
    p.add_argument("--chunk-tokens", type=int, default=None, help="tokens per chunk of a new table (default 512)")
    p.add_argument("--overlap", type=int, default=None, help="tokens shared by consecutive chunks (default 64)")
    p.add_argument("--instruction", default=None, help="query instruction recorded as the table's default for "
                   "searches (default: the web-search one)")
    p.add_argument("--batch-docs", type=int, default=256, help="documents per atomic write (default 256)")
    p.add_argument("--delete-missing", action="store_true",
                   help="delete stored documents that are not in the sources")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "search", help="search a LanceDB table, optionally reranking the candidates",
        description="Embed QUERY with the query template, retrieve the nearest chunks (one hit per document) "
        "and rerank them with --rerank-model when given.")
    p.add_argument("query", help="the search query")
    p.add_argument("--db", required=True, help="LanceDB folder made by `qwen-embed index`")
    p.add_argument("--table", default="documents", help="table name (default: documents)")
    _add_load_options(p, "embedding model (default: the one recorded in the table)")
    p.add_argument("--k", type=int, default=10, help="hits to return (default 10)")
    p.add_argument("--rerank-model", default=None, help="reranker hub id or folder, e.g. Qwen/Qwen3-Reranker-0.6B "
                   "(default: no reranking)")
    p.add_argument("--candidates", type=int, default=100, help="candidates to rerank (default 100)")
    p.add_argument("--template", default="card", help="reranker prompt form: card (default) or official-eval")
    p.add_argument("--instruction", default=None, help="task instruction (default: the table's)")
    p.add_argument("--where", default=None, help="LanceDB SQL filter over metadata columns, e.g. \"year > 2020\"")
    p.add_argument("--exact", action="store_true", help="exact search even when the table has an ANN index")
    p.add_argument("--nprobes", type=int, default=None, help="ANN partitions to probe (default: all)")
    p.add_argument("--json", action="store_true", help="print a JSON list of hits (id, score, title, text, ...)")
    p.set_defaults(func=cmd_search)
