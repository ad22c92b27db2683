"""text-embeddings-inference (TEI) routes: POST /embed, /similarity, /rerank, /tokenize and GET /info.

`/similarity` embeds `source_sentence` and `sentences` (normalised, full dimension) and answers the
cosine of each sentence with the source, as TEI does. `/embed` (and `/similarity`'s `parameters`)
takes TEI's `prompt_name` (a name from the model's prompts: "query", "document" and those of its
config_sentence_transformers.json) and `truncation_direction`. "Left" drops the start of an input
that is too long instead of its end (`tokenizer.truncate_keep_end` with side "left"); unlike TEI,
which cuts the whole token sequence, the prompt (instruction) at its head is kept, and the end token
is always last, because an embedding of a query without its instruction, or without the end token,
is not the query's embedding.
"""

from __future__ import annotations

import math
import time
from typing import Any

from fastapi import APIRouter, Response

from ... import __version__
from ...pooling import rank_by_score
from .. import schemas as S
from ..batcher import Timing
from ..errors import APIError
from ..service import EmbeddingService, Service, check_unicode, head_text
from ..state import State
from .common import ERRORS, body_route, encoded, rerank_work


def router(state: State) -> APIRouter:
    """The TEI routes over `state`."""
    r = APIRouter(route_class=body_route(state), tags=["tei"])

    @r.post("/embed", response_model=list[list[float]], responses=ERRORS)
    async def tei_embed(req: S.EmbedRequest) -> Response:
        """TEI: a list of embeddings (normalized unless `normalize=false`)."""
        svc = state.embedding_service(req.model)
        dim = svc.check_dim(req.dimensions)
        timing = Timing()
        left = is_left(req.truncation_direction)
        with svc.admission() as adm:
            seqs = await svc.prepare(req.inputs, instruction=req.instruction, input_type=None, truncate=req.truncate,
                                     what="inputs", timing=timing, prompt_name=req.prompt_name, left=left)
            vecs = await svc.embed(adm, seqs, dim, req.normalize, timing)
        return await encoded(svc, lambda: vecs.tolist(), timing, vecs.size)

    @r.post("/similarity", response_model=list[float], responses=ERRORS)
    async def similarity(req: S.SimilarityRequest) -> Response:
        """TEI: the cosine similarity of `source_sentence` with each of `sentences`, in their order."""
        svc = state.embedding_service(req.model)
        p = req.parameters
        prompt_name = None if p is None else p.prompt_name
        truncate = p is None or p.truncate is None or p.truncate
        left = p is not None and is_left(p.truncation_direction)
        svc.check_count(len(req.inputs.sentences) + 1, "sentences")
        timing = Timing()
        with svc.admission() as adm:
            src = await svc.prepare([req.inputs.source_sentence], instruction=None, input_type=None,
                                    truncate=truncate, what="source_sentence", timing=timing,
                                    prompt_name=prompt_name, left=left)
            tokenization = timing.tokenization
            seqs = await svc.prepare(req.inputs.sentences, instruction=None, input_type=None, truncate=truncate,
                                     what="sentences", timing=timing, prompt_name=prompt_name, left=left)
            timing.tokenization += tokenization
            svc.check_total(src + seqs, "sentences")
            vecs = await svc.embed(adm, src + seqs, svc.check_dim(None), True, timing)
        return await encoded(svc, lambda: (vecs[1:] @ vecs[0]).tolist(), timing, vecs.size)

    @r.post("/rerank", response_model=list[S.TEIRank], responses=ERRORS)
    async def tei_rerank(req: S.TEIRerankRequest) -> Response:
        """TEI: `[{index, score, text?}]` sorted by score, best first."""
        svc = state.rerank_service(req.model)
        if is_left(req.truncation_direction):
            raise APIError(400, "truncation_direction='Left' is not supported on /rerank: documents are cut at "
                           "their end, keeping the prompt's frame; drop it or send truncate=false.",
                           param="truncation_direction")
        timing = Timing()
        with svc.admission() as adm:
            seqs = await svc.prepare(req.query, req.texts, instruction=req.instruction, max_tokens_per_doc=None,
                                     truncate=req.truncate, what="texts", timing=timing)
            scores = await svc.score(adm, seqs, timing)

        def payload() -> list[dict[str, Any]]:
            out = []
            for i in rank_by_score(scores):
                s = float(scores[i])
                if req.raw_scores:
                    p = min(max(s, 1e-38), 1 - 1e-7)
                    s = math.log(p) - math.log1p(-p)
                item: dict[str, Any] = {"index": i, "score": s}
                if req.return_text:
                    item["text"] = req.texts[i]
                out.append(item)
            return out

        return await encoded(svc, payload, timing, rerank_work(scores, req.texts, req.return_text))

    @r.post("/tokenize", response_model=list[list[S.SimpleToken]], responses=ERRORS)
    async def tokenize(req: S.TokenizeRequest) -> Response:
        """TEI: tokens of each input, with the end token and truncation as embedded (add_special_tokens)."""
        # counted by admission like the model routes; at most --max-request-tokens tokens in all (413)
        svc = state.main
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        svc.check_count(len(texts), "inputs")
        for i, t in enumerate(texts):
            if not t:
                raise APIError(400, f"inputs[{i}] is an empty string.", param="inputs")
        prefix = ""
        if req.prompt_name is not None:
            # the prompts are the model folder's: no model call, so no readiness check (as without prompt_name)
            prefix = state.embedding_service(None, ready=False).prefix_for(None, None, req.prompt_name) or ""
        timing = Timing()
        with svc.admission():
            start = time.perf_counter()
            toks = await svc.off_loop(lambda: tokens_of(svc, texts, req.add_special_tokens, prefix))
            timing.tokenization = time.perf_counter() - start
        return await encoded(svc, lambda: toks, timing, 8 * sum(map(len, toks)))

    @r.get("/info")
    async def info() -> dict[str, Any]:
        """TEI-style facts about the served model(s)."""
        main = state.main
        s = state.settings

        def describe(svc: Service) -> dict[str, Any]:
            f = svc.facts
            kind = ({"embedding": {"pooling": "last_token"}} if isinstance(svc, EmbeddingService)
                    else {"reranker": {"score": "yes/no next-token probability"}})
            return {"model_id": svc.name, "model_sha": None, "model_dtype": f.dtype, "model_type": kind,
                    "max_input_length": svc.max_length, "hidden_size": f.config.hidden_size, "device": f.device}

        return {**describe(main), "max_concurrent_requests": s.max_queue, "max_batch_tokens":
                main.batcher.max_batch_tokens, "max_batch_requests": s.max_batch_requests,
                "max_client_batch_size": s.max_inputs, "max_request_tokens": s.max_request_tokens,
                "tokenization_workers": s.tokenization_workers, "version": __version__,
                "models": [describe(x) for x in state.services]}

    return r


