"""routes/tei.py: text-embeddings-inference's POST /embed, /similarity, /rerank, /tokenize and GET /info
(https://huggingface.github.io/text-embeddings-inference/): shapes, token-id inputs, normalisation,
truncation, ordering and offsets.

References are the in-process `Embedder` / `Reranker` (`encode`, `embed_ids` and `score_ids` on ids built
by hand, the tokenizer's own encoding) and hand computations (cosine of a vector with itself, a logit's
order). tests/server/test_app.py, test_requests.py and test_cohere_embed.py cover `prompt_name`,
`truncation_direction` on texts, raw scores' values and /similarity's values; this file aims at the rest.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from qwen_embed import DEFAULT_INSTRUCTION, Embedder, Reranker, __version__
from qwen_embed.embedder import format_query

from .conftest import EMB, RR

TEXTS = ["The capital of China is Beijing.", "Gravity attracts two bodies towards each other.", "yes"]
LONG = "The quick brown fox jumps over the lazy dog. " * 40  # past 64 and 256 tokens


def post(api: TestClient, path: str, body: dict[str, object]) -> Any:
    r = api.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


# -- /embed -----------------------------------------------------------------------------------------
def test_embed_one_string_is_a_list_of_one_vector(api: TestClient, small_embedder: Embedder) -> None:
    got = post(api, "/embed", {"inputs": TEXTS[0]})
    assert len(got) == 1 and len(got[0]) == small_embedder.hidden_size
    assert np.abs(np.array(got[0]) - small_embedder.encode(TEXTS[0])).max() <= 1e-6


def test_embed_token_ids_equal_the_texts(api: TestClient, small_embedder: Embedder) -> None:
    ids = small_embedder.tokenize(TEXTS)
    want = small_embedder.encode(TEXTS)
    nested = post(api, "/embed", {"inputs": [ids[0], ids[1][:-1], ids[2]]})  # with and without the end token
    assert np.abs(np.array(nested) - want).max() <= 1e-6
    flat = post(api, "/embed", {"inputs": ids[1][:-1]})  # one flat list of ids is one input
    assert len(flat) == 1 and np.abs(np.array(flat[0]) - want[1]).max() <= 1e-6


def test_embed_dimensions_without_normalisation_is_the_slice(api: TestClient, small_embedder: Embedder) -> None:
    got = np.array(post(api, "/embed", {"inputs": TEXTS, "dimensions": 32, "normalize": False}))
    raw = small_embedder.encode(TEXTS, normalize=False)
    assert got.shape == (3, 32) and np.abs(got - raw[:, :32]).max() <= 1e-5
    unit = np.array(post(api, "/embed", {"inputs": TEXTS, "dimensions": 32}))
    assert np.abs(unit - small_embedder.encode(TEXTS, dim=32)).max() <= 1e-6


def test_embed_instruction_is_the_query_template(api: TestClient, small_embedder: Embedder) -> None:
    got = post(api, "/embed", {"inputs": TEXTS[:2], "instruction": "Find the city"})
    assert np.abs(np.array(got) - small_embedder.encode(TEXTS[:2], instruction="Find the city")).max() <= 1e-6


def test_embed_token_ids_cut_on_either_side(api: TestClient, small_embedder: Embedder) -> None:
    n, eos = small_embedder.max_length, small_embedder.tokenizer.eos_id
    ids = small_embedder.tokenizer.encode_one(LONG)
    assert len(ids) > n
    for direction, kept in (("Right", ids[: n - 1]), ("left", ids[-(n - 1):])):
        got = post(api, "/embed", {"inputs": [ids], "truncation_direction": direction})
        assert np.abs(np.array(got) - small_embedder.embed_ids([[*kept, eos]])).max() <= 1e-6, direction
    r = api.post("/embed", json={"inputs": [ids], "truncate": False})
    err = r.json()["error"]
    assert r.status_code == 413 and err["code"] == "input_too_long" and f"inputs[0] has {len(ids) + 1} tokens" in \
        err["message"]


# -- /similarity ------------------------------------------------------------------------------------
def test_similarity_is_one_per_sentence_in_their_order(api: TestClient, small_embedder: Embedder) -> None:
    src = TEXTS[0]
    sentences = [TEXTS[2], src, TEXTS[1], src]
    got = post(api, "/similarity", {"inputs": {"source_sentence": src, "sentences": sentences}})
    vecs = small_embedder.encode([src, *sentences]).astype(np.float64)
    assert len(got) == 4 and np.abs(np.array(got) - vecs[1:] @ vecs[0]).max() <= 1e-6
    assert got[1] == got[3] and abs(got[1] - 1.0) <= 1e-6  # a sentence against itself


def test_similarity_without_sentences_is_a_400(api: TestClient) -> None:
    r = api.post("/similarity", json={"inputs": {"source_sentence": "a", "sentences": []}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "sentences", r.text


# -- /rerank ----------------------------------------------------------------------------------------
def test_rerank_scores_are_probabilities_best_first(api: TestClient, small_reranker: Reranker) -> None:
    got = post(api, "/rerank", {"query": "capital", "texts": TEXTS, "model": RR})
    probs = small_reranker.score("capital", TEXTS)
    assert [x["index"] for x in got] == sorted(range(3), key=lambda i: (-probs[i], i))
    assert np.allclose([x["score"] for x in got], probs[[x["index"] for x in got]], atol=1e-6, rtol=0)
    assert all(set(x) == {"index", "score"} for x in got)  # no text unless return_text


def test_rerank_ties_keep_the_input_order(api: TestClient, small_reranker: Reranker) -> None:
    texts = [TEXTS[1], TEXTS[0], TEXTS[1], TEXTS[0]]
    probs = small_reranker.score("capital", texts)
    assert probs[0] == probs[2] and probs[1] == probs[3] and probs[0] != probs[1]
    want = [0, 2, 1, 3] if probs[0] > probs[1] else [1, 3, 0, 2]
    for raw in (False, True):
        got = post(api, "/rerank", {"query": "capital", "texts": texts, "raw_scores": raw, "return_text": True})
        assert [x["index"] for x in got] == want and [x["text"] for x in got] == [texts[i] for i in want]


def test_rerank_instruction_and_a_long_text(api: TestClient, small_reranker: Reranker) -> None:
    texts = [LONG, TEXTS[0]]
    got = post(api, "/rerank", {"query": "capital", "texts": texts, "instruction": "Judge the city"})
    want = small_reranker.score_ids(small_reranker.build_input_ids("capital", texts, instruction="Judge the city"))
    assert np.allclose([x["score"] for x in got], want[[x["index"] for x in got]], atol=1e-6, rtol=0)
    r = api.post("/rerank", json={"query": "capital", "texts": texts, "truncate": False})
    assert r.status_code == 413 and r.json()["error"]["param"] == "texts" and "texts[0]" in r.text


def test_raw_scores_of_saturated_probabilities_stay_finite_and_ordered(api: TestClient,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A float32 probability of exactly 1 or 0 (a logit past ~17 or below ~-104) has no finite logit; the
    answer must still be JSON numbers, in the probabilities' order."""
    svc = api.app.state.qe.reranker  # type: ignore[attr-defined]

    async def saturated(admission: object, seqs: list[list[int]], timing: object) -> np.ndarray:
        return np.array([0.0, 1.0, 0.5, 1e-30], dtype=np.float32)[: len(seqs)]

    monkeypatch.setattr(svc, "score", saturated)
    got = post(api, "/rerank", {"query": "q", "texts": ["a", "b", "c", "d"], "raw_scores": True})
    assert [x["index"] for x in got] == [1, 2, 3, 0]
    scores = [x["score"] for x in got]
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores)
    assert scores[0] > 15 and scores[1] == 0.0 and scores[2] > scores[3]
    assert abs(scores[2] - math.log(1e-30)) <= 1e-3  # the logit log(p / (1 - p)) of a tiny p is log(p)


