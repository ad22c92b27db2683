"""The routes over a live loopback server: parity with the library, shapes, headers, health, metrics."""

from __future__ import annotations

import asyncio
import base64
import math

import httpx
import numpy as np
import openai
import pytest

from qwen_embed import DEFAULT_INSTRUCTION, Embedder, Reranker
from qwen_embed.server import ServerSettings, create_app

from .conftest import LiveServer

TEXTS = ["The capital of China is Beijing.", "Gravity attracts two bodies towards each other.",
         "yes", "A protein is a chain of amino acids. " * 5]


def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_openai_client_matches_embedder(live: LiveServer, small_embedder: Embedder,
                                        encoding_format: str | None) -> None:
    # None: the client's own default, which asks for base64 and decodes it itself
    kwargs = {} if encoding_format is None else {"encoding_format": encoding_format}
    res = client(live).embeddings.create(input=TEXTS, model="emb", **kwargs)  # type: ignore[arg-type]
    if encoding_format == "base64":  # asked for explicitly, the client hands back the strings
        got = np.stack([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in res.data])  # type: ignore[arg-type]
    else:
        got = np.array([d.embedding for d in res.data], dtype=np.float32)
    want = small_embedder.encode(TEXTS)
    assert [d.index for d in res.data] == list(range(len(TEXTS)))
    assert np.abs(got - want).max() <= 1e-6
    assert res.usage.prompt_tokens == sum(len(s) for s in small_embedder.tokenize(TEXTS))
    assert res.model == "emb"


def test_openai_dimensions_and_query_template(live: LiveServer, small_embedder: Embedder) -> None:
    c = client(live)
    res = c.embeddings.create(input=TEXTS[:2], model="emb", dimensions=32, encoding_format="float")
    got = np.array([d.embedding for d in res.data], dtype=np.float32)
    assert got.shape == (2, 32)
    assert np.abs(got - small_embedder.encode(TEXTS[:2], dim=32)).max() <= 1e-6
    q = c.embeddings.create(input=TEXTS[:2], model="emb", encoding_format="float",
                            extra_body={"input_type": "query"})
    want = small_embedder.encode_queries(TEXTS[:2])
    assert np.abs(np.array([d.embedding for d in q.data]) - want).max() <= 1e-6
    custom = c.embeddings.create(input=TEXTS[:1], model="emb", encoding_format="float",
                                 extra_body={"instruction": "Find the city"})
    want = small_embedder.encode(TEXTS[:1], instruction="Find the city")
    assert np.abs(np.array([d.embedding for d in custom.data]) - want).max() <= 1e-6
    assert DEFAULT_INSTRUCTION  # the query default is the library's


def test_token_id_inputs_equal_text_inputs(live: LiveServer, small_embedder: Embedder) -> None:
    ids = small_embedder.tokenize(TEXTS[:2])
    plain = [s[:-1] for s in ids]  # without the end token: the server appends it
    for inp in (ids, plain):
        r = httpx.post(live.url + "/v1/embeddings", json={"input": inp, "model": "emb"}, timeout=30)
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]])
        assert np.abs(got - small_embedder.encode(TEXTS[:2])).max() <= 1e-6
    one = httpx.post(live.url + "/v1/embeddings", json={"input": ids[0]}, timeout=30).json()
    assert len(one["data"]) == 1


def test_base64_is_little_endian_float32(live: LiveServer, small_embedder: Embedder) -> None:
    r = httpx.post(live.url + "/v1/embeddings", json={"input": "hello", "encoding_format": "base64"}, timeout=30)
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    vec = np.frombuffer(raw, dtype="<f4")
    assert np.array_equal(vec, small_embedder.encode(["hello"])[0])


def test_truncation_default_and_413_when_refused(live: LiveServer, small_embedder: Embedder) -> None:
    long = "The quick brown fox jumps over the lazy dog. " * 30  # well over max_length=64
    r = httpx.post(live.url + "/v1/embeddings", json={"input": [long], "encoding_format": "float"}, timeout=30)
    assert r.status_code == 200
    assert r.json()["usage"]["total_tokens"] == 64
    assert np.abs(np.array(r.json()["data"][0]["embedding"]) - small_embedder.encode([long])[0]).max() <= 1e-6
    r = httpx.post(live.url + "/v1/embeddings", json={"input": [long], "truncate": False}, timeout=30)
    assert r.status_code == 413
    assert "max length 64" in r.json()["error"]["message"]


