"""Request and response bodies (server/schemas.py), checked against the contract they document.

References: the module docstring (strict types: a string is never a number, `true` never 1; unknown fields
refused, also in nested objects; OpenAI's `user` declared), the field tables of docs/server.md (defaults,
the accepted values of `encoding_format`, `input_type`, `truncate`, `truncation_direction`,
`embedding_types`), the public API shapes those tables follow (OpenAI embeddings, Cohere v2 embed, Cohere /
Jina rerank, TEI), and pydantic's own error types. Bodies are validated as FastAPI validates them: the
value `json.loads` gives (so `NaN` arrives as a float).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from qwen_embed.server import schemas as S

# The smallest valid body of every request model (a new model without an entry fails the coverage test).
MINIMAL: dict[type[S.Request], dict[str, Any]] = {
    S.EmbeddingRequest: {"input": "a"},
    S.RerankDocument: {"text": "a"},
    S.RerankRequest: {"query": "q", "documents": ["d"]},
    S.EmbedRequest: {"inputs": "a"},
    S.TEIRerankRequest: {"query": "q", "texts": ["t"]},
    S.TokenizeRequest: {"inputs": "a"},
    S.SimilarityInput: {"source_sentence": "a", "sentences": ["b"]},
    S.SimilarityParameters: {},
    S.SimilarityRequest: {"inputs": {"source_sentence": "a", "sentences": ["b"]}},
    S.CohereContent: {"type": "text", "text": "a"},
    S.CohereInput: {"content": [{"type": "text", "text": "a"}]},
    S.CohereEmbedRequest: {"texts": ["a"]},
}


def errors(model: type[BaseModel], body: Any) -> list[tuple[str, tuple[int | str, ...]]]:
    """(type, loc) of each validation error of `body` (a dict, or JSON text parsed as FastAPI parses it)."""
    value = json.loads(body) if isinstance(body, str) else body
    with pytest.raises(ValidationError) as info:
        model.model_validate(value)
    return [(e["type"], tuple(e["loc"])) for e in info.value.errors()]


def request_models() -> list[type[S.Request]]:
    return [v for v in vars(S).values() if isinstance(v, type) and issubclass(v, S.Request) and v is not S.Request]


# -- unknown fields ----------------------------------------------------------------------------------------------
def test_every_request_model_has_a_minimal_body_here() -> None:
    assert set(request_models()) == set(MINIMAL)


@pytest.mark.parametrize("model", list(MINIMAL), ids=lambda m: m.__name__)
def test_each_request_model_takes_its_minimal_body_and_refuses_an_unknown_field(model: type[S.Request]) -> None:
    model.model_validate(MINIMAL[model])
    assert errors(model, {**MINIMAL[model], "dimension": 3}) == [("extra_forbidden", ("dimension",))]
    assert model.model_json_schema()["additionalProperties"] is False  # the OpenAPI document says so too


@pytest.mark.parametrize(("model", "body", "loc"), [
    (S.SimilarityRequest, {"inputs": {"source_sentence": "a", "sentences": ["b"], "x": 1}}, ("inputs", "x")),
    (S.SimilarityRequest, {"inputs": {"source_sentence": "a", "sentences": ["b"]}, "parameters": {"normalize": True}},
     ("parameters", "normalize")),
    (S.CohereEmbedRequest, {"inputs": [{"content": [{"type": "text", "text": "a", "x": 1}]}]},
     ("inputs", 0, "content", 0, "x")),
    (S.CohereEmbedRequest, {"inputs": [{"content": [], "role": "user"}]}, ("inputs", 0, "role")),
    (S.RerankRequest, {"query": "q", "documents": [{"text": "d", "title": "t"}]},
     ("documents", 0, "RerankDocument", "title")),
])
def test_an_unknown_field_in_a_nested_object_is_refused(model: type[S.Request], body: dict[str, Any],
                                                       loc: tuple[int | str, ...]) -> None:
    assert ("extra_forbidden", loc) in errors(model, body)


def test_openai_user_is_declared_accepted_and_ignored() -> None:
    """OpenAI's `user` is documented as "accepted and ignored": it must not be an unknown field."""
    assert S.EmbeddingRequest.model_validate({"input": "a", "user": "u-1"}).user == "u-1"
    assert S.CohereEmbedRequest.model_validate({"texts": ["a"], "priority": 3}).priority == 3  # Cohere's likewise


