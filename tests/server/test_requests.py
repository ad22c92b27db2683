"""Request fields (issue 11.3, 11.12): unknown fields are refused naming them, TEI `prompt_name` and
`truncation_direction`, Cohere's input types, GET /v1/models/{id}, CORS, and `serve` refusing a
reranker as the embedding model. References are the library's own entry points (`Embedder.encode`,
`embed_ids` on ids built by hand from the tokenizer), never the server's output."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from qwen_embed import Embedder, Reranker
from qwen_embed.cli import main
from qwen_embed.embedder import DEFAULT_INSTRUCTION, format_query
from qwen_embed.server import ServerSettings, create_app

from .conftest import LiveServer

LONG = "The quick brown fox jumps over the lazy dog. " * 30 + "It ends here."  # > max_length 64


def post(srv: LiveServer, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=30)


@pytest.mark.parametrize(("path", "body", "field", "hint"), [
    ("/v1/embeddings", {"input": "a", "dimension": 32}, "dimension", "dimensions"),
    ("/v1/embeddings", {"input": "a", "input_typ": "query"}, "input_typ", "input_type"),
    ("/v1/embeddings", {"input": "a", "instructions": "x"}, "instructions", "instruction"),
    ("/v1/rerank", {"query": "q", "documents": ["d"], "top_k": 1}, "top_k", "top_n"),
    ("/embed", {"inputs": "a", "prompt": "query"}, "prompt", "prompt_name"),
    ("/rerank", {"query": "q", "texts": ["d"], "raw_score": True}, "raw_score", "raw_scores"),
    ("/tokenize", {"inputs": "a", "add_special_token": False}, "add_special_token", "add_special_tokens"),
])
def test_unknown_fields_are_400_naming_them_and_the_accepted_ones(live: LiveServer, path: str,
                                                                  body: dict[str, object], field: str,
                                                                  hint: str) -> None:
    r = post(live, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert f"`{field}`" in err["message"] and f"did you mean `{hint}`" in err["message"]
    assert "this route accepts:" in err["message"] and err["param"] == field and err["code"] == "unknown_field"


@pytest.mark.parametrize(("path", "body", "where"), [
    ("/v1/rerank", {"query": "q", "documents": ["a", {"text": "b", "title": "t"}]}, "`documents[1].title`"),
    ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"], "extra": 1}}, "`inputs.extra`"),
    ("/v2/embed", {"inputs": [{"content": [{"type": "text", "text": "hi"}], "bar": 1}], "input_type": "search_query",
                   "embedding_types": ["float"]}, "`inputs[0].bar`"),
])
def test_unknown_fields_inside_objects_are_400_naming_their_path(live: LiveServer, path: str,
                                                                 body: dict[str, object], where: str) -> None:
    r = post(live, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert f"unrecognized request field {where}" in err["message"] and err["code"] == "unknown_field"
    # an unknown field beside a value of the wrong type: the type error is not hidden (422 names it)
    if path == "/similarity":
        bad = post(live, path, {"inputs": {"source_sentence": 5, "sentences": ["b"], "extra": 1}})
        assert bad.status_code == 422 and "source_sentence" in bad.json()["error"]["message"]


def test_documented_ignored_field_is_accepted(live: LiveServer) -> None:
    assert post(live, "/v1/embeddings", {"input": "a", "user": "someone"}).status_code == 200


def test_cohere_input_types(live: LiveServer, small_embedder: Embedder) -> None:
    texts = ["What is the capital of China?"]
    q = post(live, "/v1/embeddings", {"input": texts, "input_type": "search_query", "encoding_format": "float"})
    d = post(live, "/v1/embeddings", {"input": texts, "input_type": "search_document", "encoding_format": "float"})
    assert np.abs(np.array(q.json()["data"][0]["embedding"]) - small_embedder.encode_queries(texts)[0]).max() <= 1e-6
    assert np.abs(np.array(d.json()["data"][0]["embedding"]) - small_embedder.encode(texts)[0]).max() <= 1e-6


def test_tei_prompt_name(live: LiveServer, small_embedder: Embedder) -> None:
    texts = ["capital of China", "gravity"]
    q = post(live, "/embed", {"inputs": texts, "prompt_name": "query"}).json()
    assert np.abs(np.array(q) - small_embedder.encode_queries(texts)).max() <= 1e-6
    d = post(live, "/embed", {"inputs": texts, "prompt_name": "document"}).json()
    assert np.abs(np.array(d) - small_embedder.encode(texts)).max() <= 1e-6
    bad = post(live, "/embed", {"inputs": texts, "prompt_name": "passage"})
    assert bad.status_code == 400 and "document, query" in bad.json()["error"]["message"]
    toks = post(live, "/tokenize", {"inputs": texts[0], "prompt_name": "query"}).json()
    assert [t["id"] for t in toks[0]] == small_embedder.tokenize(texts[:1], instruction=DEFAULT_INSTRUCTION)[0]
    both = post(live, "/embed", {"inputs": texts, "prompt_name": "query", "instruction": "x"})
    assert both.status_code == 400 and both.json()["error"]["param"] == "prompt_name"


def test_tei_prompt_name_from_the_models_sentence_transformers_config(small_embedding_path: Path,
                                                                      tmp_path: Path) -> None:
    folder = shutil.copytree(small_embedding_path, tmp_path / "emb")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "Instruct: Find\nQuery:", "classify": "Classify: "}, "default_prompt_name": None}))
    emb = Embedder.from_pretrained(folder, device="cpu", max_length=64)
    with LiveServer(create_app(ServerSettings(embedding_model="emb", warmup=False), embedder=emb)) as srv:
        got = np.array(post(srv, "/embed", {"inputs": ["a cat"], "prompt_name": "classify"}).json())
        assert np.abs(got - emb.encode(["Classify: a cat"])).max() <= 1e-6
        got = np.array(post(srv, "/embed", {"inputs": ["a cat"], "prompt_name": "query"}).json())
        assert np.abs(got - emb.encode(["a cat"], instruction="Find")).max() <= 1e-6


def test_tei_truncation_direction(live: LiveServer, small_embedder: Embedder) -> None:
    tok, n, eos = small_embedder.tokenizer, small_embedder.max_length, small_embedder.tokenizer.eos_id
    right = post(live, "/embed", {"inputs": [LONG], "truncation_direction": "Right"}).json()
    assert np.abs(np.array(right) - small_embedder.encode([LONG])).max() <= 1e-6
    # Left: the last n - 1 tokens, then the end token
    want = small_embedder.embed_ids([[*tok.encode_one(LONG)[-(n - 1):], eos]])
    for direction in ("Left", "left"):
        left = post(live, "/embed", {"inputs": [LONG], "truncation_direction": direction}).json()
        assert np.abs(np.array(left) - want).max() <= 1e-6
    # Left with a prompt: the prompt's tokens stay first, the start of the text goes
    prefix = format_query("", DEFAULT_INSTRUCTION)
    head, whole = tok.encode_one(prefix), tok.encode_one(prefix + LONG)
    assert whole[: len(head)] == head
    want = small_embedder.embed_ids([[*head, *whole[len(whole) - (n - 1 - len(head)):], eos]])
    got = post(live, "/embed", {"inputs": [LONG], "prompt_name": "query", "truncation_direction": "Left"}).json()
    assert np.abs(np.array(got) - want).max() <= 1e-6
    assert post(live, "/embed", {"inputs": [LONG], "truncation_direction": "LEFT"}).status_code == 422
    refused = post(live, "/embed", {"inputs": [LONG], "truncation_direction": "Left", "truncate": False})
    assert refused.status_code == 413
    rr = post(live, "/rerank", {"query": "q", "texts": ["d"], "truncation_direction": "Left"})
    assert rr.status_code == 400 and rr.json()["error"]["param"] == "truncation_direction"


def test_get_one_model(live: LiveServer) -> None:
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    card = client.models.retrieve("emb")
    assert card.id == "emb" and card.object == "model"
    assert httpx.get(live.url + "/v1/models/rr").json()["kind"] == "reranker"
    missing = httpx.get(live.url + "/v1/models/gpt-4")
    assert missing.status_code == 404 and "'emb', 'rr'" in missing.json()["error"]["message"]


@pytest.fixture(scope="module")
def cors(small_embedder: Embedder) -> Iterator[LiveServer]:
    settings = ServerSettings(embedding_model="emb", cors_origins=("https://app.example",), api_key="k",
                              warmup=False)
    with LiveServer(create_app(settings, embedder=small_embedder)) as srv:
        yield srv


def test_cors(cors: LiveServer, live: LiveServer) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(cors.url + "/v1/embeddings", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    r = httpx.post(cors.url + "/v1/embeddings", json={"input": "a"},
                   headers={"Origin": "https://app.example", "Authorization": "Bearer k"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-total-time" in r.headers["access-control-expose-headers"]
    other = httpx.options(cors.url + "/v1/embeddings", headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    off = httpx.post(live.url + "/v1/embeddings", json={"input": "a"}, headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in off.headers  # no --cors-origins: no CORS headers


def test_serve_refuses_a_reranker_as_the_embedding_model(small_reranker_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--embedding-model", str(small_reranker_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reranker" in err and "--reranker-model" in err


def test_reranker_fixture_is_a_reranker(small_reranker: Reranker) -> None:
    assert small_reranker.config.is_reranker  # the refusal above is about a real reranker checkpoint
