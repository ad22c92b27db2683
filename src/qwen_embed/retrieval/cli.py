"""`qwen-embed index` and `qwen-embed search`: thin commands over `Index` (registered by qwen_embed.cli).

Heavy imports (torch, lancedb) happen inside the handlers so that `qwen-embed --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InputError
from ..settings import DEFAULT_EMBEDDING_MODEL, ModelSettings
from .format import format_hits

SNIPPET_CHARS = 100
DELETE_WITHOUT_YES = 5  # --delete-missing removes at most this many documents without --yes
LIST_LIMIT = 20


def _add_load_options(p: argparse.ArgumentParser, model_help: str) -> None:
    """The shared model options, the model optional with no default (the table's model is the default)."""
    ModelSettings.add_arguments(p, None, required=False, model_help=model_help)


def _progress() -> bool | None:
    return None if sys.stderr.isatty() else False


def _say(message: str) -> None:
    print(f"qwen-embed index: {message}", file=sys.stderr)


def _ranges(path: str | None) -> Any:
    if path is None:
        return None
    from ..quantize import load_ranges

    return load_ranges(path)


def _listing(ids: list[str], limit: int = LIST_LIMIT) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... and {len(ids) - limit} more" if len(ids) > limit else "")


def cmd_index(args: argparse.Namespace) -> int:
    if args.vectors is not None:  # vectors embedded by `embed-corpus`: no embedding here
        from ..ray.cli import cmd_index_vectors

        return cmd_index_vectors(args)
    if not args.sources:
        raise InputError("give the files or folders to index (SOURCE ...), or --vectors FOLDER.")
    from ..store import TableNotFoundError
    from .index import Index, check_db_folder
    from .sources import SourceSettings, read_sources

    check_db_folder(args.db)  # before reading or loading anything
    settings = SourceSettings.parse(args.extensions, args.text_field, args.title_field, args.follow_links)
    sources = read_sources(args.sources, settings)
    for path, why in sources.skipped:
        _say(f"skipped {path}: {why}")
    if not sources.documents and not args.delete_missing:
        raise InputError("nothing to index: every document of the sources was skipped (see above).")
    present = [d.id for d in sources.documents] + sorted(sources.skipped_ids)
    opts: dict[str, Any] = {"table": args.table, "model": args.model, "dim": args.dim, "instruction": args.instruction,
                            "chunk_tokens": args.chunk_tokens, "overlap": args.overlap, "device": args.device,
                            "dtype": args.dtype, "max_length": args.max_length, "batch_tokens": args.batch_tokens,
                            "deterministic": args.deterministic, "precision": args.precision,
                            "ranges": _ranges(args.ranges)}
    if args.dry_run:
        try:
            index = Index.open(args.db, create=False, **opts)  # an existing table loads no model
        except TableNotFoundError:
            _say(f"dry run: would create table {args.table!r} in {args.db} and add {len(sources.documents)} "
                 f"documents; nothing was changed.")
            return 0
        plan = index.plan(sources.documents)
        doomed = index.missing(present) if args.delete_missing and sources.complete else []
        _say(f"dry run: would add {plan.added}, update {plan.updated}, leave {plan.unchanged} unchanged"
             + (f" and delete {len(doomed)}: {_listing(doomed)}" if doomed else "") + "; nothing was changed.")
        return 0
    index = Index.open(args.db, **opts)
    gone: list[str] = []
    if args.delete_missing:
        if sources.complete:
            gone = index.missing(present)
        else:
            _say("--delete-missing not applied: a JSONL source was skipped, so the set of present ids is unknown.")
    if len(gone) > DELETE_WITHOUT_YES and not args.yes:
        raise InputError(f"--delete-missing would delete {len(gone)} documents ({_listing(gone)}); that is more than "
                         f"{DELETE_WITHOUT_YES}, so pass --yes to confirm (or --dry-run to see everything it would "
                         f"do). Nothing was changed.")
    if gone:
        _say(f"deleting {len(gone)} documents not in the sources: {_listing(gone)}")
    report = index.add(sources.documents, batch_docs=args.batch_docs, progress=_progress())
    report.skipped = sources.skipped
    if gone:
        report.deleted = index.delete_missing(present)
    info = index.info
    print(f"{args.db} table {args.table!r} ({info.model_name}, dim {info.dim}): {report.summary()}", file=sys.stderr)
    if report.maintenance:
        _say(report.maintenance)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from ..reranker import get_template
    from ..textio import check_run_output, check_trec_ids, read_records, write_answers
    from .index import Index, check_db_folder

    if (args.query is None) == (args.queries is None):
        raise InputError("give one QUERY, or a file of queries with --queries FILE.")
    kind = check_run_output(args.output, args.run_name, overwrite=args.overwrite) if args.queries else None
    get_template(args.template)
    check_db_folder(args.db, create=False)
    queries = (read_records(args.queries, field="query", fields=("text",), fmt=args.format,
                            skip_empty=args.skip_empty) if args.queries else None)
    if queries is not None and kind == "trec":
        check_trec_ids((q.key for q in queries), "query id")
    index = Index.open(args.db, table=args.table, model=args.model, create=False, device=args.device,
                       dtype=args.dtype, max_length=args.max_length, batch_tokens=args.batch_tokens,
                       deterministic=args.deterministic)
    if kind == "trec":  # every stored document may be a hit: check their ids before any model loads
        check_trec_ids(index.store.doc_hashes(), "document id")
    reranker = None
    if args.rerank_model:
        reranker = ModelSettings.from_args(args).with_model(args.rerank_model).load_reranker(args.template)

    def ask(query: str) -> list[Any]:
        return index.search(query, k=args.k, reranker=reranker, candidates=args.candidates,
                            instruction=args.instruction, where=args.where, exact=args.exact, nprobes=args.nprobes,
                            rescore_multiplier=args.rescore_multiplier)

    if queries is not None:
        assert kind is not None
        answers = [{"query_id": q.key, "query": q.text,
                    "hits": [h.as_dict() for h in ask(q.text)]} for q in queries]
        write_answers(args.output, answers, kind, "hits", args.run_name, overwrite=args.overwrite)
        print(f"qwen-embed search: answered {len(answers)} queries -> {args.output}", file=sys.stderr)
        return 0
    hits = ask(args.query)
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
    p.add_argument("--db", required=True, help="LanceDB folder (created when missing; a folder holding other "
                   "files is refused)")
    p.add_argument("--table", default="documents", help="table name (default: documents)")
    ModelSettings.add_arguments(p, None, required=False, model_help="embedding model: hub id or folder (default: "
                                f"the table's, or {DEFAULT_EMBEDDING_MODEL} for a new table)")
    p.add_argument("--dim", type=int, default=None, help="Matryoshka dimension of a new table (default: hidden size)")
    p.add_argument("--chunk-tokens", type=int, default=None, help="tokens per chunk of a new table (default 512)")
    p.add_argument("--precision", default=None, choices=["float32", "float16", "int8", "uint8", "binary", "ubinary"],
                   help="how a new table stores its vectors (default float32): int8/uint8 codes, or binary sign bits "
                   "searched by Hamming distance and rescored with int8 codes; recorded with the table")
    p.add_argument("--ranges", default=None, help="int8 calibration ranges (from embed --save-ranges) for a new "
                   "quantized table (default: calibrated on its first batch)")
    p.add_argument("--overlap", type=int, default=None, help="tokens shared by consecutive chunks (default 64)")
    p.add_argument("--instruction", default=None, help="query instruction recorded as the table's default for "
                   "searches (default: the web-search one)")
    p.add_argument("--batch-docs", type=int, default=256, help="documents per atomic write (default 256)")
    p.add_argument("--delete-missing", action="store_true",
                   help="delete stored documents that are not in the sources (lists them; more than "
                   f"{DELETE_WITHOUT_YES} need --yes)")
    p.add_argument("--yes", action="store_true", help="confirm a --delete-missing that removes many documents")
    p.add_argument("--dry-run", action="store_true", help="print what the run would add, update and delete, "
                   "and change nothing (loads no model for an existing table)")
    p.add_argument("--follow-links", action="store_true", help="index files that a folder links to outside itself "
                   "(skipped by default, so a link cannot make an outside file searchable)")
    p.add_argument("--extensions", default=None, help="file types read from folders, e.g. txt,md,py,jsonl (default: "
                   "txt,md,markdown,jsonl,ndjson and their .gz); JSONL suffixes are read as JSONL, the others as text")
    p.add_argument("--text-field", default=None, help="JSONL field that holds the text (default: text)")
    p.add_argument("--title-field", default=None, help="JSONL field that holds the title (default: title)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "search", help="search a LanceDB table, optionally reranking the candidates",
        description="Embed QUERY with the query template, retrieve the nearest chunks (one hit per document) "
        "and rerank them with --rerank-model when given. --queries FILE answers a file of queries with the "
        "models loaded once (JSONL or a TREC run).")
    p.add_argument("query", nargs="?", default=None, help="the search query (or --queries FILE)")
    p.add_argument("--queries", default=None, help="file of queries: lines, or JSONL with `query` or `text` and "
                   "optional `id` / `_id`")
    p.add_argument("--format", choices=["auto", "lines", "jsonl"], default="auto",
                   help="how to read --queries (default: by suffix / first line)")
    p.add_argument("--skip-empty", action="store_true", help="drop blank lines of --queries instead of refusing "
                   "them (each answer keeps its query's id, by default its input line)")
    p.add_argument("-o", "--output", default="-", help="with --queries: .jsonl (one line per query), .trec / .run "
                   "(a TREC run), or '-' for JSONL on stdout (default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--run-name", default="qwen-embed", help="run name of a TREC output (default qwen-embed)")
    p.add_argument("--db", required=True, help="LanceDB folder made by `qwen-embed index`")
    p.add_argument("--table", default="documents", help="table name (default: documents)")
    ModelSettings.add_arguments(p, None, required=False,
                                model_help="embedding model (default: the one recorded in the table)")
    p.add_argument("--k", type=int, default=10, help="hits to return (default 10)")
    p.add_argument("--rerank-model", default=None, help="reranker hub id or folder, e.g. Qwen/Qwen3-Reranker-0.6B "
                   "(default: no reranking)")
    p.add_argument("--candidates", type=int, default=100, help="candidates to rerank (default 100)")
    p.add_argument("--template", default="card", help="reranker prompt form: card (default) or official-eval")
    p.add_argument("--instruction", default=None, help="task instruction (default: the table's)")
    p.add_argument("--where", default=None, help="LanceDB SQL filter over metadata columns, e.g. \"year > 2020\"")
    p.add_argument("--exact", action="store_true", help="exact search even when the table has an ANN index")
    p.add_argument("--nprobes", type=int, default=None, help="ANN partitions to probe (default: all)")
    p.add_argument("--rescore-multiplier", type=int, default=None, help="binary tables: rescore the best k x this "
                   "many Hamming candidates with the float query (default 4; 0: no rescoring)")
    p.add_argument("--json", action="store_true", help="print a JSON list of hits (id, score, title, text, ...)")
    p.set_defaults(func=cmd_search)