# -- strict types --------------------------------------------------------------------------------------------------
INT_FIELDS = [(S.EmbeddingRequest, "dimensions"), (S.EmbedRequest, "dimensions"), (S.RerankRequest, "top_n"),
              (S.RerankRequest, "max_tokens_per_doc"), (S.CohereEmbedRequest, "output_dimension"),
              (S.CohereEmbedRequest, "max_tokens"), (S.CohereEmbedRequest, "priority")]
BOOL_FIELDS = [(S.EmbeddingRequest, "truncate"), (S.RerankRequest, "truncate"), (S.RerankRequest, "return_documents"),
               (S.EmbedRequest, "normalize"), (S.EmbedRequest, "truncate"), (S.TEIRerankRequest, "truncate"),
               (S.TEIRerankRequest, "raw_scores"), (S.TEIRerankRequest, "return_text"),
               (S.TokenizeRequest, "add_special_tokens"), (S.SimilarityParameters, "truncate")]


@pytest.mark.parametrize(("model", "field"), INT_FIELDS, ids=lambda x: x if isinstance(x, str) else x.__name__)
@pytest.mark.parametrize("value", [True, False, 32.0, float("nan"), float("inf"), "32", [32]], ids=repr)
def test_an_integer_field_takes_no_bool_float_or_string(model: type[S.Request], field: str, value: object) -> None:
    assert errors(model, {**MINIMAL[model], field: value}) == [("int_type", (field,))]


@pytest.mark.parametrize(("model", "field"), INT_FIELDS, ids=lambda x: x if isinstance(x, str) else x.__name__)
@pytest.mark.parametrize("value", [-1, 0, 32, 2**70])
def test_an_integer_field_takes_any_int_the_range_is_the_handlers(model: type[S.Request], field: str,
                                                                  value: int) -> None:
    """The module docstring: ranges that depend on the model are checked by the handlers (400 / 413)."""
    assert getattr(model.model_validate({**MINIMAL[model], field: value}), field) == value


@pytest.mark.parametrize(("model", "field"), BOOL_FIELDS, ids=lambda x: x if isinstance(x, str) else x.__name__)
@pytest.mark.parametrize("value", [1, 0, "true", "false", 1.0])
def test_a_bool_field_takes_only_true_or_false(model: type[S.Request], field: str, value: object) -> None:
    assert errors(model, {**MINIMAL[model], field: value}) == [("bool_type", (field,))]


@pytest.mark.parametrize(("model", "body", "expected"), [
    (S.EmbeddingRequest, {"input": "a", "model": 3}, ("string_type", ("model",))),
    (S.EmbeddingRequest, {"input": "a", "instruction": 1}, ("string_type", ("instruction",))),
    (S.RerankRequest, {"query": 1, "documents": ["d"]}, ("string_type", ("query",))),
    (S.TEIRerankRequest, {"query": "q", "texts": "t"}, ("list_type", ("texts",))),
    (S.SimilarityRequest, {"inputs": {"source_sentence": "a", "sentences": "b"}},
     ("list_type", ("inputs", "sentences"))),
    (S.RerankRequest, {"query": "q", "documents": "d"}, ("list_type", ("documents",))),
])
def test_a_wrong_type_is_an_error_at_the_fields_path(model: type[S.Request], body: dict[str, Any],
                                                     expected: tuple[str, tuple[int | str, ...]]) -> None:
    assert errors(model, body) == [expected]


def test_nan_from_json_is_not_an_integer() -> None:
    assert errors(S.EmbeddingRequest, '{"input": "a", "dimensions": NaN}') == [("int_type", ("dimensions",))]


# -- the input union ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "shape"), [
    ("text", "text"), ("", "text"), (["a", "b"], "texts"), ([], "texts"), ([[1, 2], [3]], "id_lists"),
    ([[]], "id_lists"), ([1, 2], "ids"), ([True], "ids"), ([None], "ids"), ([1.5], "ids"), (None, "texts"),
    (5, "texts"), ({"a": 1}, "texts"),
])
def test_input_shape_is_decided_by_the_first_element(value: object, shape: str) -> None:
    """Hand-worked from `input_shape`'s docstring: a string is one text; a list is what its first element says."""
    assert S.input_shape(value) == shape


