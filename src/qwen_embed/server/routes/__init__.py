"""One module of routes per API: openai (embeddings, models), cohere (v2 embed), rerank (Cohere / Jina),
tei (text-embeddings-inference), ops (health, metrics). Each gives `router(state)`."""

from __future__ import annotations

from fastapi import FastAPI

from ..state import State
from . import cohere, openai, ops, rerank, tei


def add_routes(app: FastAPI, state: State) -> None:
    """Mount every API's routes on `app`."""
    for module in (openai, cohere, rerank, tei, ops):
        app.include_router(module.router(state))