def test_cohere_rerank_matches_reranker(live: LiveServer, small_reranker: Reranker) -> None:
    query = "What is the capital of China?"
    docs = ["The capital of China is Beijing.", "Gravity is a force.", "Rivers flow into the sea.", "yes no"]
    body = {"model": "rr", "query": query, "documents": [docs[0], {"text": docs[1]}, *docs[2:]],
            "return_documents": True, "top_n": 3}
    r = httpx.post(live.url + "/v1/rerank", json=body, timeout=30)
    assert r.status_code == 200, r.text
    want = small_reranker.rerank(query, docs, top_n=3)
    got = r.json()["results"]
    assert [x["index"] for x in got] == [w.index for w in want]
    assert np.allclose([x["relevance_score"] for x in got], [w.score for w in want], atol=1e-6, rtol=0)
    assert [x["document"]["text"] for x in got] == [w.document for w in want]
    assert r.json()["usage"]["total_tokens"] == sum(len(s) for s in small_reranker.build_input_ids(query, docs))
    bare = httpx.post(live.url + "/v1/rerank", json={"query": query, "documents": docs}, timeout=30).json()
    assert len(bare["results"]) == 4 and "document" not in bare["results"][0]
    instr = httpx.post(live.url + "/v1/rerank", json={"query": query, "documents": docs, "instruction": "Judge",
                                                      "max_tokens_per_doc": 3}, timeout=30).json()
    seqs = small_reranker.build_input_ids(query, docs, instruction="Judge", max_tokens_per_doc=3)
    want_scores = small_reranker.score_ids(seqs)
    assert np.allclose([want_scores[x["index"]] for x in instr["results"]],
                       [x["relevance_score"] for x in instr["results"]], atol=1e-6, rtol=0)


def test_tei_routes(live: LiveServer, small_embedder: Embedder, small_reranker: Reranker) -> None:
    r = httpx.post(live.url + "/embed", json={"inputs": TEXTS[:2], "normalize": False}, timeout=30)
    assert np.abs(np.array(r.json()) - small_embedder.encode(TEXTS[:2], normalize=False)).max() <= 1e-5
    r = httpx.post(live.url + "/rerank", json={"query": "capital", "texts": TEXTS[:3], "return_text": True,
                                               "raw_scores": True}, timeout=30)
    probs = small_reranker.score("capital", TEXTS[:3])
    for item in r.json():
        p = float(probs[item["index"]])
        assert math.isclose(item["score"], math.log(p / (1 - p)), abs_tol=1e-4)
        assert item["text"] == TEXTS[item["index"]]
    assert [x["index"] for x in r.json()] == sorted(range(3), key=lambda i: -probs[i])
    toks = httpx.post(live.url + "/tokenize", json={"inputs": TEXTS[:2]}, timeout=30).json()
    assert [[t["id"] for t in row] for row in toks] == small_embedder.tokenize(TEXTS[:2])
    assert toks[0][-1]["special"] and toks[0][0]["start"] == 0
    plain = httpx.post(live.url + "/tokenize", json={"inputs": "yes", "add_special_tokens": False}, timeout=30).json()
    assert [t["id"] for t in plain[0]] == small_embedder.tokenizer.encode(["yes"])[0]
    info = httpx.get(live.url + "/info", timeout=30).json()
    assert info["model_id"] == "emb" and info["max_input_length"] == 64 and len(info["models"]) == 2
    models = httpx.get(live.url + "/v1/models", timeout=30).json()
    assert {(m["id"], m["kind"]) for m in models["data"]} == {("emb", "embedding"), ("rr", "reranker")}


def test_timing_headers_and_metrics(live: LiveServer) -> None:
    r = httpx.post(live.url + "/v1/embeddings", json={"input": "hello"}, timeout=30)
    for h in ("x-tokenization-time", "x-queue-time", "x-inference-time", "x-total-time"):
        assert float(r.headers[h]) >= 0
    assert float(r.headers["x-inference-time"]) > 0
    text = httpx.get(live.url + "/metrics", timeout=30).text
    assert 'qwen_embed_requests_total{route="/v1/embeddings",status="200"}' in text
    for name in ("qwen_embed_queue_requests", "qwen_embed_batch_tokens_bucket", "qwen_embed_batch_requests_bucket",
                 "qwen_embed_tokenization_seconds_bucket", "qwen_embed_queue_seconds_bucket",
                 "qwen_embed_inference_seconds_bucket", "qwen_embed_input_tokens_bucket"):
        assert name in text, name


