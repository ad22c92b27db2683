"""`qwen-embed serve`: load the model(s), then run the app under uvicorn until SIGTERM / Ctrl-C.

Every flag has an environment variable (settings.py); a flag wins over the variable, the variable over
the default. Models load before the port opens, so a bad path fails with one line and status 2. On
SIGTERM uvicorn stops accepting, finishes the accepted requests (up to --graceful-timeout seconds),
the batchers drain, and the process exits 0.
"""

from __future__ import annotations

import argparse
import signal
from typing import Any

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
        shown = ",".join(default) if isinstance(default, tuple) else default
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
    """Resolve settings, load models, serve; returns 0 after a graceful shutdown."""
    import logging

    import uvicorn

    from ..embedder import Embedder
    from ..reranker import Reranker, get_template
    from .app import create_app

    settings = resolve({s.name: getattr(args, s.name, None) for s in SETTINGS})
    get_template(settings.reranker_template)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    embedder = reranker = None
    if settings.embedding_model:
        embedder = Embedder.from_pretrained(settings.embedding_model, device=settings.device, dtype=settings.dtype,
                                            max_length=settings.max_length, batch_tokens=settings.max_batch_tokens,
                                            compile=settings.compile, deterministic=settings.deterministic)
    if settings.reranker_model:
        reranker = Reranker.from_pretrained(settings.reranker_model, device=settings.device, dtype=settings.dtype,
                                            template=settings.reranker_template, max_length=settings.max_length,
                                            batch_tokens=settings.max_batch_tokens, compile=settings.compile,
                                            deterministic=settings.deterministic)
    app = create_app(settings, embedder=embedder, reranker=reranker)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=settings.graceful_timeout, access_log=False,
                            timeout_keep_alive=settings.keep_alive)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal it shut down on after a clean exit; with this handler in place,
    # that re-raise is a no-op and a SIGTERM ends with status 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if server.started else 1
