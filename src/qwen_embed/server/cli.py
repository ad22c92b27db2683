"""`qwen-embed serve`: load the model(s), then run the app under uvicorn until SIGTERM / Ctrl-C.

Every flag has an environment variable (settings.py); a flag wins over the variable, the variable over
the default. Models load before the port opens, so a bad path (or a reranker passed as the embedding
model) fails with one line and status 2. On SIGTERM the app drains (serving.py): new requests get 503,
the accepted ones finish or get 503 at --graceful-timeout, and the process exits 0.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..processes import skip_final_gc
from .settings import SETTINGS, default_of, resolve


def register(subparsers: Any) -> None:
    """Add `serve` to the `qwen-embed` command."""
    p = subparsers.add_parser(
        "serve", help="HTTP server: OpenAI embeddings, Cohere/Jina rerank, TEI routes",
        description="Serve an embedding model and/or a reranker over HTTP. Each flag can also be set "
        "with the environment variable shown; a flag wins over the variable.",
    )
    for s in SETTINGS:
        default = default_of(s.name)
        shown = (",".join(default) or None) if isinstance(default, tuple) else default
        tail = f"; default: {shown}" if shown is not None else ""
        kwargs: dict[str, Any] = {"default": None, "dest": s.name, "help": f"{s.help} [env {s.env}{tail}]"}
        if s.name in ("warmup", "compile"):  # on by default: the flag turns it off
            kwargs["help"] = f"turn off: {kwargs['help']}"
            p.add_argument(f"--no-{s.name}", action="store_const", const=False, **kwargs)
            continue
        if s.name == "deterministic":  # off by default: the flag turns it on
            p.add_argument("--deterministic", action="store_const", const=True, **kwargs)
            continue
        p.add_argument(s.flag, type=s.parse, metavar=s.name.split("_")[-1].upper(), **kwargs)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Resolve settings, load models, serve; returns 0 after a graceful shutdown. `--workers N` starts the
    supervisor, which imports no torch (on CPU devices): its children import it once (processes.py)."""
    import logging

    from ..templates import get_template

    settings = resolve({s.name: getattr(args, s.name, None) for s in SETTINGS})
    get_template(settings.reranker_template)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:
        from .model_pool import parse_devices
        from .supervisor import Supervisor

        if settings.embedding_model:
            refuse_reranker(settings.embedding_model)
        wanted = settings.devices if settings.devices is not None else settings.device
        devices = parse_devices(None if wanted in (None, "auto") else wanted)
        code = Supervisor(settings, devices).run()
        skip_final_gc()
        return code
    from .app import create_app  # not for --workers: the supervisor builds no app (its workers do)

    if settings.devices is not None:
        from .model_pool import parse_devices

        devices = parse_devices(None if settings.devices == "auto" else settings.devices)
        if settings.embedding_model:
            refuse_reranker(settings.embedding_model)
        app = create_app(settings, devices=devices)
        return run_server(app, settings)
    from ..embedder import Embedder
    from ..reranker import Reranker
    from ..threads import use_threads

    embedder = reranker = None
    # the embedder and the reranker run in threads of their own: share the cores between them
    threads = use_threads(settings.threads, processes=bool(settings.embedding_model) + bool(settings.reranker_model))
    if settings.embedding_model:
        refuse_reranker(settings.embedding_model)
        embedder = Embedder.from_pretrained(settings.embedding_model, device=settings.device, dtype=settings.dtype,
                                            max_length=settings.max_length, batch_tokens=settings.max_batch_tokens,
                                            compile=settings.compile, threads=threads,
                                            deterministic=settings.deterministic)
    if settings.reranker_model:
        reranker = Reranker.from_pretrained(settings.reranker_model, device=settings.device, dtype=settings.dtype,
                                            template=settings.reranker_template, max_length=settings.max_length,
                                            batch_tokens=settings.max_batch_tokens, compile=settings.compile,
                                            threads=threads, deterministic=settings.deterministic)
    app = create_app(settings, embedder=embedder, reranker=reranker)
    return run_server(app, settings)


def run_server(app: Any, settings: Any) -> int:
    """Serve `app` under uvicorn until SIGTERM / Ctrl-C; 0 after a graceful shutdown."""
    from .serving import serve_app

    started = serve_app(app, settings)
    skip_final_gc()  # the process is ending (its last collection took 4 s for a tiny model on 2 cores)
    return 0 if started else 1


def refuse_reranker(model: str) -> None:
    """`--embedding-model` given a reranker checkpoint: one line naming the right flag (before loading)."""
    from pathlib import Path

    from ..config import ModelConfig
    from ..errors import InputError, QwenEmbedError

    path = Path(model)
    if not (path / "config.json").is_file():
        return  # a hub id or a missing folder: the loader reports it
    try:
        config = ModelConfig.from_file(path / "config.json")
    except QwenEmbedError:
        return  # unreadable: the loader reports it with its own words
    if config.is_reranker:
        raise InputError(f"--embedding-model {model} is a reranker checkpoint ({config.architecture}); serve it "
                         "with --reranker-model, or pass an embedding checkpoint.")
