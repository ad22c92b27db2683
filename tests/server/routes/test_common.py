"""routes/common.py: JSON encoding, the TEI timing headers, the work a rerank answer weighs, and the route class
that parses and sizes large bodies in the CPU pool (`precheck`, `parse_sized`, `body_route`).

References are hand computations (the JSON standard library, milliseconds worked out by hand, the exact
numbers a body holds) and the in-process `Embedder`, never the server's own output.
"""

from __future__ import annotations

import json
import math
import re
import threading
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from qwen_embed import Embedder
from qwen_embed.server.batcher import Timing
from qwen_embed.server.errors import APIError
from qwen_embed.server.routes import common
from qwen_embed.server.routes.common import (
    MAX_DEPTH,
    OFF_LOOP_BYTES,
    json_bytes,
    parse_sized,
    precheck,
    rerank_work,
    timing_headers,
)

JSON = {"content-type": "application/json"}


def refused(body: bytes, max_numbers: int, max_inputs: int = 2048) -> APIError:
    with pytest.raises(APIError) as e:
        parse_sized(body, max_numbers, max_inputs)
    return e.value


# -- encoding and headers ---------------------------------------------------------------------------
def test_json_bytes_is_compact_json_that_reads_back_exactly() -> None:
    vec = np.random.default_rng(0).standard_normal(50).astype(np.float32)
    obj = {"data": [{"embedding": vec.tolist(), "index": 0}], "text": "naïve \"quoted\" \u2603", "n": None}
    raw = json_bytes(obj)
    assert json.loads(raw) == obj  # every float32 value read back bit for bit
    assert np.array_equal(np.array(json.loads(raw)["data"][0]["embedding"], dtype=np.float32), vec)
    assert b": " not in raw and b", " not in raw  # compact separators
    raw.decode("utf-8")  # UTF-8, the non-ASCII text as it is


def test_timing_headers_are_milliseconds_with_three_decimals() -> None:
    got = timing_headers(Timing(tokenization=0.0015, queue=0.0, inference=1.2345678))
    assert got == {"x-tokenization-time": "1.500", "x-queue-time": "0.000", "x-inference-time": "1234.568"}


@pytest.mark.parametrize(("returned", "want"), [(False, 3), (True, 3 + 5 + 0 + 2)])
def test_rerank_work_counts_scores_and_the_returned_texts(returned: bool, want: int) -> None:
    assert rerank_work([0.1, 0.2, 0.3], ["hello", "", "ok"], returned) == want


# -- precheck and parse_sized -----------------------------------------------------------------------
def test_a_body_over_the_token_cap_is_refused_before_parsing() -> None:
    body = b'{"input": [' + b",".join([b"7"] * 20_000) + b"]}"  # more commas than 1000 ids + 8256 strings
    with pytest.raises(APIError) as e:
        precheck(body, 1000, 2048)
    assert e.value.status == 413 and e.value.code == "too_many_tokens" and "1000" in e.value.message


def test_ids_are_counted_exactly_after_parsing() -> None:
    # 11 ids: few commas (precheck lets it through), the count after parsing refuses it
    err = refused(b'{"input": [[1,2,3,4,5,6],[7,8,9,10,11]]}', 10)
    assert err.status == 413 and err.code == "too_many_tokens"
    assert parse_sized(b'{"input": [[1,2,3,4,5],[6,7,8,9,10]]}', 10) == {"input": [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]}


def test_floats_count_as_numbers_and_bools_do_not() -> None:
    assert refused(b'{"input": [1.5, 2.5, 3.5]}', 2).status == 413
    assert parse_sized(b'{"input": [true, false, true], "truncate": true}', 2) == {
        "input": [True, False, True], "truncate": True}


@pytest.mark.parametrize("text", [
    "a," * 300_000,  # a CSV-like text: its commas are characters, not separators of token ids
    "1,2,3," * 100_000,  # digits and commas inside a string are still one string
])
def test_commas_inside_a_text_are_not_taken_for_token_ids(text: str) -> None:
    body = json.dumps({"input": text}).encode()
    assert parse_sized(body, 262_144) == {"input": text}


def test_commas_inside_many_texts_with_escapes_are_not_taken_for_token_ids() -> None:
    texts = ['say "a,b,c", ' * 2000, "back\\slash\\" + ",x" * 20_000, ",\"," * 10_000]
    body = json.dumps({"input": texts}).encode()
    assert parse_sized(body, 1000) == {"input": texts}
    # the same commas outside the strings are ids again, and refused
    ids = b'{"input": "a\\\\", "more": [' + b",".join([b"1"] * 3000) + b"]}"  # the string ends at \\"
    assert refused(ids, 1000).code == "too_many_tokens"


def test_nesting_up_to_the_limit_is_parsed_deeper_is_a_400() -> None:
    def nested(depth: int) -> bytes:  # the object is level 1, each list one more
        return b'{"input": ' + b"[" * (depth - 1) + b"1" + b"]" * (depth - 1) + b"}"

    assert parse_sized(nested(MAX_DEPTH), 100)["input"] == json.loads(nested(MAX_DEPTH))["input"]
    err = refused(nested(MAX_DEPTH + 1), 100)
    assert err.status == 400 and f"over the limit of {MAX_DEPTH}" in err.message
    err = refused(b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 100)  # past the parser's recursion
    assert err.status == 400 and "nested too deeply" in err.message


