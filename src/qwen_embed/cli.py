"""`qwen-embed <command>`: thin dispatch onto library functions.

Core commands live here (embed, rerank, info, make-tiny). The outer packages register theirs through
`register(subparsers)` in the modules of EXTENSIONS, imported only when present, so that the core
never depends on them. A user mistake (any QwenEmbedError, a missing file) prints one line and exits
with status 2; Ctrl-C exits with 130. Outputs are written to a temporary file and renamed, so an
interrupted or failed run leaves no partial file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import InputError, QwenEmbedError
from .jsonl import iter_jsonl

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B"
DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"
EXTENSIONS = ["qwen_embed.server.cli", "qwen_embed.retrieval.cli", "qwen_embed.eval.cli", "qwen_embed.train.cli",
              "qwen_embed.synth.cli", "qwen_embed.recipe.cli", "qwen_embed.ray.cli"]


# -- helpers shared by every command --------------------------------------------------------------
def add_model_options(p: argparse.ArgumentParser, default: str | None, flag: str = "--model") -> None:
    """--model/--device/--dtype/--max-length/--batch-tokens, the options every model command takes."""
    p.add_argument(flag, default=default, required=default is None,
                   help=f"hub id or local checkpoint folder (default: {default})")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--max-length", type=int, default=8192, help="tokens per input, end token included (default 8192)")
    p.add_argument("--batch-tokens", type=int, default=None, help="token budget of one forward pass")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path` and rename it into place only on success."""
    target = Path(path)
    if target.is_dir():
        raise InputError(f"output {target} is a folder; give a file name.")
    if not target.parent.exists():
        raise InputError(f"the folder of output {target} does not exist; create {target.parent} first.")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with open(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_text_file(path: str) -> str:
    """A UTF-8 text file or '-' for standard input, with user-facing errors."""
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"input {path} does not exist or is not a file.")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"input {path} is not UTF-8 text (byte {e.start}); convert it first.") from None
    except OSError as e:
        raise InputError(f"input {path} cannot be read ({e.strerror}).") from None


def read_records(path: str, field: str = "text") -> list[dict[str, Any]]:
    """Text lines (one record per non-empty line) or JSONL objects with a `field` key."""
    raw = read_text_file(path)
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    if not lines:
        raise InputError(f"input {path} holds no text.")
    is_jsonl = path.endswith((".jsonl", ".ndjson")) or lines[0].lstrip().startswith("{")
    if not is_jsonl:
        return [{"text": ln} for ln in lines]
    out = []
    for n, obj in iter_jsonl(raw.splitlines(), path):
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise InputError(f"{path}: line {n} needs a string field {field!r}.")
        out.append(obj)
    return out


# -- embed ---------------------------------------------------------------------------------------
def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from .embedder import DEFAULT_INSTRUCTION, Embedder

    records = read_records(args.input, args.field)
    out = args.output
    if out != "-" and not out.endswith((".npy", ".jsonl", ".json")):
        raise InputError(f"output {out} must end in .npy or .jsonl (or be '-' for JSONL on stdout).")
    instruction = args.instruction or (DEFAULT_INSTRUCTION if args.query else None)
    texts = [r[args.field] for r in records]
    if args.devices:  # one worker process per device
        from .multidevice import encode_on_devices

        vecs = encode_on_devices(args.model, texts, args.devices.split(","), instruction=instruction, dim=args.dim,
                                 dtype=args.dtype, max_length=args.max_length, batch_tokens=args.batch_tokens)
    else:
        emb = Embedder.from_pretrained(args.model, device=args.device, dtype=args.dtype,
                                       max_length=args.max_length, batch_tokens=args.batch_tokens)
        vecs = emb.encode(texts, instruction=instruction, dim=args.dim,
                          progress=None if sys.stderr.isatty() else False)
    if out.endswith(".npy"):
        with atomic_output(out, "wb") as f:
            np.save(f, vecs)
    else:
        def lines(f: IO[str]) -> None:
            for i, (r, v) in enumerate(zip(records, vecs, strict=True)):
                row = {"index": i, **({"id": r["id"]} if "id" in r else {}), "embedding": v.tolist()}
                f.write(json.dumps(row) + "\n")
        if out == "-":
            lines(sys.stdout)
        else:
            with atomic_output(out) as f:
                lines(f)
    print(f"embedded {len(records)} texts -> {vecs.shape[1]} dims ({out})", file=sys.stderr)
    return 0