@pytest.mark.parametrize("value", ["one text", ["a", "b"], [[1, 2], [3]], [785, 6722], [], [[]]], ids=repr)
def test_each_documented_input_shape_is_accepted_as_it_is(value: object) -> None:
    """docs/server.md: a string, a list of strings, a list of token ids, or a list of token-id lists (an empty
    list is refused later by the service, with a 400 that says so)."""
    for model, field in ((S.EmbeddingRequest, "input"), (S.EmbedRequest, "inputs")):
        assert getattr(model.model_validate({field: value}), field) == value


@pytest.mark.parametrize(("value", "loc"), [
    ([True], ("input", "ids", 0)),  # true is never a token id
    ([1, 2.0], ("input", "ids", 1)),
    ([1, "a"], ("input", "ids", 1)),
    (["a", 1], ("input", "texts", 1)),
    ([[1], "a"], ("input", "id_lists", 1)),
    ([[1, True]], ("input", "id_lists", 0, 1)),
    ([["a"]], ("input", "id_lists", 0, 0)),
    (None, ("input", "texts")),
    (5, ("input", "texts")),
    ({"text": "a"}, ("input", "texts")),
])
def test_a_wrong_input_is_one_error_at_its_position(value: object, loc: tuple[int | str, ...]) -> None:
    assert [e[1] for e in errors(S.EmbeddingRequest, {"input": value})] == [loc]


def test_a_bad_id_at_the_end_of_a_long_list_is_one_error_not_one_per_element() -> None:
    """input_shape's docstring: one member is validated, so 262,144 ids with one string give one error."""
    ids: list[object] = [0] * 262_143
    assert len(S.EmbeddingRequest.model_validate({"input": ids}).input) == 262_143  # type: ignore[arg-type]
    assert errors(S.EmbeddingRequest, {"input": [*ids, "x"]}) == [("int_type", ("input", "ids", 262_143))]


def test_tokenize_takes_text_only() -> None:
    """TEI's /tokenize takes a string or a list of strings, not token ids."""
    assert S.TokenizeRequest.model_validate({"inputs": ["a", "b"]}).inputs == ["a", "b"]
    assert {t for t, _ in errors(S.TokenizeRequest, {"inputs": [[1, 2]]})} == {"string_type"}


def test_rerank_documents_are_strings_or_text_objects() -> None:
    req = S.RerankRequest.model_validate({"query": "q", "documents": ["a", {"text": "b"}]})
    assert req.documents == ["a", S.RerankDocument(text="b")]
    assert ("missing", ("documents", 0, "RerankDocument", "text")) in errors(S.RerankRequest,
                                                                              {"query": "q", "documents": [{}]})


# -- fixed lists of values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "field", "good", "bad"), [
    (S.EmbeddingRequest, "encoding_format", ["float", "base64"], ["FLOAT", "binary", None]),
    (S.EmbeddingRequest, "input_type", ["query", "document", "search_query", "search_document", None],
     ["Query", "passage", "classification"]),
    (S.EmbedRequest, "truncation_direction", ["Left", "Right", "left", "right", None], ["LEFT", "both", ""]),
    (S.TEIRerankRequest, "truncation_direction", ["Left", "Right", "left", "right", None], ["RIGHT"]),
    (S.SimilarityParameters, "truncation_direction", ["Left", "right", None], ["up"]),
    (S.CohereEmbedRequest, "truncate", ["NONE", "START", "END"], ["end", "BOTH", None, True]),
    (S.CohereEmbedRequest, "input_type",
     ["search_query", "search_document", "classification", "clustering", "image", None], ["query", "document"]),
])
def test_a_value_outside_the_documented_list_is_refused(model: type[S.Request], field: str, good: list[object],
                                                        bad: list[object]) -> None:
    for value in good:
        assert getattr(model.model_validate({**MINIMAL[model], field: value}), field) == value
    for value in bad:
        kinds = {t for t, loc in errors(model, {**MINIMAL[model], field: value})}
        assert kinds <= {"literal_error", "string_type"} and kinds, (field, value)


def test_cohere_embedding_types_are_the_six_documented() -> None:
    types = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    assert S.CohereEmbedRequest.model_validate({"texts": ["a"], "embedding_types": types}).embedding_types == types
    assert errors(S.CohereEmbedRequest, {"texts": ["a"], "embedding_types": ["float", "int4"]}) == [
        ("literal_error", ("embedding_types", 1))]


