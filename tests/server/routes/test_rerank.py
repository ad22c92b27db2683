"""routes/rerank.py: POST /v1/rerank and /v2/rerank against Cohere's rerank API (v1 and v2, through the
official `cohere` clients) and Jina's (the same shape, `usage.total_tokens`).

References are the in-process `Reranker` (`rerank`, `score`, `build_input_ids`) and the documented ranking
rule (best first, ties in input order); tests/server/test_app.py covers top_n, documents as objects,
`instruction` and `max_tokens_per_doc` on /v1/rerank.
"""

from __future__ import annotations

import uuid

import cohere
import numpy as np
import pytest
from fastapi.testclient import TestClient

from qwen_embed import Reranker

from .conftest import RR

QUERY = "What is the capital of China?"
DOCS = ["The capital of China is Beijing.", "Gravity is a force.", "Rivers flow into the sea.", "yes no"]
# the cohere clients pass a timeout to every request, which the TestClient ignores (and warns about)
IGNORE_TIMEOUT = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")
LONG = "The quick brown fox jumps over the lazy dog. " * 40  # past the reranker's 256 tokens


def rerank(api: TestClient, body: dict[str, object], path: str = "/v1/rerank") -> dict[str, object]:
    r = api.post(path, json=body)
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_results_are_the_rerankers_best_first(api: TestClient, small_reranker: Reranker, path: str) -> None:
    got = rerank(api, {"model": RR, "query": QUERY, "documents": DOCS}, path)
    want = small_reranker.rerank(QUERY, DOCS)
    results = got["results"]
    assert isinstance(results, list)
    assert [x["index"] for x in results] == [w.index for w in want]
    assert np.allclose([x["relevance_score"] for x in results], [w.score for w in want], atol=1e-6, rtol=0)
    assert all("document" not in x for x in results)  # return_documents defaults to false
    assert got["model"] == RR and uuid.UUID(str(got["id"]))
    assert got["usage"] == {"total_tokens": sum(map(len, small_reranker.build_input_ids(QUERY, DOCS)))}


def test_equal_scores_keep_the_input_order(api: TestClient, small_reranker: Reranker) -> None:
    docs = [DOCS[1], DOCS[0], DOCS[1], DOCS[0], DOCS[1]]
    scores = small_reranker.score(QUERY, docs)
    assert scores[0] == scores[2] == scores[4] and scores[1] == scores[3] and scores[0] != scores[1]
    first, second = ([0, 2, 4], [1, 3]) if scores[0] > scores[1] else ([1, 3], [0, 2, 4])
    for path in ("/v1/rerank", "/v2/rerank"):
        got = rerank(api, {"query": QUERY, "documents": docs, "return_documents": True}, path)
        results = got["results"]
        assert isinstance(results, list)
        assert [x["index"] for x in results] == first + second
        assert [x["document"]["text"] for x in results] == [docs[i] for i in first + second]


def test_top_n_past_the_documents_returns_them_all(api: TestClient, small_reranker: Reranker) -> None:
    got = rerank(api, {"query": QUERY, "documents": DOCS[:3], "top_n": 10})
    assert [x["index"] for x in got["results"]] == [w.index for w in small_reranker.rerank(QUERY, DOCS[:3])]  # type: ignore[attr-defined]


@pytest.mark.parametrize("top_n", [0, -1])
def test_top_n_below_one_is_a_400(api: TestClient, top_n: int) -> None:
    r = api.post("/v2/rerank", json={"query": QUERY, "documents": DOCS, "top_n": top_n})
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_n" and f"top_n={top_n}" in r.text


def test_a_long_document_is_cut_as_the_reranker_cuts_it(api: TestClient, small_reranker: Reranker) -> None:
    got = rerank(api, {"query": QUERY, "documents": [LONG, DOCS[0]]})
    scores = small_reranker.score(QUERY, [LONG, DOCS[0]])
    by_index = {x["index"]: x["relevance_score"] for x in got["results"]}  # type: ignore[attr-defined]
    assert np.allclose([by_index[0], by_index[1]], scores, atol=1e-6, rtol=0)
    assert got["usage"]["total_tokens"] == small_reranker.max_length + len(  # type: ignore[index]
        small_reranker.build_input_ids(QUERY, [DOCS[0]])[0])


@IGNORE_TIMEOUT
def test_cohere_v2_client(api: TestClient, small_reranker: Reranker) -> None:
    client = cohere.ClientV2(base_url="http://testserver", api_key="unused", httpx_client=api)  # type: ignore[arg-type]
    res = client.rerank(model=RR, query=QUERY, documents=DOCS, top_n=2, max_tokens_per_doc=4)
    seqs = small_reranker.build_input_ids(QUERY, DOCS, max_tokens_per_doc=4)
    scores = small_reranker.score_ids(seqs)
    order = sorted(range(len(DOCS)), key=lambda i: (-scores[i], i))[:2]
    assert [r.index for r in res.results] == order
    assert np.allclose([r.relevance_score for r in res.results], scores[order], atol=1e-6, rtol=0)


@IGNORE_TIMEOUT
def test_cohere_v1_client_with_documents_returned(api: TestClient, small_reranker: Reranker) -> None:
    client = cohere.Client(base_url="http://testserver", api_key="unused", httpx_client=api)  # type: ignore[arg-type]
    docs: list[str | dict[str, str]] = [DOCS[0], {"text": DOCS[1]}, DOCS[2]]
    res = client.rerank(model=RR, query=QUERY, documents=docs, return_documents=True)
    want = small_reranker.rerank(QUERY, DOCS[:3])
    assert [(r.index, r.document.text if r.document else None) for r in res.results] == [
        (w.index, w.document) for w in want]
    assert np.allclose([r.relevance_score for r in res.results], [w.score for w in want], atol=1e-6, rtol=0)


@IGNORE_TIMEOUT
def test_cohere_v2_client_priority_is_accepted_and_ignored(api: TestClient, small_reranker: Reranker) -> None:
    client = cohere.ClientV2(base_url="http://testserver", api_key="unused", httpx_client=api)  # type: ignore[arg-type]
    res = client.rerank(model=RR, query=QUERY, documents=DOCS, priority=1)
    assert [r.index for r in res.results] == [w.index for w in small_reranker.rerank(QUERY, DOCS)]