def test_health_is_503_until_warmed_up(small_embedder: Embedder) -> None:
    app = create_app(ServerSettings(embedding_model="emb"), embedder=small_embedder)
    transport = httpx.ASGITransport(app=app)

    async def scenario() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            # no lifespan has run: no warm-up yet
            r = await c.get("/health")
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            r = await c.post("/v1/embeddings", json={"input": "x"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
            async with app.router.lifespan_context(app):
                for _ in range(500):
                    if (await c.get("/health")).status_code == 200:
                        break
                    await asyncio.sleep(0.02)
                assert (await c.get("/health")).json() == {"status": "ok"}
                assert (await c.post("/v1/embeddings", json={"input": "x"})).status_code == 200
                assert (await c.post("/v1/rerank", json={"query": "q", "documents": ["d"]})).status_code == 404

    asyncio.run(scenario())


def test_api_key(small_embedder: Embedder) -> None:
    settings = ServerSettings(embedding_model="emb", api_key="s3cret")
    with LiveServer(create_app(settings, embedder=small_embedder)) as srv:
        assert httpx.get(srv.url + "/health").status_code == 200  # public by default
        assert httpx.head(srv.url + "/health").status_code == 200
        assert httpx.get(srv.url + "/metrics").status_code == 401  # behind the key when auth is on
        metrics = httpx.get(srv.url + "/metrics", headers={"Authorization": "Bearer s3cret"})
        assert metrics.status_code == 200 and "qwen_embed_requests_total" in metrics.text
        assert httpx.get(srv.url + "/v1/models").status_code == 401
        ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert len(ok.embeddings.create(input="hi", model="emb").data[0].embedding) == small_embedder.hidden_size
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.embeddings.create(input="hi", model="emb")


def test_small_work_runs_inline_large_work_in_the_pool(small_embedder: Embedder, small_reranker: Reranker) -> None:
    """A one-query request is tokenized, finished and encoded on the event loop (no hand-off to the CPU pool);
    a large one goes to the pool; the vectors and scores are the library's either way."""
    from qwen_embed.server import service

    app = create_app(ServerSettings(embedding_model="emb", reranker_model="rr", max_length=64),
                     embedder=small_embedder, reranker=small_reranker)
    pool = app.state.qe.pools.cpu
    submitted: list[object] = []
    original = pool.submit

    def counting_submit(fn: object, *args: object, **kwargs: object) -> object:
        submitted.append(fn)
        return original(fn, *args, **kwargs)  # type: ignore[arg-type]

    pool.submit = counting_submit  # type: ignore[method-assign]
    big = [f"text {i}: " + "word " * 40 for i in range(80)]  # > INLINE_CHARS characters, > INLINE_VALUES numbers
    assert sum(map(len, big)) > service.INLINE_CHARS and len(big) * 64 > service.INLINE_VALUES
    with LiveServer(app) as srv:
        for texts, pooled in ((["a short query"], False), (big, True)):
            submitted.clear()
            r = httpx.post(srv.url + "/v1/embeddings", json={"input": texts, "encoding_format": "float"}, timeout=30)
            assert r.status_code == 200
            assert bool(submitted) == pooled, (len(texts), submitted)
            got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
            assert np.abs(got - small_embedder.encode(texts)).max() <= 1e-6
        submitted.clear()
        r = httpx.post(srv.url + "/v1/rerank", json={"query": "what is gravity", "documents": ["gravity pulls"]},
                       timeout=30)
        assert r.status_code == 200 and not submitted
        want = small_reranker.rerank("what is gravity", ["gravity pulls"])
        assert math.isclose(r.json()["results"][0]["relevance_score"], want[0].score, abs_tol=1e-6)


def test_lone_is_true_only_while_no_other_request_is_admitted(small_embedder: Embedder) -> None:
    app = create_app(ServerSettings(embedding_model="emb"), embedder=small_embedder)
    svc = app.state.qe.embedding
    assert svc.lone()
    first = svc.batcher.admit()
    assert svc.lone()  # the caller's own request
    second = svc.batcher.admit()
    assert not svc.lone()  # under load small work goes to the pool too
    second.release()
    first.release()
    assert svc.lone()