def is_left(direction: str | None) -> bool:
    """TEI's `truncation_direction` (Left / Right, either case) -> whether the start is cut."""
    return direction is not None and direction.lower() == "left"


def tokens_of(svc: Service, texts: list[str], add_special: bool, prefix: str = "") -> list[list[dict[str, Any]]]:
    """TEI /tokenize rows: id, text, special, start, stop (None for the end token we append), of each
    text after `prefix` (a prompt; offsets are in prompt + text). Huge texts are cut by characters
    before tokenization; more than --max-request-tokens tokens is a 413."""
    check_unicode(texts, "inputs")
    tok = svc.tokenizer
    cap = svc.settings.max_request_tokens
    keep = svc.max_length - 1 if add_special else cap
    texts = [prefix + head_text(tok, t, keep)[0] for t in texts]
    out = []
    total = 0
    for enc in tok.tok.encode_batch(texts, add_special_tokens=False):
        ids, offsets = list(enc.ids), list(enc.offsets)
        if add_special:
            ids, offsets = ids[: svc.max_length - 1], offsets[: svc.max_length - 1]
        total += len(ids) + add_special
        if total > cap:
            raise APIError(413, f"the tokens of these inputs pass the limit of {cap} per request "
                           "(--max-request-tokens); send fewer or shorter inputs.", param="inputs",
                           code="too_many_tokens")
        row = [{"id": i, "text": tok.decode([i]), "special": False, "start": a, "stop": b}
               for i, (a, b) in zip(ids, offsets, strict=True)]
        if add_special:
            row.append({"id": tok.eos_id, "text": tok.decode([tok.eos_id]), "special": True, "start": None,
                        "stop": None})
        out.append(row)
    return out
