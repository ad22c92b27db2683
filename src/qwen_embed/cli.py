"""`qwen-embed <command>`: thin dispatch onto library functions.

Core commands live here (embed, rerank, info, make-tiny). The outer packages register theirs through
`register(subparsers)` in the modules of EXTENSIONS, imported only when present, so that the core
never depends on them. A user mistake (any QwenEmbedError, a missing file, an unknown or misspelt
option, which gets a "did you mean") prints one line and exits with status 2; Ctrl-C exits with 130.
Every output is checked before any model is loaded and written to a temporary sibling that is renamed
into place (`qwen_embed.files`), so a failed run leaves no partial file and never replaces what it did
not create (an existing output is refused unless --overwrite).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .errors import InputError, QwenEmbedError, describe_os_error, one_line
from .files import atomic_file, check_output_dir, check_output_file
from .processes import skip_final_gc
from .settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL, ModelSettings

EXTENSIONS = ["qwen_embed.server.cli", "qwen_embed.retrieval.cli", "qwen_embed.eval.cli", "qwen_embed.train.cli",
              "qwen_embed.synth.cli", "qwen_embed.recipe.cli", "qwen_embed.ray.cli"]


# -- the parser every command shares ---------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """argparse with the house rules: no abbreviated options, errors in one line naming the command,
    and unknown options answered with the closest known one ("did you mean --dim?").

    Sub-commands inherit the class (argparse's `add_subparsers` uses the parent's type), so every
    command, including those the extensions register, gets the same behaviour."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if not hasattr(ns, "_leaf_parser"):  # the innermost command parses first and wins
            ns._leaf_parser = self
        return ns, extras

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            leaf: Parser = getattr(ns, "_leaf_parser", self)
            leaf.error(leaf.unknown_message(extras))
        if hasattr(ns, "_leaf_parser"):
            del ns._leaf_parser
        return ns

    def unknown_message(self, extras: Sequence[str]) -> str:
        """'unrecognized argument(s)' with the closest known option of this command for each."""
        known = [o for o in self._option_string_actions if o.startswith("--")]
        hints = []
        for arg in extras:
            name = arg.split("=", 1)[0]
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.75) if name.startswith("-") else []
            hints += [f"did you mean {close[0]} (for {name})?"] if close else []
        text = f"unrecognized argument{'s' if len(extras) > 1 else ''}: {' '.join(extras)}"
        return "; ".join([text, *hints])

    def error(self, message: str) -> NoReturn:
        """One line on standard error, status 2."""
        self.exit(2, f"{self.prog}: error: {one_line(message)}; see {self.prog} --help\n")


def fail(command: str, message: str) -> int:
    """Print a user mistake as one line; the status 2 to return."""
    print(f"qwen-embed {command}: error: {one_line(message)}", file=sys.stderr)
    return 2


# -- helpers shared by every command --------------------------------------------------------------
def add_model_options(p: argparse.ArgumentParser, default: str | None, flag: str = "--model") -> None:
    """--model/--device/--dtype/--max-length/--batch-tokens: `ModelSettings.add_arguments` (kept for callers)."""
    ModelSettings.add_arguments(p, default, flag=flag)


def load_embedder(args: argparse.Namespace) -> Any:
    """The Embedder a command's model options name (--model/--device/..., --adapter, --allow-causal-lm)."""
    return ModelSettings.from_args(args).load_embedder(adapter=getattr(args, "adapter", None),
                                                       allow_causal_lm=getattr(args, "allow_causal_lm", False))


def say(command: str, message: str | None) -> None:
    """A note of a command on standard error (nothing for None)."""
    if message:
        print(f"qwen-embed {command}: {message}", file=sys.stderr)


