"""The exception handlers (server/handlers.py) on a bare app: `install` on a FastAPI app whose routes take the
server's real request bodies (schemas.py) or raise one error each, no model and no middleware, driven in
process (starlette's TestClient). Against the module docstring: every error leaves in the OpenAI shape; library
errors by the one table, their message as it is, `param` spelled as the route spells it; validation errors
as one line (unknown fields 400 naming them, a close match and the accepted ones; malformed JSON 400; wrong
types 422 naming the field); Starlette's errors in our words; a client gone mid-body 499, never logged; any
other exception 500, logged, its text kept out of the answer. tests/server/test_errors.py sends a table of
bad requests to the whole server; this file pins each branch of the handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from qwen_embed.errors import InputError, ModelOutputError, WeightsError
from qwen_embed.server import handlers
from qwen_embed.server.batcher import QueueFull, ShuttingDown
from qwen_embed.server.errors import APIError
from qwen_embed.server.model_process import ModelProcessDied
from qwen_embed.server.schemas import (
    CohereEmbedRequest,
    EmbeddingRequest,
    RerankRequest,
    SimilarityRequest,
    TokenizeRequest,
)

UNION = "a string, a list of strings, a list of token ids, or a list of token-id lists"
RAISES: dict[str, BaseException] = {
    "api": APIError(429, "slow down", param="input", code="too_fast", headers={"Retry-After": "3"}),
    "input-dim": InputError("dim=8 is out of range: use 32..64.", param="dim"),
    "queue-full": QueueFull("the emb queue is full (9 requests queued or running, limit 9)", retry_after=7),
    "shutting-down": ShuttingDown("the server is shutting down; retry on another replica."),
    "died": ModelProcessDied("the model process of emb is restarting; retry shortly."),
    "nan": ModelOutputError("NaN in the output of batch 1"),
    "weights": WeightsError("a library error outside the table's named classes"),
    "http-413": StarletteHTTPException(413, "over the limit", headers={"X-Limit": "10"}),
    "gone": ClientDisconnect(),
    "bug": RuntimeError("secret sk-123 in a bug's text"),
}


def make_app() -> FastAPI:
    app = FastAPI()
    handlers.install(app)

    @app.post("/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, bool]:
        return {"ok": True}

    @app.post("/rerank")
    async def rerank(body: RerankRequest) -> dict[str, bool]:
        return {"ok": True}

    @app.post("/similarity")
    async def similarity(body: SimilarityRequest) -> dict[str, bool]:
        return {"ok": True}

    @app.post("/cohere")
    async def cohere(body: CohereEmbedRequest) -> dict[str, bool]:
        return {"ok": True}

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict[str, bool]:
        return {"ok": True}

    @app.get("/raise/{what}")
    async def raise_(what: str) -> None:
        raise RAISES[what]

    return app


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(make_app(), raise_server_exceptions=False) as c:
        yield c


def error_of(r: Any) -> dict[str, Any]:
    """The OpenAI error object of a response, checked to have exactly the four documented keys."""
    body = r.json()
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}, body
    err: dict[str, Any] = body["error"]
    assert "\n" not in err["message"]
    return err


# -- errors raised by routes and by the library ------------------------------------------------------
def test_an_api_error_leaves_with_its_status_headers_param_and_code(client: TestClient) -> None:
    r = client.get("/raise/api")
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert error_of(r) == {"message": "slow down", "type": "rate_limit_error", "param": "input", "code": "too_fast"}


@pytest.mark.parametrize(("what", "status", "kind", "code", "headers"), [
    ("input-dim", 400, "invalid_request_error", None, {}),
    ("queue-full", 429, "rate_limit_error", "queue_full", {"retry-after": "7"}),
    ("shutting-down", 503, "service_unavailable", "shutting_down", {"connection": "close"}),
    ("died", 503, "service_unavailable", "model_unavailable", {"retry-after": "1"}),
    ("nan", 500, "server_error", "model_output_not_finite", {}),
    ("weights", 400, "invalid_request_error", None, {}),  # any library error: its base class's row
])
def test_library_errors_take_the_status_of_the_table_and_keep_their_message(
        client: TestClient, what: str, status: int, kind: str, code: str | None, headers: dict[str, str]) -> None:
    r = client.get(f"/raise/{what}")
    err = error_of(r)
    assert r.status_code == status and (err["type"], err["code"]) == (kind, code)
    assert err["message"] == str(RAISES[what])  # sent as it is
    for name, value in headers.items():
        assert r.headers[name] == value


def test_a_core_parameter_is_named_as_the_route_names_it_in_param_only(client: TestClient) -> None:
    err = error_of(client.get("/raise/input-dim"))
    assert err["param"] == "dimensions"  # the core's `dim` is the request's `dimensions`
    assert err["message"] == "dim=8 is out of range: use 32..64."  # the message is never edited


# -- request validation -------------------------------------------------------------------------------
def test_malformed_json_is_400_saying_where(client: TestClient) -> None:
    r = client.post("/embeddings", content=b'{"input": "a"', headers={"content-type": "application/json"})
    err = error_of(r)
    assert r.status_code == 400 and err["message"].startswith("the body is not valid JSON (")
    assert err["message"].endswith(").") and "parse error" not in err["message"]  # the parser's own reason


@pytest.mark.parametrize(("ctype", "shown"), [
    (None, "''"),
    ("text/plain", "'text/plain'"),
    ("application/x-www-form-urlencoded; " + "x" * 100, "'application/x-www-form-urlencoded; " + "x" * 25 + "'"),
])
def test_a_body_not_sent_as_json_is_400_naming_its_content_type(client: TestClient, ctype: str | None,
                                                                  shown: str) -> None:
    headers = {} if ctype is None else {"content-type": ctype}
    r = client.post("/embeddings", content=b'{"input": "a", "dimensions": "x"}', headers=headers)
    err = error_of(r)
    assert r.status_code == 400
    assert err["message"] == f"send the body as JSON with `Content-Type: application/json` (got {shown})."


@pytest.mark.parametrize("body", [b'["a", "b"]', b'"a"', b"5", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_422(client: TestClient, body: bytes) -> None:
    r = client.post("/embeddings", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and error_of(r)["message"] == "the body must be a JSON object."


def test_an_unknown_field_is_400_naming_it_a_close_match_and_the_accepted_fields(client: TestClient) -> None:
    r = client.post("/embeddings", json={"input": "a", "dimension": 32})
    err = error_of(r)
    accepted = ", ".join(EmbeddingRequest.model_fields)
    assert r.status_code == 400 and (err["param"], err["code"]) == ("dimension", "unknown_field")
    assert err["message"] == ("unrecognized request field `dimension` (did you mean `dimensions` for `dimension`?); "
                              f"this route accepts: {accepted}.")


def test_several_unknown_fields_are_named_up_to_five_without_a_hint_when_none_is_close(client: TestClient) -> None:
    r = client.post("/embeddings", json={"input": "a", **{name: 1 for name in "qrstuvw"}})
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == "q"
    assert err["message"].startswith("unrecognized request fields `q`, `r`, `s`, `t`, `u`; this route accepts: ")


def test_an_unknown_field_beside_a_wrong_value_is_422_naming_both(client: TestClient) -> None:
    r = client.post("/embeddings", json={"inptu": "a"})
    err = error_of(r)
    assert r.status_code == 422 and err["param"] == "input" and err["code"] is None
    assert err["message"].startswith("`input`: Field required; unrecognized request field `inptu` (did you mean "
                                     "`input` for `inptu`?); this route accepts: input, ")


@pytest.mark.parametrize(("body", "message"), [
    ({"input": 5}, f"`input` must be {UNION}"),
    ({"input": ["a", 1]}, f"`input` must be {UNION} (input[1] is not)"),
    ({"input": [[1, 2], [3, "x"]]}, f"`input` must be {UNION} (input[1] is not)"),
    ({"input": "a", "dimensions": "32"}, "`dimensions`: Input should be a valid integer"),
    ({"input": "a", "truncate": 1}, "`truncate`: Input should be a valid boolean"),
    ({"input": "a", "encoding_format": "int8"}, "`encoding_format`: Input should be 'float' or 'base64'"),
    # a union of literals: every accepted value, in one list
    ({"input": "a", "input_type": "passage"},
     "`input_type`: Input should be 'query' or 'document' or 'search_query' or 'search_document'"),
])
def test_a_wrong_type_is_422_naming_the_field_and_what_it_takes(client: TestClient, body: dict[str, Any],
                                                                message: str) -> None:
    r = client.post("/embeddings", json=body)
    err = error_of(r)
    assert r.status_code == 422 and err["message"] == message and err["param"] == next(iter(set(body) - {"input"}),
                                                                                       "input")


def test_four_wrong_fields_name_three_and_count_the_rest(client: TestClient) -> None:
    r = client.post("/embeddings", json={"input": 1, "model": 1, "dimensions": "x", "user": 2, "truncate": "x"})
    err = error_of(r)
    assert r.status_code == 422 and err["param"] == "input"
    assert err["message"] == (f"`input` must be {UNION}; `model`: Input should be a valid string; "
                              "`dimensions`: Input should be a valid integer (and 2 more fields)")


def test_a_missing_union_field_says_it_is_required_not_what_it_takes(client: TestClient) -> None:
    r = client.post("/embeddings", json={"model": "emb"})
    assert r.status_code == 422 and error_of(r)["message"] == "`input`: Field required"


def test_a_rerank_document_of_the_wrong_type_names_the_documents_union(client: TestClient) -> None:
    """A document that is neither a string nor an object: one of the two errors pydantic gives is the object
    member's `model_attributes_type`, which was taken for a body that is not an object ("the body must be a
    JSON object." for a body that was one)."""
    for documents in ([5], ["ok", ["nested"]]):
        r = client.post("/rerank", json={"query": "q", "documents": documents})
        err = error_of(r)
        at = len(documents) - 1
        assert r.status_code == 422 and err["param"] == "documents", err
        assert err["message"] == f'`documents` must be a list of strings or {{"text": ...}} objects ' \
                                 f"(documents[{at}] is not)"