# -- /tokenize --------------------------------------------------------------------------------------
def test_tokenize_offsets_point_into_the_text(api: TestClient, small_embedder: Embedder) -> None:
    text = "Gravity attracts two bodies, towards each other."
    row = post(api, "/tokenize", {"inputs": [text]})[0]
    assert [t["id"] for t in row] == small_embedder.tokenize([text])[0]
    *body, end = row
    assert end == {"id": small_embedder.tokenizer.eos_id, "text": small_embedder.tokenizer.decode([end["id"]]),
                   "special": True, "start": None, "stop": None}
    assert all(not t["special"] and text[t["start"] : t["stop"]] == t["text"] for t in body)
    assert "".join(t["text"] for t in body) == text and body[-1]["stop"] == len(text)


def test_tokenize_with_a_prompt_counts_offsets_in_prompt_and_text(api: TestClient, small_embedder: Embedder) -> None:
    text = "capital of China"
    prompt = format_query("", DEFAULT_INSTRUCTION)
    row = post(api, "/tokenize", {"inputs": text, "prompt_name": "query", "add_special_tokens": False})[0]
    assert [t["id"] for t in row] == small_embedder.tokenizer.encode_one(prompt + text)
    assert all((prompt + text)[t["start"] : t["stop"]] == t["text"] for t in row)
    assert row[-1]["stop"] == len(prompt) + len(text)


def test_tokenize_truncates_only_with_special_tokens(api: TestClient, small_embedder: Embedder) -> None:
    rows = post(api, "/tokenize", {"inputs": [LONG, "yes"]})
    assert [[t["id"] for t in r] for r in rows] == small_embedder.tokenize([LONG, "yes"])
    assert len(rows[0]) == small_embedder.max_length
    plain = post(api, "/tokenize", {"inputs": LONG, "add_special_tokens": False})[0]
    assert [t["id"] for t in plain] == small_embedder.tokenizer.encode_one(LONG)
    assert len(plain) > small_embedder.max_length and not any(t["special"] for t in plain)


def test_tokenize_refuses_an_empty_string_naming_it(api: TestClient) -> None:
    r = api.post("/tokenize", json={"inputs": ["ok", ""]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "inputs" and "inputs[1]" in r.text


# -- /info ------------------------------------------------------------------------------------------
def test_info_describes_each_served_model(api: TestClient, small_embedder: Embedder,
                                          small_reranker: Reranker) -> None:
    info = api.get("/info").json()
    settings = api.app.state.qe.settings  # type: ignore[attr-defined]
    emb, rr = info["models"]
    assert {k: info[k] for k in emb} == emb  # the main model's facts are also at the top level (TEI's shape)
    assert (emb["model_id"], emb["max_input_length"], emb["hidden_size"]) == (EMB, small_embedder.max_length,
                                                                             small_embedder.hidden_size)
    assert emb["model_type"] == {"embedding": {"pooling": "last_token"}} and emb["model_dtype"] == "float32"
    assert (rr["model_id"], rr["max_input_length"], rr["hidden_size"]) == (RR, small_reranker.max_length,
                                                                          small_reranker.config.hidden_size)
    assert list(rr["model_type"]) == ["reranker"]
    assert (info["max_client_batch_size"], info["max_concurrent_requests"], info["max_batch_requests"],
            info["max_request_tokens"], info["version"]) == (settings.max_inputs, settings.max_queue,
                                                             settings.max_batch_requests,
                                                             settings.max_request_tokens, __version__)