# -- embed ---------------------------------------------------------------------------------------
def cmd_embed(args: argparse.Namespace) -> int:
    from .embedder import DEFAULT_INSTRUCTION
    from .textio import check_vector_output, read_records, truncation, write_vectors

    check_vector_output(args.output, overwrite=args.overwrite)  # before reading or loading anything
    if args.devices and args.device:
        raise InputError(f"--device {args.device} and --devices {args.devices} both given; --devices runs one worker "
                         f"per device, --device the model in this process: pass one.")
    if args.devices and args.adapter:
        raise InputError("--devices and --adapter do not go together yet; merge the adapter first (qwen-embed "
                         "merge-lora) or leave --devices out.")
    ranges = _check_precision_options(args)
    records = read_records(args.input, field=args.field, fmt=args.format, skip_empty=args.skip_empty)
    instruction = args.instruction or (DEFAULT_INSTRUCTION if args.query else None)
    texts = [r.text for r in records]
    if args.devices:  # one worker process per device
        from .config import ModelConfig, check_not_adapter
        from .multidevice import encode_on_devices
        from .settings import check_max_length
        from .tokenizer import QwenTokenizer
        from .weights import resolve_model_dir

        path = resolve_model_dir(args.model)
        check_not_adapter(path)
        config = ModelConfig.from_file(path / "config.json")
        max_length = check_max_length(args.max_length, config)
        if config.is_reranker:  # refused before any worker starts
            raise InputError(f"{args.model} is a reranker checkpoint, not an embedding one; --devices embeds with "
                             f"embedding checkpoints only (without --devices, --allow-causal-lm uses its trunk).")
        from .embedder import format_query

        prepared = texts if instruction is None else [format_query(t, instruction) for t in texts]
        lengths = QwenTokenizer.from_dir(path).embedding_lengths(prepared)
        vecs = encode_on_devices(args.model, texts, args.devices.split(","), instruction=instruction, dim=args.dim,
                                 dtype=args.dtype, max_length=max_length, batch_tokens=args.batch_tokens,
                                 threads=args.threads)
    else:
        emb = load_embedder(args)
        max_length = emb.max_length
        lengths = emb.token_lengths(texts, instruction)
        vecs = emb.encode(texts, instruction=instruction, dim=args.dim,
                          progress=None if sys.stderr.isatty() else False)
    cut = truncation(lengths, max_length)
    dims = vecs.shape[1]  # binary precisions pack 8 of them into each byte
    vecs = _quantized(args, vecs, ranges)
    written = write_vectors(args.output, records, vecs, with_text=args.with_text, overwrite=args.overwrite)
    say("embed", cut.message("inputs"))
    packed = f", {vecs.shape[1]} bytes each" if vecs.shape[1] != dims else ""
    print(f"embedded {len(records)} texts -> {dims} dims{packed} ({', '.join(written)})", file=sys.stderr)
    return 0


def _check_precision_options(args: argparse.Namespace) -> Any:
    """--precision / --ranges / --save-ranges checked before any work; returns the loaded ranges (or None)."""
    from .files import check_output_file
    from .quantize import check_precision, load_ranges

    check_precision(args.precision, args.dim)
    if args.precision not in ("int8", "uint8") and (args.ranges or args.save_ranges):
        raise InputError(f"--ranges / --save-ranges go with --precision int8 or uint8, not {args.precision}.")
    if args.ranges and args.save_ranges:
        raise InputError("give --ranges (reuse saved ranges) or --save-ranges (calibrate on these texts), not both.")
    if args.save_ranges:
        check_output_file(args.save_ranges, overwrite=args.overwrite, what="--save-ranges")
    return load_ranges(args.ranges) if args.ranges else None


def _quantized(args: argparse.Namespace, vecs: Any, ranges: Any) -> Any:
    """The float vectors quantized as --precision asks (calibrated on them, or with --ranges)."""
    if args.precision == "float32":
        return vecs
    from .quantize import calibration_ranges, quantize, save_ranges

    if args.precision in ("int8", "uint8") and ranges is None:
        ranges = calibration_ranges(vecs)
        if args.save_ranges:
            save_ranges(args.save_ranges, ranges, overwrite=args.overwrite)
            say("embed", f"calibration ranges of {len(vecs)} texts -> {args.save_ranges} (reuse with --ranges)")
    return quantize(vecs, args.precision, ranges=ranges)


# -- rerank --------------------------------------------------------------------------------------
def _documents(args: argparse.Namespace) -> list[Any]:
    from .textio import Record, read_records

    docs = [Record(i, None, d) for i, d in enumerate(args.document or [])]
    if args.documents:
        start = len(docs)
        docs += [Record(start + r.index, r.id, r.text, r.raw)
                 for r in read_records(args.documents, field=args.field, fmt=args.format, skip_empty=args.skip_empty)]
    return docs


