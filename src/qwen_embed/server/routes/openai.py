"""OpenAI API routes: POST /v1/embeddings, GET /v1/models, GET /v1/models/{model_id}."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Response

from .. import schemas as S
from ..batcher import Timing
from ..errors import APIError
from ..state import State
from .common import ERRORS, body_route, encoded


def router(state: State) -> APIRouter:
    """The OpenAI-shaped routes over `state`."""
    r = APIRouter(route_class=body_route(state), tags=["openai"])

    @r.post("/v1/embeddings", response_model=S.EmbeddingResponse, responses=ERRORS)
    async def embeddings(req: S.EmbeddingRequest) -> Response:
        """Embeddings in the OpenAI shape; `encoding_format=base64` gives little-endian float32."""
        svc = state.embedding_service(req.model)
        dim = svc.check_dim(req.dimensions)
        timing = Timing()
        with svc.admission() as adm:  # a full queue answers 429 before any tokenization
            seqs = await svc.prepare(req.input, instruction=req.instruction, input_type=req.input_type,
                                     truncate=req.truncate, what="input", timing=timing)
            vecs = await svc.embed(adm, seqs, dim, True, timing)
        tokens = sum(len(s) for s in seqs)
        as_b64 = req.encoding_format == "base64"

        def payload() -> dict[str, Any]:
            def enc(v: np.ndarray) -> Any:
                return base64.b64encode(v.astype("<f4").tobytes()).decode() if as_b64 else v.tolist()
            data = [{"object": "embedding", "index": i, "embedding": enc(v)} for i, v in enumerate(vecs)]
            return {"object": "list", "data": data, "model": svc.name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

        return await encoded(svc, payload, timing, vecs.size)

    def card(kind: str, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": state.started, "owned_by": "qwen-embed", "kind": kind}

    @r.get("/v1/models", response_model=S.ModelList)
    async def models() -> dict[str, Any]:
        """The served models, OpenAI shape (`kind` tells embedding from reranker)."""
        return {"object": "list", "data": [card(svc.kind, svc.name) for svc in state.services]}

    @r.get("/v1/models/{model_id:path}", response_model=S.ModelCard, responses={404: {"model": S.ErrorResponse}})
    async def model(model_id: str) -> dict[str, Any]:
        """One served model by its name (OpenAI `retrieve`); 404 naming the served ones otherwise."""
        for svc in state.services:
            if svc.name == model_id:
                return card(svc.kind, svc.name)
        names = ", ".join(repr(s.name) for s in state.services)
        raise APIError(404, f"model {model_id[:100]!r} is not served here; this server serves {names}.",
                       param="model", code="model_not_found")

    return r
