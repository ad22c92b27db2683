"""routes/openai.py: POST /v1/embeddings, GET /v1/models and /v1/models/{model_id} against OpenAI's API
(https://platform.openai.com/docs/api-reference/embeddings, .../models) and its official Python client.

References are the in-process `Embedder` (`encode`, `embed_ids` on ids built by hand from its tokenizer)
and hand counts; tests/server/test_app.py and test_requests.py already cover the client's float / base64
parity, the query template, truncation and unknown fields.
"""

from __future__ import annotations

import base64
import time

import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from qwen_embed import Embedder
from qwen_embed.server import ServerSettings, create_app

from .conftest import EMB, RR

TEXTS = ["The capital of China is Beijing.", "Gravity attracts two bodies towards each other.", "yes"]


def client(http: TestClient) -> openai.OpenAI:
    """The official client, sending through the in-process app."""
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


def floats(body: dict[str, object]) -> np.ndarray:
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)  # type: ignore[attr-defined]


def test_rows_follow_the_input_order_duplicates_included(api: TestClient, small_embedder: Embedder) -> None:
    texts = [TEXTS[1], TEXTS[0], TEXTS[1]]
    body = api.post("/v1/embeddings", json={"input": texts, "encoding_format": "float"}).json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert {d["object"] for d in body["data"]} == {"embedding"} and body["object"] == "list"
    got = floats(body)
    assert np.abs(got - small_embedder.encode(texts)).max() <= 1e-6
    assert np.array_equal(got[0], got[2])
    assert body["model"] == EMB  # the served name, when the request names none


def test_one_string_is_one_row(api: TestClient, small_embedder: Embedder) -> None:
    body = api.post("/v1/embeddings", json={"input": TEXTS[0], "model": EMB, "encoding_format": "float"}).json()
    assert len(body["data"]) == 1 and body["data"][0]["index"] == 0
    assert np.abs(floats(body)[0] - small_embedder.encode(TEXTS[0])).max() <= 1e-6


def test_usage_counts_token_ids_with_the_appended_end_token(api: TestClient, small_embedder: Embedder) -> None:
    with_eos = small_embedder.tokenize([TEXTS[0]])[0]
    bare = small_embedder.tokenize([TEXTS[1]])[0][:-1]  # the server appends the end token
    body = api.post("/v1/embeddings", json={"input": [with_eos, bare], "encoding_format": "float"}).json()
    assert body["usage"] == {"prompt_tokens": len(with_eos) + len(bare) + 1,
                             "total_tokens": len(with_eos) + len(bare) + 1}
    assert np.abs(floats(body) - small_embedder.encode(TEXTS[:2])).max() <= 1e-6


def test_base64_at_a_dimension_is_that_many_little_endian_float32(api: TestClient, small_embedder: Embedder) -> None:
    body = api.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64", "dimensions": 32}).json()
    raw = [base64.b64decode(d["embedding"]) for d in body["data"]]
    assert [len(b) for b in raw] == [32 * 4] * 3
    got = np.stack([np.frombuffer(b, dtype="<f4") for b in raw])
    assert np.array_equal(got, small_embedder.encode(TEXTS, dim=32))  # sliced, then normalised
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_token_ids_through_the_official_client(api: TestClient, small_embedder: Embedder) -> None:
    ids = small_embedder.tokenize(TEXTS[:2])
    res = client(api).embeddings.create(input=ids, model=EMB, encoding_format="float", dimensions=48)
    got = np.array([d.embedding for d in res.data], dtype=np.float32)
    assert np.abs(got - small_embedder.embed_ids(ids, dim=48)).max() <= 1e-6
    one = client(api).embeddings.create(input=ids[0], model=EMB, encoding_format="float")  # one flat id list
    assert len(one.data) == 1 and one.usage.prompt_tokens == len(ids[0])


@pytest.mark.parametrize(("kwargs", "error", "param"), [
    ({"dimensions": 8}, openai.BadRequestError, "dimensions"),
    ({"model": "text-embedding-3-small"}, openai.NotFoundError, "model"),
    ({"extra_body": {"truncate": False}, "input": "word " * 200}, openai.APIStatusError, "input"),
])
def test_refusals_reach_the_official_client_as_openai_errors(api: TestClient, kwargs: dict[str, object],
                                                             error: type[openai.APIStatusError], param: str) -> None:
    args: dict[str, object] = {"input": "hello", "model": EMB, **kwargs}
    with pytest.raises(error) as e:
        client(api).embeddings.create(**args)
    assert e.value.param == param and e.value.message and "\n" not in str(e.value.body)
    if "truncate" in str(kwargs):
        assert e.value.status_code == 413 and e.value.code == "input_too_long"


def test_model_cards_share_the_start_time(api: TestClient) -> None:
    before = time.time()
    cards = client(api).models.list().data
    assert [(c.id, c.object, c.owned_by) for c in cards] == [(EMB, "model", "qwen-embed"), (RR, "model", "qwen-embed")]
    assert len({c.created for c in cards}) == 1 and isinstance(cards[0].created, int)
    assert cards[0].created <= before
    assert client(api).models.retrieve(RR).created == cards[0].created


def test_a_model_named_with_a_slash_is_retrieved_by_that_name(small_embedder: Embedder) -> None:
    """Hub names hold a slash (GET /v1/models/Qwen/Qwen3-Embedding-0.6B); no model runs: no lifespan."""
    name = "Qwen/Qwen3-Embedding-0.6B"
    app = create_app(ServerSettings(embedding_model="x", embedding_name=name, warmup=False), embedder=small_embedder)
    c = client(TestClient(app))
    assert c.models.retrieve(name).id == name
    assert [m.id for m in c.models.list().data] == [name]
    with pytest.raises(openai.NotFoundError) as e:
        c.models.retrieve("Qwen/Qwen3-Embedding-8B")
    assert e.value.code == "model_not_found" and repr(name) in e.value.message