def _rerank_rows(rr: Any, query: str, docs: list[Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    results = rr.rerank(query, [d.text for d in docs], top_n=args.top_n, instruction=args.instruction)
    rows = []
    for r in results:
        d = docs[r.index]
        rows.append({"index": d.index, **({"id": d.id} if d.id is not None else {}), "score": r.score,
                     "document": r.document})
    return rows


def _doc_truncation(rr: Any, queries: list[str], docs: list[Any]) -> Any:
    """Documents cut by max_length: count and longest (the template's own tokens included)."""
    from .textio import truncation

    tok, q = rr.tokenizer, max(queries, key=len)
    fixed = len(rr.build_input_ids(q, ["x"])[0]) - len(tok.encode_one("x"))
    lengths = [fixed + n for n in map(len, tok.encode([d.text for d in docs]))]
    return truncation(lengths, rr.max_length)


def cmd_rerank(args: argparse.Namespace) -> int:
    from .reranker import get_template
    from .textio import check_run_output, check_trec_ids, read_records, write_answers

    get_template(args.template)
    if (args.query is None) == (args.queries is None):
        raise InputError("give one query with --query TEXT, or a file of queries with --queries FILE.")
    if args.queries is not None:
        kind = check_run_output(args.output, args.run_name, overwrite=args.overwrite)
    elif args.output != "-":
        if not args.output.lower().endswith(".json"):
            raise InputError(f"output {args.output} must end in .json (or be '-' for standard output); with "
                             f"--queries, .jsonl or .trec.")
        check_output_file(args.output, overwrite=args.overwrite)
    queries = (read_records(args.queries, field="query", fields=("text",), fmt=args.format,
                            skip_empty=args.skip_empty) if args.queries else None)
    docs = _documents(args)
    if not docs and not (queries and all(isinstance((q.raw or {}).get("documents"), list) for q in queries)):
        raise InputError("no documents: pass --document TEXT (repeatable) or --documents FILE (or, with "
                         "--queries, a `documents` list in each query line).")
    # each query with its documents (its own `documents` list, else the shared ones), checked before loading
    plan = []
    for q in queries or []:
        own = (q.raw or {}).get("documents")
        plan.append((q, _query_documents(own, args.queries, q.index) if isinstance(own, list) else docs))
    if queries is not None and kind == "trec":
        check_trec_ids((q.key for q in queries), "query id")
        check_trec_ids((d.key for _, qdocs in plan for d in qdocs),
                       "document id")
    rr = ModelSettings.from_args(args).load_reranker(args.template)
    if queries is None:
        rows = _rerank_rows(rr, args.query, docs, args)
        say("rerank", _doc_truncation(rr, [args.query], docs).message("documents"))
        text = json.dumps({"query": args.query, "model": args.model, "results": rows}, indent=2, ensure_ascii=False)
        if args.output == "-":
            print(text)
        else:
            with atomic_file(args.output, overwrite=args.overwrite) as f:
                f.write(text + "\n")
        return 0
    answers = []
    for n, (q, qdocs) in enumerate(plan):
        answers.append({"query_id": q.key, "query": q.text, "results": _rerank_rows(rr, q.text, qdocs, args)})
        if n == 0 and qdocs is docs:
            say("rerank", _doc_truncation(rr, [x.text for x in queries], docs).message("documents"))
    write_answers(args.output, answers, kind, "results", args.run_name, overwrite=args.overwrite)
    say("rerank", f"answered {len(answers)} queries -> {args.output}")
    return 0


def _query_documents(own: list[Any], path: str, index: int) -> list[Any]:
    from .textio import Record, record_id

    docs = []
    for i, d in enumerate(own):
        if isinstance(d, str) and d.strip():
            docs.append(Record(i, None, d))
        elif isinstance(d, dict) and isinstance(d.get("text"), str) and d["text"].strip():
            docs.append(Record(i, record_id(d, f"{path}: line {index + 1}: documents[{i}]"), d["text"], d))
        else:
            raise InputError(f"{path}: line {index + 1}: documents[{i}] must be a non-empty string or an object "
                             f"with a `text` (and optionally `id`).")
    if not docs:
        raise InputError(f"{path}: line {index + 1} has an empty `documents` list.")
    return docs


# -- info ----------------------------------------------------------------------------------------
def model_info(name_or_path: str) -> dict[str, Any]:
    """Kind, shape, dims, max length, dtype of a checkpoint, without loading its weights (nor importing torch)."""
    from .config import ModelConfig
    from .hub import resolve_model_dir, safetensors_files
    from .settings import min_dim
    from .tokenizer import QwenTokenizer

    path = resolve_model_dir(name_or_path)
    cfg = ModelConfig.from_file(path / "config.json")
    tok = QwenTokenizer.from_dir(path)
    files = safetensors_files(path)
    kind = {"embedding": "embedding", "causal-lm": "reranker (causal LM, yes/no head)",
            "seq-cls": "reranker (converted sequence classification)"}[cfg.kind]
    info: dict[str, Any] = {
        "model": name_or_path, "path": str(path), "kind": kind, "architecture": cfg.architecture,
        "hidden_size": cfg.hidden_size, "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
        "parameters": cfg.num_parameters(include_embeddings=True),
        "max_length": cfg.max_position_embeddings, "dtype": cfg.dtype,
        "tied_embeddings": cfg.tie_word_embeddings,
        "weight_files": len(files), "weight_bytes": sum(f.stat().st_size for f in files),
        "tokenizer_appends_eos": tok.appends_eos,
    }
    if cfg.kind == "embedding":
        info["dims"] = {"min": min_dim(cfg.hidden_size), "max": cfg.hidden_size}
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(map(len, info))
    for k, v in info.items():
        if k == "dims":
            v = f"{v['min']}..{v['max']} (Matryoshka)" if v["min"] < v["max"] else f"{v['max']} (the full width only)"
        elif k == "parameters":
            v = f"{v / 1e6:.1f}M"
        print(f"{k:<{width}}  {v}")
    return 0


# -- make-tiny -----------------------------------------------------------------------------------
def cmd_make_tiny(args: argparse.Namespace) -> int:
    from .tiny import make_checkpoint

    check_output_dir(args.output, overwrite=args.overwrite)
    path = make_checkpoint(
        args.output, args.kind, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
        intermediate_size=args.intermediate_size, tokenizer=args.tokenizer,
        eos_postprocessor=not args.no_eos_postprocessor, seed=args.seed, overwrite=args.overwrite,
    )
    print(f"wrote a random-weight {args.kind} checkpoint to {path} (rankings made with it are meaningless)")
    return 0


# -- parser --------------------------------------------------------------------------------------
def _io_options(p: argparse.ArgumentParser) -> None:
    """--format, --skip-empty and --overwrite of the commands that read text files and write one output."""
    p.add_argument("--format", choices=["auto", "lines", "jsonl"], default="auto",
                   help="how to read input files: lines, jsonl, or auto (default: by suffix, .txt is lines; "
                   "else JSONL when the first line starts with '{')")
    p.add_argument("--skip-empty", action="store_true", help="drop blank input lines instead of refusing them; "
                   "every output then records each row's input line (index)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="qwen-embed", description="Qwen3 Embedding and Reranker: embed, rerank, index, search, serve, "
        "evaluate and train.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"qwen-embed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("embed", help="embed text lines or JSONL into JSONL, JSON, .npy or Parquet",
                       description="Embed each line (or each JSONL object's `text`) of INPUT; row i of the output "
                       "is line i of the input, ids (`id` / `_id`) are carried to every format.")
    p.add_argument("input", nargs="?", default="-", help="text or .jsonl file, '-' for stdin (default)")
    p.add_argument("-o", "--output", default="-", help="out.jsonl, out.json, out.npy (+ out.ids.jsonl beside it), "
                   "out.parquet (columns index, id, vector, text with --with-text), or '-' for JSONL on stdout")
    add_model_options(p, DEFAULT_EMBEDDING_MODEL)
    p.add_argument("--query", action="store_true", help="inputs are queries: apply the query template "
                   "with the default instruction")
    p.add_argument("--instruction", default=None, help="query instruction (implies --query)")
    p.add_argument("--dim", type=int, default=None, help="Matryoshka dimension, 32..hidden size")
    p.add_argument("--precision", default="float32", choices=["float32", "float16", "int8", "uint8", "binary",
                   "ubinary"], help="quantize the vectors (sentence-transformers' quantize_embeddings bytes): "
                   "int8/uint8 calibrated on these texts or --ranges, binary/ubinary packed sign bits")
    p.add_argument("--ranges", default=None, help="int8/uint8: calibration ranges saved by --save-ranges")
    p.add_argument("--save-ranges", default=None, help="int8/uint8: save the ranges calibrated on these texts "
                   "(JSON), to quantize later batches the same way")
    p.add_argument("--field", default="text", help="JSONL field that holds the text (default: text)")
    _io_options(p)
    p.add_argument("--with-text", action="store_true", help="also write each input text (JSONL, JSON, Parquet)")
    p.add_argument("--adapter", default=None, help="PEFT LoRA adapter folder applied on top of --model (not merged)")
    p.add_argument("--allow-causal-lm", action="store_true",
                   help="embed with the trunk of a reranker / causal-LM checkpoint on purpose (refused otherwise)")
    p.add_argument("--devices", default=None, help="spread over devices, one worker each: e.g. cuda:0,cuda:1")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("rerank", help="score documents against a query (or a file of queries)",
                       description="Rerank documents for one query (--query; JSON out) or for each query of a "
                       "file (--queries; JSONL or a TREC run out) with a Qwen3 reranker, loaded once.")
    p.add_argument("--query", default=None, help="the query")
    p.add_argument("--queries", default=None, help="file of queries: lines, or JSONL with `query` or `text`, "
                   "optional `id` / `_id` and an optional `documents` list of its own")
    p.add_argument("--document", action="append", help="a document (repeatable)")
    p.add_argument("--documents", default=None, help="file of documents: lines or JSONL with `text` (ids from "
                   "`id` / `_id` kept in the results); '-' for stdin")
    p.add_argument("--top-n", type=int, default=None, help="keep the best N")
    p.add_argument("--instruction", default=None, help="task instruction (default: web search)")
    p.add_argument("--template", default="card", help="prompt form: card (default) or official-eval")
    p.add_argument("--field", default="text", help="JSONL field that holds the text (default: text)")
    _io_options(p)
    p.add_argument("-o", "--output", default="-", help="JSON file, '-' for stdout (default); with --queries: "
                   ".jsonl (one line per query) or .trec / .run (a TREC run)")
    p.add_argument("--run-name", default="qwen-embed-rerank", help="run name of a TREC output")
    add_model_options(p, DEFAULT_RERANKER_MODEL)
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("info", help="kind, shape, dims, max length and dtype of a checkpoint")
    p.add_argument("model", help="hub id or local checkpoint folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("make-tiny", help="write a tiny random-weight checkpoint to try the tools offline")
    p.add_argument("output", help="new folder to write (an existing non-empty folder is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing folder, replacing only the "
                   "checkpoint's own files")
    p.add_argument("--kind", default="embedding", choices=["embedding", "reranker", "seq-cls"])
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=16)
    p.add_argument("--intermediate-size", type=int, default=128)
    p.add_argument("--tokenizer", default="auto", help="auto, real, small, or a tokenizer.json path")
    p.add_argument("--no-eos-postprocessor", action="store_true",
                   help="tokenizer does not append <|endoftext|> (like older / reranker tokenizers)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_tiny)

    for mod in EXTENSIONS:
        try:
            module = importlib.import_module(mod)
        except ImportError as e:
            if e.name and (e.name == mod or mod.startswith(e.name + ".")):
                continue  # that part is not there
            raise
        register: Callable[[Any], None] = module.register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `qwen-embed` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = " ".join(str(getattr(args, a)) for a in ("command", "eval_command", "train_command")
                    if getattr(args, a, None))
    try:
        if getattr(args, "threads", None) is not None:  # every model command has --threads (add_model_options)
            from .threads import set_threads

            set_threads(args.threads)
        return int(args.func(args) or 0)
    except QwenEmbedError as e:
        return fail(name, str(e))
    except KeyboardInterrupt:
        print(f"qwen-embed {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:  # a file system refusal the checks could not foresee (disk full, permissions)
        line = describe_os_error(e)
        if line is None:
            raise
        return fail(name, line)


def run() -> None:
    """The `qwen-embed` program (and `python -m qwen_embed`): `main()` on the command line, then exit with its
    status, skipping the interpreter's last garbage collection (processes.skip_final_gc)."""
    code = main()
    skip_final_gc()
    sys.exit(code)


if __name__ == "__main__":
    run()
