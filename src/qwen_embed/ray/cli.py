"""`qwen-embed embed-corpus` (registered by qwen_embed.cli) and the `--vectors` form of `qwen-embed index`.

Thin: options -> `CorpusJob` -> `embed_corpus`; heavy imports (pyarrow, torch, ray) happen in the handlers.
An option the ingest cannot honour (`index --vectors` with an option of SOURCE indexing such as --dry-run or
--precision) is refused in one line, not dropped.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..cli import DEFAULT_EMBEDDING_MODEL, add_model_options

# `index` options that only concern SOURCEs it embeds: --vectors would drop them silently (a dry run that writes,
# a precision or chunking the new table does not get), so they are refused; (argparse dest, flag)
SOURCE_ONLY_OPTIONS = (("dry_run", "--dry-run"), ("delete_missing", "--delete-missing"), ("precision", "--precision"),
                       ("ranges", "--ranges"), ("instruction", "--instruction"), ("chunk_tokens", "--chunk-tokens"),
                       ("overlap", "--overlap"), ("deterministic", "--deterministic"), ("extensions", "--extensions"),
                       ("text_field", "--text-field"), ("title_field", "--title-field"),
                       ("follow_links", "--follow-links"))


def cmd_embed_corpus(args: argparse.Namespace) -> int:
    from ..files import check_output_dir
    from .job import CorpusJob, embed_corpus

    if "://" not in args.output:  # a local output folder is checked before anything is read or loaded
        check_output_dir(args.output, overwrite=True, what="output folder")  # (the job checks what it holds)
    job = CorpusJob(
        input=args.input, output=args.output, model=args.model, engine=args.engine, address=args.address,
        num_gpus=args.num_gpus, actors=args.actors, cpus_per_actor=args.cpus_per_actor, dim=args.dim,
        dtype_out=args.dtype_out, instruction=args.instruction, id_column=args.id_column,
        text_column=args.text_column, keep_text=args.keep_text, rows_per_file=args.rows_per_file,
        batch_rows=args.batch_rows, tokenize=args.tokenize, overwrite=args.overwrite, device=args.device,
        dtype=args.dtype, max_length=args.max_length, batch_tokens=args.batch_tokens,
        deterministic=bool(getattr(args, "deterministic", False)), progress=sys.stderr.isatty())
    report = embed_corpus(job)
    print(f"qwen-embed embed-corpus: {report.summary()}", file=sys.stderr)
    return 0


def cmd_index_vectors(args: argparse.Namespace) -> int:
    """`qwen-embed index --vectors FOLDER --db DB`: the vectors of an embed-corpus output into a table."""
    from ..errors import InputError
    from .ingest import ingest_vectors

    if args.sources:
        raise InputError("give either SOURCE files to embed or --vectors FOLDER of embedded vectors, not both.")
    given = [flag for dest, flag in SOURCE_ONLY_OPTIONS if getattr(args, dest, None) not in (None, False)]
    if given:
        one = len(given) == 1
        raise InputError(f"{', '.join(given)} {'does' if one else 'do'} not go with --vectors: --vectors stores the "
                         "vectors of an embed-corpus output as they are (nothing is read, embedded or deleted; one "
                         f"chunk per row; a new table is float32); leave {'it' if one else 'them'} out.")
    report = ingest_vectors(args.vectors, args.db, table=args.table, model=args.model, dim=args.dim)
    print(f"{args.db} table {args.table!r}: {report.summary()}", file=sys.stderr)
    if report.maintenance:
        print(f"qwen-embed index: {report.maintenance}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    """Add `embed-corpus` to the `qwen-embed` command."""
    p = sub.add_parser(
        "embed-corpus", help="embed a JSONL/Parquet corpus into a folder of Parquet vectors (Ray or this host)",
        description="Embed the text column of INPUT (a .jsonl or .parquet file or a folder of them; a local path or "
        "a filesystem URI such as s3://bucket/corpus/) into OUTPUT, a folder of Parquet files with columns id, "
        "vector (fixed-size list) and optionally text. Resumable: a re-run of the same job skips the ids already "
        "written. --engine ray runs on a Ray cluster (pip install 'qwen-embed[ray]'), --engine local on this host.")
    p.add_argument("input", help="JSONL or Parquet file or folder, local path or pyarrow filesystem URI")
    p.add_argument("-o", "--output", required=True, help="output folder (created when missing)")
    p.add_argument("--engine", default="local", choices=["local", "ray"], help="ray or local (default: local)")
    p.add_argument("--address", default=None, help="Ray cluster address, e.g. ray://head:10001 or head:6379 "
                   "(default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--num-gpus", type=int, default=0, help="GPUs to use, one model each (default 0: CPU)")
    p.add_argument("--actors", type=int, default=1, help="CPU model actors when --num-gpus is 0 (Ray; default 1)")
    p.add_argument("--cpus-per-actor", type=int, default=1, help="CPU cores (torch threads) per model actor "
                   "(default 1)")
    add_model_options(p, DEFAULT_EMBEDDING_MODEL)
    p.add_argument("--dim", type=int, default=None, help="Matryoshka dimension, 32..hidden size (default: hidden)")
    p.add_argument("--dtype-out", default="float32", choices=["float32", "float16"],
                   help="type of the stored vectors (default float32)")
    p.add_argument("--instruction", default=None, help="embed the texts as queries with this instruction "
                   "(default: as documents)")
    p.add_argument("--id-column", default="id", help="column of the unique row ids (default: id)")
    p.add_argument("--text-column", default="text", help="column of the texts (default: text)")
    p.add_argument("--keep-text", action="store_true", help="store the text beside each vector")
    p.add_argument("--rows-per-file", type=int, default=50_000, help="rows per Parquet file (default 50000)")
    p.add_argument("--batch-rows", type=int, default=1024, help="rows per model call on Ray (default 1024)")
    p.add_argument("--tokenize", default="actor", choices=["actor", "stage"],
                   help="Ray: tokenize in the model actors (default, measured faster) or in a CPU stage before them")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished or other job's output (only the files embed-corpus wrote), or write "
                   "into a folder that holds other files (they are left untouched)")
    p.set_defaults(func=cmd_embed_corpus)
