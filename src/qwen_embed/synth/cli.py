"""`qwen-embed synth queries` and `qwen-embed synth filter`.

The flags of the job and of the generator are built from the settings tables (`SynthSettings`,
`GeneratorSettings`): one flag per field, its help and default from the field. Heavy imports (torch,
openai, transformers) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any

from ..cli import DEFAULT_EMBEDDING_MODEL, add_model_options
from ..errors import InputError
from .generators import GeneratorSettings
from .settings import DEFAULT_MIN_COS, SynthSettings


def _parse_list(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _with_default(text: str, shown: str) -> str:
    """A setting's help with its default appended, unless the help already says it."""
    return text if "(default" in text else f"{text} (default: {shown})"


def add_settings_arguments(p: argparse.ArgumentParser, cls: type[Any], title: str) -> None:
    """One flag per field of a settings dataclass (`--max-words` for `max_words`)."""
    group = p.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        default: Any = f.default
        kind: Any = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        if typing.get_origin(hint) is tuple:
            kind = _parse_list
            shown = ",".join(default)
        else:
            shown = "unset" if default is None else str(default)
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                           metavar=f.name.upper(), help=_with_default(f.metadata.get("help", ""), shown))


def settings_from_args(cls: type[Any], args: argparse.Namespace) -> Any:
    """The settings dataclass filled from the parsed flags."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def cmd_queries(args: argparse.Namespace) -> int:
    from ..files import check_output_file
    from .generators import make_generator
    from .job import LazyEmbedder, generate_queries

    synth = settings_from_args(SynthSettings, args).check()
    gen_settings = settings_from_args(GeneratorSettings, args).check()
    check_output_file(args.output, overwrite=args.overwrite)  # the job checks its inputs before any model loads

    def load() -> Any:
        from ..embedder import Embedder

        return Embedder.from_pretrained(args.embedding_model, device=args.device, dtype=args.dtype,
                                        max_length=args.max_length, batch_tokens=args.batch_tokens)

    generator = make_generator(args.generator, args.model, gen_settings, device=args.device, dtype=args.dtype,
                               seed=synth.seed)
    try:
        summary = generate_queries(args.passages, args.personas, args.output, generator=generator,
                                   embedder=LazyEmbedder(args.embedding_model, load), settings=synth,
                                   cache=args.cache, overwrite=args.overwrite, progress=sys.stderr.isatty())
    finally:
        generator.close()
    print(json.dumps(summary), file=sys.stderr)
    if not summary["complete"]:
        why = "the request budget was spent" if summary["budget_spent"] else "some prompts got no answer"
        print(f"qwen-embed synth queries: {summary['unanswered']} passages left ({why}); rows so far are in "
              f"{summary['output']}. Run the same command again to resume (cached replies are not paid again).",
              file=sys.stderr)
        return 1
    print(f"kept {summary['pairs']} pairs of {summary['passages']} passages -> {args.output}", file=sys.stderr)
    return 0


def cmd_filter(args: argparse.Namespace) -> int:
    from ..embedder import DEFAULT_INSTRUCTION, Embedder
    from ..files import check_output_file
    from .filter import filter_pairs

    check_output_file(args.output, overwrite=args.overwrite)
    if not -1.0 <= args.min_cos <= 1.0:
        raise InputError(f"--min-cos {args.min_cos} is not a cosine; use a value in -1..1 (the report uses 0.7).")
    emb = Embedder.from_pretrained(args.embedding_model, device=args.device, dtype=args.dtype,
                                   max_length=args.max_length, batch_tokens=args.batch_tokens)
    summary = filter_pairs(args.input, args.output, embedder=emb, min_cos=args.min_cos,
                           default_instruction=args.instruction or DEFAULT_INSTRUCTION, dim=args.dim,
                           overwrite=args.overwrite, progress=sys.stderr.isatty())
    print(json.dumps(summary), file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    """Add `synth queries` and `synth filter` to the qwen-embed command."""
    p = sub.add_parser("synth", help="synthetic training pairs: persona-based query generation and filtering",
                       description="The Qwen3 Embedding report's synthetic data: `synth queries` writes (query, "
                       "passage) training rows with an LLM, `synth filter` keeps the consistent ones. See "
                       "docs/synth.md.")
    ssub = p.add_subparsers(dest="synth_command", metavar="SYNTH_COMMAND", required=True)

    q = ssub.add_parser("queries", help="generate queries for passages with an LLM (resumable)",
                        description="For each passage: retrieve its top personas, ask the LLM for a configuration "
                        "(character, question type, difficulty), then for a query; keep the replies that pass "
                        "the checks as training rows. Output is appended as it arrives; re-run the same command "
                        "to resume; every reply is cached in OUTPUT.cache.jsonl.")
    q.add_argument("--passages", required=True, help="JSONL {id?, text, title?} or text lines")
    q.add_argument("--personas", required=True, help="JSONL {persona} (Persona Hub's format) or text lines")
    q.add_argument("--generator", required=True, help="base URL of an OpenAI-compatible server (e.g. "
                   "http://localhost:8000/v1) or local:PATH of a Qwen3 causal LM checkpoint")
    q.add_argument("--model", default=None, help="model name the server serves (required for a URL)")
    q.add_argument("-o", "--output", required=True, help="training rows JSONL to write")
    q.add_argument("--cache", default=None, help="response cache JSONL (default: OUTPUT.cache.jsonl)")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output or a partial run of "
                   "other settings (the cache is kept)")
    add_model_options(q, DEFAULT_EMBEDDING_MODEL, flag="--embedding-model")
    add_settings_arguments(q, SynthSettings, "job settings")
    add_settings_arguments(q, GeneratorSettings, "generator settings")
    q.set_defaults(func=cmd_queries)

    f = ssub.add_parser("filter", help="keep pairs whose query-passage cosine exceeds --min-cos, drop duplicates",
                        description="Embed each row's query (with its instruction, as training does) and its "
                        "positive; keep the rows whose cosine is greater than --min-cos; drop exact duplicates.")
    f.add_argument("input", help="training rows JSONL (e.g. from synth queries)")
    f.add_argument("-o", "--output", required=True, help="JSONL of the kept rows (with meta.cos)")
    f.add_argument("--min-cos", type=float, default=DEFAULT_MIN_COS,
                   help=f"keep a pair only when cosine > this (default {DEFAULT_MIN_COS}, the report's)")
    f.add_argument("--instruction", default=None,
                   help="instruction for rows without one (default: the web-search instruction)")
    f.add_argument("--dim", type=int, default=None, help="Matryoshka dimension of the cosine (default: full)")
    f.add_argument("--overwrite", action="store_true", help="replace an existing output")
    add_model_options(f, DEFAULT_EMBEDDING_MODEL, flag="--embedding-model")
    f.set_defaults(func=cmd_filter)
