"""Cohere / Jina rerank: POST /v1/rerank and /v2/rerank, results sorted best first (`rank_by_score`)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Response

from ...pooling import rank_by_score
from .. import schemas as S
from ..batcher import Timing
from ..errors import APIError
from ..state import State
from .common import ERRORS, body_route, encoded, rerank_work


def check_top_n(top_n: int | None) -> int | None:
    if top_n is not None and top_n < 1:
        raise APIError(400, f"top_n={top_n} must be at least 1 (or left out for all).", param="top_n")
    return top_n


def router(state: State) -> APIRouter:
    """The Cohere / Jina rerank routes over `state`."""
    r = APIRouter(route_class=body_route(state), tags=["rerank"])

    async def cohere_rerank(req: S.RerankRequest) -> Response:
        """Rerank in the Cohere / Jina shape: results sorted by relevance_score, best first."""
        svc = state.rerank_service(req.model)
        docs = [d if isinstance(d, str) else d.text for d in req.documents]
        top_n = check_top_n(req.top_n)
        timing = Timing()
        with svc.admission() as adm:
            seqs = await svc.prepare(req.query, docs, instruction=req.instruction,
                                     max_tokens_per_doc=req.max_tokens_per_doc, truncate=req.truncate,
                                     what="documents", timing=timing)
            scores = await svc.score(adm, seqs, timing)
        tokens = sum(len(s) for s in seqs)

        def payload() -> dict[str, Any]:
            results = []
            for i in rank_by_score(scores)[:top_n]:
                item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
                if req.return_documents:
                    item["document"] = {"text": docs[i]}
                results.append(item)
            return {"id": str(uuid.uuid4()), "model": svc.name, "results": results,
                    "usage": {"total_tokens": tokens}}

        return await encoded(svc, payload, timing, rerank_work(scores, docs, req.return_documents))

    for path in ("/v1/rerank", "/v2/rerank"):
        r.post(path, response_model=S.RerankResponse, responses=ERRORS)(cohere_rerank)
    return r