def test_an_object_field_given_a_string_names_that_field(client: TestClient) -> None:
    """TEI /similarity's `inputs` is an object, not the input union: a string there is a wrong `inputs`, not a
    body that is not an object, and the union's help (texts, token ids) does not apply to it."""
    r = client.post("/similarity", json={"inputs": "What is Deep Learning?"})
    err = error_of(r)
    assert r.status_code == 422 and err["param"] == "inputs", err
    assert err["message"].startswith("`inputs`: Input should be a valid dictionary"), err
    r = client.post("/similarity", json={"inputs": {"source_sentence": 1, "sentences": ["a"]}})
    assert error_of(r)["message"] == "`inputs.source_sentence`: Input should be a valid string"
    r = client.post("/similarity", json={"inputs": {"source_sentence": "s", "sentences": ["a"]}, "parameters": "x"})
    err = error_of(r)
    assert r.status_code == 422 and err["param"] == "parameters" and "JSON object" not in err["message"], err


def test_the_union_help_is_given_only_for_fields_of_that_union(client: TestClient) -> None:
    """Cohere's `inputs` is a list of content objects and /tokenize's a text or a list of texts: neither takes
    token ids, so neither may be told it does."""
    r = client.post("/cohere", json={"inputs": ["x"]})
    err = error_of(r)
    assert r.status_code == 422 and err["param"] == "inputs", err
    assert "token ids" not in err["message"] and "JSON object" not in err["message"], err
    assert "dictionary" in err["message"] and "inputs" in err["message"]
    r = client.post("/tokenize", json={"inputs": 5})
    err = error_of(r)
    assert r.status_code == 422 and err["param"] == "inputs" and "token ids" not in err["message"], err
    assert err["message"] == "`inputs` must be a string or a list of strings"
    r = client.post("/tokenize", json={"inputs": ["a", 2]})
    assert error_of(r)["message"] == "`inputs` must be a string or a list of strings (inputs[1] is not)"