def test_a_small_and_a_large_body_nested_too_deeply_get_the_same_answer(api: TestClient) -> None:
    """A small body is parsed by FastAPI, a large one (64 KiB and more) by parse_sized: past the parser's
    recursion both are told the body is nested too deeply (the small one was told it 'cannot be parsed')."""
    answers = []
    for depth in (5_000, 100_000):  # 10 kB and 200 kB
        body = b'{"input": ' + b"[" * depth + b"]" * depth + b"}"
        r = api.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
        answers.append((r.status_code, r.json()["error"]["message"]))
    assert answers[0] == answers[1] == (400, "the body is nested too deeply; the deepest accepted body has "
                                             f"{MAX_DEPTH // 2} levels.")


def test_a_body_that_is_not_json_is_left_to_fastapi() -> None:
    assert parse_sized(b'{"input": "a"', 100) is None
    assert parse_sized(b"input=a", 100) is None


# -- the route class, through the app ---------------------------------------------------------------
def test_a_large_text_of_commas_is_embedded_not_refused(api: TestClient, small_embedder: Embedder) -> None:
    text = "a," * 300_000  # 600 kB: parsed off the event loop; more commas than --max-request-tokens
    r = api.post("/v1/embeddings", json={"input": text, "encoding_format": "float"})
    assert r.status_code == 200, r.text[:300]
    # its first 63 tokens (the end token then comes last) are those of any prefix that holds more
    want = small_embedder.encode([text[:1000]])[0]  # (encoding all 600 kB takes the library a second)
    assert len(small_embedder.tokenizer.encode_one(text[:1000])) > small_embedder.max_length
    assert np.abs(np.array(r.json()["data"][0]["embedding"]) - want).max() <= 1e-6
    assert r.json()["usage"]["total_tokens"] == small_embedder.max_length


def test_large_bodies_are_parsed_once_in_the_cpu_pool_small_ones_not(api: TestClient, small_embedder: Embedder,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = common.parse_sized

    def spy(body: bytes, max_numbers: int, max_inputs: int = 2048) -> Any:
        calls.append(threading.current_thread().name)
        return original(body, max_numbers, max_inputs)

    monkeypatch.setattr(common, "parse_sized", spy)
    ids = [[5 + i % 200 for i in range(20_000)]]  # > OFF_LOOP_BYTES of JSON: one input, cut to 64 tokens
    assert len(json.dumps({"input": ids})) >= OFF_LOOP_BYTES
    r = api.post("/v1/embeddings", json={"input": ids, "encoding_format": "float"})
    assert r.status_code == 200, r.text
    assert len(calls) == 1 and calls[0].startswith("tokenize")  # the CPU pool's threads
    want = small_embedder.embed_ids([[*ids[0][: small_embedder.max_length - 1], small_embedder.tokenizer.eos_id]])
    assert np.abs(np.array(r.json()["data"][0]["embedding"]) - want[0]).max() <= 1e-6
    calls.clear()
    assert api.post("/v1/embeddings", json={"input": ids[0][:100]}).status_code == 200
    assert calls == []  # small: FastAPI parses it as usual


@pytest.mark.parametrize(("head", "tail"), [(b'{"input": "', b'"'), (b'{"input": "\xff', b'"}')],
                         ids=["unterminated", "not-utf8"])
def test_a_large_malformed_body_gets_the_same_answer_as_a_small_one(api: TestClient, head: bytes,
                                                                    tail: bytes) -> None:
    small = api.post("/v1/embeddings", content=head + b"a" + tail, headers=JSON)
    large = api.post("/v1/embeddings", content=head + b"a" * OFF_LOOP_BYTES + tail, headers=JSON)
    assert small.status_code == large.status_code == 400
    assert small.json() == large.json()


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/embeddings", {"input": "hello"}),
    ("/v2/embed", {"texts": ["hello"]}),
    ("/v1/rerank", {"query": "q", "documents": ["d"]}),
    ("/v2/rerank", {"query": "q", "documents": ["d"]}),
    ("/embed", {"inputs": "hello"}),
    ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"]}}),
    ("/rerank", {"query": "q", "texts": ["d"]}),
    ("/tokenize", {"inputs": "hello"}),
])
def test_every_model_route_sends_the_stage_times(api: TestClient, path: str, body: dict[str, object]) -> None:
    r = api.post(path, json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    for h in ("x-tokenization-time", "x-queue-time", "x-inference-time"):
        assert re.fullmatch(r"\d+\.\d{3}", r.headers[h]), (h, r.headers[h])
    assert float(r.headers["x-tokenization-time"]) > 0
    if path != "/tokenize":  # the model ran
        assert float(r.headers["x-inference-time"]) > 0
    total = float(r.headers["x-total-time"])
    assert math.isfinite(total) and total >= float(r.headers["x-inference-time"])
