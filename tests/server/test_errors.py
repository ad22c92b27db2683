"""Table of bad requests: each gets its documented status and an OpenAI-shaped error naming the problem,
and the server keeps serving afterwards. Also the error body helper itself."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from qwen_embed import Embedder, Reranker
from qwen_embed.server import ServerSettings, create_app
from qwen_embed.server.errors import error_body

from .conftest import LiveServer

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {"content-type": "application/json"}
LONG = "The quick brown fox jumps over the lazy dog. " * 40  # > max_length 64 / 256 tokens


@pytest.fixture(scope="module")
def guarded(small_embedder: Embedder, small_reranker: Reranker) -> Iterator[LiveServer]:
    settings = ServerSettings(embedding_model="emb", reranker_model="rr", api_key=KEY, max_payload_bytes=20_000,
                              max_inputs=100)
    with LiveServer(create_app(settings, embedder=small_embedder, reranker=small_reranker)) as srv:
        yield srv


def chunks(n: int) -> Iterator[bytes]:
    yield b'{"input": "'
    for _ in range(n):
        yield b"a" * 1000
    yield b'"}'


E, R = "/v1/embeddings", "/v1/rerank"
# (id, method, path, request kwargs, status, words the message must hold)
CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("input-int", "POST", E, {"json": {"input": 5}}, 422, "`input` must be a string, a list of strings"),
    ("input-mixed-list", "POST", E, {"json": {"input": ["a", 1]}}, 422, "`input` must be"),
    ("input-missing", "POST", E, {"json": {"model": "emb"}}, 422, "`input`: Field required"),
    ("input-empty-string", "POST", E, {"json": {"input": ""}}, 400, "input[0] is an empty string"),
    ("input-empty-list", "POST", E, {"json": {"input": []}}, 400, "input is empty"),
    ("input-empty-item", "POST", E, {"json": {"input": ["ok", ""]}}, 400, "input[1] is an empty string"),
    ("too-many-inputs", "POST", E, {"json": {"input": ["a"] * 101}}, 413, "limit of 100 per request"),
    ("too-long-no-truncate", "POST", E, {"json": {"input": LONG, "truncate": False}}, 413, "max length 64"),
    ("token-id-negative", "POST", E, {"json": {"input": [[5, -1]]}}, 400, "token id -1, outside"),
    ("token-id-too-big", "POST", E, {"json": {"input": [10**9]}}, 400, "outside this model's vocabulary"),
    ("token-list-empty", "POST", E, {"json": {"input": [[1], []]}}, 400, "input[1] is an empty token list"),
    ("token-id-float", "POST", E, {"json": {"input": [1.5, 2]}}, 422, "(input[0] is not)"),
    ("token-id-bool", "POST", E, {"json": {"input": [True]}}, 422, "`input` must be"),
    ("unknown-model", "POST", E, {"json": {"input": "a", "model": "text-embedding-3-small"}}, 404, "not served"),
    ("dimensions-too-small", "POST", E, {"json": {"input": "a", "dimensions": 8}}, 400, "dimensions=8 is out of range"),
    ("dimensions-too-big", "POST", E, {"json": {"input": "a", "dimensions": 65}}, 400, "32..64"),
    ("dimensions-string", "POST", E, {"json": {"input": "a", "dimensions": "32"}}, 422, "`dimensions`"),
    ("encoding-format", "POST", E, {"json": {"input": "a", "encoding_format": "int8"}}, 422, "`encoding_format`"),
    ("input-type", "POST", E, {"json": {"input": "a", "input_type": "passage"}}, 422, "`input_type`"),
    ("instruction-document", "POST", E, {"json": {"input": "a", "instruction": "x", "input_type": "document"}},
     400, "instruction applies to queries only"),
    ("instruction-token-ids", "POST", E, {"json": {"input": [1, 2], "input_type": "query"}}, 400, "need text input"),
    ("lone-surrogate", "POST", E, {"content": b'{"input": ["ok", "bad \\ud800"]}', "headers": JSON}, 400,
     "input[1] holds a lone surrogate"),
    ("malformed-json", "POST", E, {"content": b'{"input": "a"', "headers": JSON},
     400, "not valid JSON"),
    ("non-utf8", "POST", E, {"content": b'{"input": "\xff\xfe"}', "headers": JSON},
     400, "UTF-8"),
    ("body-not-object", "POST", E, {"json": ["a", "b"]}, 422, "JSON object"),
    ("not-json-content-type", "POST", E, {"content": b"input=a"}, 400, "Content-Type: application/json"),
    ("payload-too-large", "POST", E, {"json": {"input": ["a" * 1000] * 30}}, 413, "20000-byte limit"),
    ("payload-too-large-chunked", "POST", E, {"content": chunks(30), "headers": JSON},
     413, "20000-byte limit"),
    ("missing-auth", "POST", E, {"json": {"input": "a"}, "headers": {}}, 401, "missing API key"),
    ("wrong-key", "POST", E, {"json": {"input": "a"}, "headers": {"Authorization": "Bearer nope"}}, 401,
     "invalid API key"),
    ("wrong-scheme", "POST", E, {"json": {"input": "a"}, "headers": {"Authorization": f"Basic {KEY}"}}, 401,
     "invalid API key"),
    ("unknown-route", "POST", "/v1/completions", {"json": {}}, 404, "no route POST /v1/completions"),
    ("wrong-method", "GET", E, {}, 405, "GET is not allowed"),
    ("rerank-no-documents", "POST", R, {"json": {"query": "q", "documents": []}}, 400, "documents is empty"),
    ("rerank-empty-query", "POST", R, {"json": {"query": "", "documents": ["d"]}}, 400, "query is an empty string"),
    ("rerank-empty-document", "POST", R, {"json": {"query": "q", "documents": ["d", ""]}}, 400, "documents[1]"),
    ("rerank-lone-surrogate", "POST", R, {"content": b'{"query": "q", "documents": ["\\udfff"]}', "headers": JSON},
     400, "documents[0] holds a lone surrogate"),
    ("rerank-top-n-zero", "POST", R, {"json": {"query": "q", "documents": ["d"], "top_n": 0}}, 400, "top_n=0"),
    ("rerank-bad-document", "POST", R, {"json": {"query": "q", "documents": [{"txt": "d"}]}}, 422,
     "(documents[0] is not)"),
    ("rerank-max-tokens-zero", "POST", R, {"json": {"query": "q", "documents": ["d"], "max_tokens_per_doc": 0}},
     400, "max_tokens_per_doc=0"),
    ("rerank-unknown-model", "POST", R, {"json": {"query": "q", "documents": ["d"], "model": "emb"}}, 404,
     "not served"),
    ("rerank-too-long-no-truncate", "POST", R, {"json": {"query": "q", "documents": [LONG], "truncate": False}},
     413, "documents[0] has"),
    ("rerank-query-too-long", "POST", R, {"json": {"query": LONG, "documents": ["d"]}}, 400, "shorten the query"),
    ("tei-embed-missing-inputs", "POST", "/embed", {"json": {"input": "a"}}, 422, "`inputs`: Field required"),
    ("tei-rerank-texts-string", "POST", "/rerank", {"json": {"query": "q", "texts": "d"}}, 422, "`texts`"),
    ("tokenize-empty", "POST", "/tokenize", {"json": {"inputs": []}}, 400, "inputs is empty"),
]


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 25
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_request(guarded: LiveServer, method: str, path: str, kwargs: dict[str, Any], status: int,
                     words: str) -> None:
    kwargs = dict(kwargs)
    extra = kwargs.pop("headers", None)
    headers = {} if extra == {} else dict(AUTH)  # an explicit {} means: no Authorization header
    headers.update(extra or {})
    r = httpx.request(method, guarded.url + path, headers=headers, timeout=30, **kwargs)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert words in err["message"], err["message"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"]
    if status == 401:
        assert r.headers["www-authenticate"] == "Bearer"
    # the server keeps serving
    ok = httpx.post(guarded.url + E, json={"input": "still fine"}, headers=AUTH, timeout=30)
    assert ok.status_code == 200


def test_no_500_was_counted(guarded: LiveServer) -> None:
    # a 413 and a 422 of its own: under xdist the table's cases may have run on another worker's server
    for body, status in (({"input": ["a"] * 101}, 413), ({"input": 5}, 422)):
        assert httpx.post(guarded.url + E, json=body, headers=AUTH, timeout=30).status_code == status
    text = httpx.get(guarded.url + "/metrics", headers=AUTH, timeout=30).text  # behind the key (issue 23.11)
    assert 'status="500"' not in text
    assert 'status="413"' in text and 'status="422"' in text


def test_error_body_shape() -> None:
    assert error_body(429, "slow down", code="queue_full") == {
        "error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "queue_full"}}
    assert error_body(500, "bug")["error"]["type"] == "server_error"