# -- Starlette's own errors ------------------------------------------------------------------------------
def test_an_unknown_route_is_404_pointing_at_the_docs(client: TestClient) -> None:
    r = client.post("/v1/completions", json={})
    err = error_of(r)
    assert r.status_code == 404 and err["type"] == "not_found_error"
    assert err["message"] == "no route POST /v1/completions; see GET /docs for the routes."


def test_a_wrong_method_is_405_naming_it_and_keeps_the_allow_header(client: TestClient) -> None:
    r = client.get("/embeddings")
    assert r.status_code == 405 and error_of(r)["message"] == "GET is not allowed on /embeddings."
    assert r.headers["allow"] == "POST"


def test_a_body_that_is_not_utf8_is_400_asking_for_utf8_json(client: TestClient) -> None:
    r = client.post("/embeddings", content=b'{"input": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and error_of(r)["message"] == "the body cannot be parsed: send UTF-8 JSON."


def test_another_http_error_keeps_its_detail_and_headers(client: TestClient) -> None:
    r = client.get("/raise/http-413")
    err = error_of(r)
    assert r.status_code == 413 and err == {"message": "over the limit", "type": "request_too_large", "param": None,
                                            "code": None}
    assert r.headers["x-limit"] == "10"


# -- clients that leave, and bugs ------------------------------------------------------------------------------
def test_a_client_gone_mid_body_is_499_and_never_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="qwen_embed.server"):
        r = client.get("/raise/gone")
    assert r.status_code == 499 and r.content == b""
    assert not [rec for rec in caplog.records if rec.name == "qwen_embed.server"]


def test_any_other_exception_is_a_logged_500_that_keeps_its_text_out_of_the_answer(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="qwen_embed.server"):
        r = client.get("/raise/bug")
    err = error_of(r)
    assert r.status_code == 500 and err["type"] == "server_error"
    assert err["message"] == "internal error (RuntimeError); this is a bug in qwen-embed."
    assert "sk-123" not in r.text
    logged = [rec for rec in caplog.records if rec.name == "qwen_embed.server"]
    assert len(logged) == 1 and logged[0].getMessage() == "internal error on GET /raise/bug"
    assert logged[0].exc_info is not None and logged[0].exc_info[1] is RAISES["bug"]  # with its traceback