# -- rerank --------------------------------------------------------------------------------------
def cmd_rerank(args: argparse.Namespace) -> int:
    from .reranker import Reranker, get_template

    get_template(args.template)
    docs = list(args.document or [])
    if args.documents:
        docs += [r[args.field] for r in read_records(args.documents, args.field)]
    if not docs:
        raise InputError("no documents: pass --document TEXT (repeatable) or --documents FILE.")
    rr = Reranker.from_pretrained(args.model, device=args.device, dtype=args.dtype, template=args.template,
                                  max_length=args.max_length, batch_tokens=args.batch_tokens)
    results = rr.rerank(args.query, docs, top_n=args.top_n, instruction=args.instruction)
    payload = {"query": args.query, "model": args.model,
               "results": [{"index": r.index, "score": r.score, "document": r.document} for r in results]}
    text = json.dumps(payload, indent=2, ensure_ascii=False)
    if args.output == "-":
        print(text)
    else:
        with atomic_output(args.output) as f:
            f.write(text + "\n")
    return 0


# -- info ----------------------------------------------------------------------------------------
def model_info(name_or_path: str) -> dict[str, Any]:
    """Kind, shape, dims, max length, dtype of a checkpoint, without loading its weights."""
    from .config import ModelConfig
    from .pooling import MIN_DIM
    from .tokenizer import QwenTokenizer
    from .weights import resolve_model_dir, safetensors_files

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
        info["dims"] = {"min": MIN_DIM, "max": cfg.hidden_size}
    return info


def cmd_info(args: argparse.Namespace) -> int:
    info = model_info(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(map(len, info))
    for k, v in info.items():
        if k == "dims":
            v = f"{v['min']}..{v['max']} (Matryoshka)"
        elif k == "parameters":
            v = f"{v / 1e6:.1f}M"
        print(f"{k:<{width}}  {v}")
    return 0


# -- make-tiny -----------------------------------------------------------------------------------
def cmd_make_tiny(args: argparse.Namespace) -> int:
    from .tiny import make_checkpoint

    path = make_checkpoint(
        args.output, args.kind, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
        intermediate_size=args.intermediate_size, tokenizer=args.tokenizer,
        eos_postprocessor=not args.no_eos_postprocessor, seed=args.seed,
    )
    print(f"wrote a random-weight {args.kind} checkpoint to {path} (rankings made with it are meaningless)")
    return 0


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-embed", description="Qwen3 Embedding and Reranker: embed, rerank, index, search, serve, "
        "evaluate and train.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"qwen-embed {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("embed", help="embed text lines or JSONL into JSONL or .npy",
                       description="Embed each line (or each JSONL object's `text`) of INPUT.")
    p.add_argument("input", nargs="?", default="-", help="text or .jsonl file, '-' for stdin (default)")
    p.add_argument("-o", "--output", default="-", help="out.npy, out.jsonl, or '-' for JSONL on stdout")
    add_model_options(p, DEFAULT_EMBEDDING_MODEL)
    p.add_argument("--query", action="store_true", help="inputs are queries: apply the query template "
                   "with the default instruction")
    p.add_argument("--instruction", default=None, help="query instruction (implies --query)")
    p.add_argument("--dim", type=int, default=None, help="Matryoshka dimension, 32..hidden size")
    p.add_argument("--field", default="text", help="JSONL field that holds the text (default: text)")
    p.add_argument("--devices", default=None, help="spread over devices, one worker each: e.g. cuda:0,cuda:1")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("rerank", help="score documents against a query, JSON out",
                       description="Rerank documents for one query with a Qwen3 reranker.")
    p.add_argument("--query", required=True, help="the query")
    p.add_argument("--document", action="append", help="a document (repeatable)")
    p.add_argument("--documents", default=None, help="file of documents: lines or JSONL with `text`; '-' for stdin")
    p.add_argument("--top-n", type=int, default=None, help="keep the best N")
    p.add_argument("--instruction", default=None, help="task instruction (default: web search)")
    p.add_argument("--template", default="card", help="prompt form: card (default) or official-eval")
    p.add_argument("--field", default="text", help="JSONL field that holds the text (default: text)")
    p.add_argument("-o", "--output", default="-", help="JSON file, '-' for stdout (default)")
    add_model_options(p, DEFAULT_RERANKER_MODEL)
    p.set_defaults(func=cmd_rerank)

    p = sub.add_parser("info", help="kind, shape, dims, max length and dtype of a checkpoint")
    p.add_argument("model", help="hub id or local checkpoint folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("make-tiny", help="write a tiny random-weight checkpoint to try the tools offline")
    p.add_argument("output", help="new folder to write")
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
    try:
        return int(args.func(args) or 0)
    except QwenEmbedError as e:
        print(f"qwen-embed {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qwen-embed {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
