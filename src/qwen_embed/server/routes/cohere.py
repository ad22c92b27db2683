"""Cohere v2 embed: POST /v2/embed with `embedding_types` (float, int8, uint8, binary, ubinary, base64).

Follows Cohere's v2 API (https://docs.cohere.com/reference/embed, the `cohere` client's
`ClientV2.embed`): request `texts` (or `inputs` of text parts), `input_type`, `embedding_types`,
`output_dimension`, `max_tokens`, `truncate`; response `{"id", "response_type": "embeddings_by_type",
"embeddings": {type: [...]}, "texts", "meta"}`. Where it departs:

- the vectors are Matryoshka-sliced, L2-normalised, then quantized by `qwen_embed.quantize` (the rule
  `Embedder.encode(..., precision=)` follows, byte-compatible with sentence-transformers'
  `quantize_embeddings`), not by Cohere's own int8 scale: int8 / uint8 bucket each dimension of the
  calibration ranges the server was started with (`--ranges`); without them such a request is a 400,
  never a silent per-request calibration. binary / ubinary are the packed sign bits (dim / 8 bytes).
  base64 is the float32 vector's little-endian bytes, base64-encoded.
- `input_type`: search_query is the query template with the default instruction (or the
  `instruction` extension); search_document is the text as it is; classification and clustering
  embed every text the same way, as it is, or under `instruction` when one is given (the Qwen3
  evaluation embeds them with a task instruction); image is refused (a text model).
- `truncate`: END cuts the end of a too-long input, START its start (`tokenizer.truncate_keep_end`
  with side "left": the instruction stays first and the end token last), NONE answers 413.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Response

from ...errors import InputError
from ...pooling import check_dim
from ...quantize import check_precision, load_ranges, quantize
from .. import schemas as S
from ..batcher import Timing
from ..errors import APIError
from ..service import EmbeddingService
from ..state import State
from .common import ERRORS, body_route, encoded

INPUT_TYPES = {"search_query": "query", "search_document": "document", "classification": None, "clustering": None}
PRECISION = {"float": "float32", "base64": "float32", "int8": "int8", "uint8": "uint8", "binary": "binary",
             "ubinary": "ubinary"}


def server_ranges(path: str | None, svc: EmbeddingService | None) -> np.ndarray | None:
    """The --ranges file as a [2, dim] array, checked against the served model (None without one)."""
    if path is None or svc is None:
        return None
    ranges = load_ranges(Path(path))
    hidden = svc.facts.config.hidden_size
    if ranges.ndim != 2 or ranges.shape[0] != 2 or not 1 <= ranges.shape[1] <= hidden:
        raise InputError(f"--ranges {path} holds an array of shape {ranges.shape}; it must be [2, dim] with dim at "
                         f"most the model's hidden size {hidden}; save it with `qwen-embed embed --save-ranges`.")
    if not np.isfinite(ranges).all() or (ranges[1] < ranges[0]).any():
        raise InputError(f"--ranges {path} must be finite with every maximum >= its minimum.")
    return ranges


def texts_of(req: S.CohereEmbedRequest) -> list[str]:
    """The texts of `texts` or of `inputs` (one text part each)."""
    if req.images is not None:
        raise APIError(400, "images are not supported: this server embeds text; send `texts`.", param="images")
    if req.input_type == "image":
        raise APIError(400, "input_type='image' is not supported: this server embeds text; use search_document, "
                       "search_query, classification or clustering.", param="input_type")
    if (req.texts is None) == (req.inputs is None):
        raise APIError(400, "send the texts in exactly one of `texts` or `inputs`.", param="texts")
    if req.texts is not None:
        return req.texts
    out = []
    for i, item in enumerate(req.inputs or []):
        if len(item.content) != 1 or item.content[0].type != "text" or item.content[0].text is None:
            kinds = ", ".join(c.type[:20] for c in item.content) or "none"
            raise APIError(400, f"inputs[{i}] has content parts ({kinds}); this server embeds one "
                           "{\"type\": \"text\", \"text\": ...} part per input.", param="inputs")
        out.append(item.content[0].text)
    return out


def check_types(types: list[str], dim: int, ranges: np.ndarray | None) -> list[str]:
    """The requested embedding types, each once, in order; refused before any work when they cannot be made."""
    out = list(dict.fromkeys(types))
    if not out:
        raise APIError(400, "embedding_types is empty; ask for at least one of float, int8, uint8, binary, "
                       "ubinary, base64 (or leave it out for float).", param="embedding_types")
    for t in out:
        try:
            check_precision(PRECISION[t], dim)
        except InputError as e:
            raise APIError(400, f"embedding_types {t!r}: {e}", param="embedding_types") from None
        if t in ("int8", "uint8"):
            if ranges is None:
                raise APIError(400, f"embedding_types {t!r} needs calibration ranges, and this server was started "
                               "without them; restart it with --ranges FILE (from `qwen-embed embed --precision int8 "
                               "--save-ranges FILE`) or ask for float, binary or ubinary.", param="embedding_types")
            if ranges.shape[1] != dim:
                have = ranges.shape[1]
                raise APIError(400, f"embedding_types {t!r} at output_dimension {dim}: the server's --ranges are for "
                               f"dimension {have}; request output_dimension={have} or restart with ranges saved at "
                               f"dimension {dim}.", param="output_dimension")
    return out


def by_type(vecs: np.ndarray, types: list[str], ranges: np.ndarray | None) -> dict[str, Any]:
    """Cohere's `embeddings` object: float [n, dim] rows -> each requested type."""
    out: dict[str, Any] = {}
    for t in types:
        if t == "float":
            out[t] = vecs.tolist()
        elif t == "base64":
            out[t] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vecs]
        else:
            out[t] = quantize(vecs, PRECISION[t], ranges=ranges if t.endswith("int8") else None).tolist()
    return out


def router(state: State) -> APIRouter:
    """The Cohere v2 embed route over `state`."""
    r = APIRouter(route_class=body_route(state), tags=["cohere"])
    ranges = server_ranges(state.settings.ranges, state.embedding)

    @r.post("/v2/embed", response_model=S.CohereEmbedResponse, response_model_by_alias=True, responses=ERRORS)
    async def cohere_embed(req: S.CohereEmbedRequest) -> Response:
        """Embeddings in Cohere's v2 shape, one array per requested `embedding_types` entry."""
        svc = state.embedding_service(req.model)
        texts = texts_of(req)
        dim = check_dim(req.output_dimension, svc.facts.config.hidden_size, param="output_dimension")
        types = check_types(["float"] if req.embedding_types is None else list(req.embedding_types), dim, ranges)
        kind = INPUT_TYPES[req.input_type or "search_document"]
        timing = Timing()
        with svc.admission() as adm:
            seqs = await svc.prepare(texts, instruction=req.instruction, input_type=kind,
                                     truncate=req.truncate != "NONE", what="texts" if req.texts is not None
                                     else "inputs", timing=timing, left=req.truncate == "START", limit=req.max_tokens)
            vecs = await svc.embed(adm, seqs, dim, True, timing)
        tokens = sum(len(s) for s in seqs)

        def payload() -> dict[str, Any]:
            return {"id": str(uuid.uuid4()), "response_type": "embeddings_by_type",
                    "embeddings": by_type(vecs, types, ranges), "texts": texts,
                    "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}}}

        return await encoded(svc, payload, timing, vecs.size * len(types) + sum(map(len, texts)))

    return r