# -- defaults -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("model", "defaults"), [
    (S.EmbeddingRequest, {"model": None, "encoding_format": "float", "dimensions": None, "user": None,
                          "instruction": None, "input_type": None, "truncate": True}),
    (S.RerankRequest, {"model": None, "top_n": None, "return_documents": False, "instruction": None,
                       "max_tokens_per_doc": None, "truncate": True}),
    (S.EmbedRequest, {"normalize": True, "truncate": True, "dimensions": None, "instruction": None, "model": None,
                      "prompt_name": None, "truncation_direction": None}),
    (S.TEIRerankRequest, {"truncate": True, "raw_scores": False, "return_text": False, "instruction": None,
                          "model": None, "truncation_direction": None}),
    (S.TokenizeRequest, {"add_special_tokens": True, "prompt_name": None}),
    (S.SimilarityRequest, {"parameters": None, "model": None}),
    (S.CohereEmbedRequest, {"texts": ["a"], "inputs": None, "images": None, "model": None, "input_type": None,
                            "embedding_types": None, "output_dimension": None, "max_tokens": None, "truncate": "END",
                            "priority": None, "instruction": None}),
])
def test_defaults_are_the_documented_ones(model: type[S.Request], defaults: dict[str, object]) -> None:
    """docs/server.md's tables (OpenAI: float, full dimensions; Cohere: truncate END, embedding_types float
    when left out; TEI: normalize and add_special_tokens true; truncate true is our documented extension)."""
    req = model.model_validate(MINIMAL[model])
    assert {k: getattr(req, k) for k in defaults} == defaults


@pytest.mark.parametrize("model", [S.EmbeddingRequest, S.RerankRequest, S.TEIRerankRequest, S.EmbedRequest],
                         ids=lambda m: m.__name__)
def test_required_fields_are_required(model: type[S.Request]) -> None:
    assert {t for t, _ in errors(model, {})} == {"missing"}
    assert {loc for _, loc in errors(model, {})} == {(k,) for k in MINIMAL[model]}


# -- the OpenAPI document -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [m for m in MINIMAL if m.model_config.get("json_schema_extra")],
                         ids=lambda m: m.__name__)
def test_the_documented_examples_are_valid_requests(model: type[S.Request]) -> None:
    extra = model.model_config["json_schema_extra"]
    assert isinstance(extra, dict)
    examples = extra["examples"]
    assert isinstance(examples, list) and examples
    for example in examples:
        model.model_validate(example)
    assert model.model_json_schema()["examples"] == examples


def test_the_input_schema_lists_the_four_documented_shapes() -> None:
    for model, field in ((S.EmbeddingRequest, "input"), (S.EmbedRequest, "inputs")):
        shapes = model.model_json_schema()["properties"][field]["anyOf"]
        assert shapes == [{"type": "string"}, {"type": "array", "items": {"type": "string"}},
                          {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
                          {"type": "array", "items": {"type": "integer"}}]


# -- responses ----------------------------------------------------------------------------------------------------
def test_an_embedding_response_has_openais_shape() -> None:
    body = S.EmbeddingResponse(data=[S.EmbeddingObject(index=0, embedding=[0.5, -0.5])], model="emb",
                               usage=S.EmbeddingUsage(prompt_tokens=3, total_tokens=3)).model_dump()
    assert body == {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}],
                    "model": "emb", "usage": {"prompt_tokens": 3, "total_tokens": 3}}


def test_a_cohere_response_names_its_float_array_float() -> None:
    """Cohere's `embeddings_by_type` object has a key `float` (a Python keyword-ish name, held as `float_`)."""
    body = S.CohereEmbedResponse(
        id="x", embeddings=S.CohereEmbeddings.model_validate({"float": [[1.0]], "ubinary": [[255]]}), texts=["a"],
        meta=S.CohereMeta(api_version=S.CohereApiVersion(version="2"),
                          billed_units=S.CohereBilledUnits(input_tokens=2))).model_dump(by_alias=True,
                                                                                       exclude_none=True)
    assert body == {"id": "x", "response_type": "embeddings_by_type",
                    "embeddings": {"float": [[1.0]], "ubinary": [[255]]}, "texts": ["a"],
                    "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 2}}}


def test_an_error_body_has_openais_shape() -> None:
    assert S.ErrorResponse(error=S.ErrorDetail(message="m", type="invalid_request_error")).model_dump() == {
        "error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}


def test_a_model_card_is_openais_model_object() -> None:
    card = S.ModelList(data=[S.ModelCard(id="emb", created=1, kind="embedding")]).model_dump()
    assert card == {"object": "list", "data": [{"id": "emb", "object": "model", "created": 1,
                                                "owned_by": "qwen-embed", "kind": "embedding"}]}
