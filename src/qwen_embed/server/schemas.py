"""Request and response bodies (pydantic), as the OpenAPI document shows them.

Field types are strict (a string is never taken for a number, `true` never for 1), so a wrong type is
a 422 with the field's path, not a silent conversion. Ranges that depend on the model (dimensions,
token ids, lengths) are checked by the handlers, which answer 400 / 413 with the limit in the message.
Shapes follow the OpenAI embeddings API, Cohere's v2 embed API, the Cohere / Jina rerank API and
text-embeddings-inference (TEI) routes (/similarity included); our extensions (`instruction`,
`input_type`, `truncate`) are marked as such. Unknown
fields are refused (`extra="forbid"`: a typo such as `dimension` is a 400 naming the accepted fields,
never silently ignored); a field documented as "accepted and ignored" (OpenAI's `user`) is declared.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictInt, StrictStr, Tag, WithJsonSchema


class Request(BaseModel):
    """A request body: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")

TokenIds = list[StrictInt]


def input_shape(value: object) -> str:
    """Which member of `EmbeddingInput` a value is meant to be, from its first element: validating one
    member only keeps a list of 262k token ids at 0.03 s instead of 1.1 s (a plain union validates the
    list against every member, with one error per element)."""
    if isinstance(value, list) and value:
        first = value[0]
        return "texts" if isinstance(first, str) else "id_lists" if isinstance(first, list) else "ids"
    return "text" if isinstance(value, str) else "texts"


EmbeddingInput = Annotated[
    Annotated[StrictStr, Tag("text")] | Annotated[list[StrictStr], Tag("texts")]
    | Annotated[list[TokenIds], Tag("id_lists")] | Annotated[TokenIds, Tag("ids")],
    Discriminator(input_shape),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"items": {"type": "string"}, "type": "array"},
                              {"items": {"items": {"type": "integer"}, "type": "array"}, "type": "array"},
                              {"items": {"type": "integer"}, "type": "array"}]}),
]

INSTRUCTION = Field(None, description="Extension: task instruction; the input is embedded as a query with "
                    "`Instruct: {instruction}\\nQuery:{input}`.")
TRUNCATION_DIRECTION = Field(None, description="TEI: which end of a too-long input is cut: Right (default) or "
                             "Left (either case); Left keeps the prompt / instruction and the end token.")
TRUNCATE = Field(True, description="Extension: cut inputs longer than the model's max length (keeping the end "
                 "token); false answers 413 instead.")


# -- OpenAI embeddings ------------------------------------------------------------------------------
class EmbeddingRequest(Request):
    """POST /v1/embeddings."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"input": ["The capital of China is Beijing.", "Gravity is a force."]},
        {"input": "What is the capital of China?", "input_type": "query", "dimensions": 32,
         "encoding_format": "base64"},
        {"input": [[785, 6722, 315, 5616]], "truncate": False},
    ]})

    input: EmbeddingInput = Field(description="A string, a list of strings, a list of token ids or a list of "
                                  "such lists.")
    model: StrictStr | None = Field(None, description="The served embedding model's name (GET /v1/models).")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: lists of numbers; base64: little-endian float32 bytes, base64-encoded.")
    dimensions: StrictInt | None = Field(None, description="Matryoshka dimension, 32..hidden size (default: full).")
    user: StrictStr | None = Field(None, description="Accepted and ignored (OpenAI compatibility).")
    instruction: StrictStr | None = INSTRUCTION
    # Cohere's search_query / search_document are accepted as query / document
    input_type: Literal["query", "document"] | Literal["search_query", "search_document"] | None = Field(
        None, description="Extension: `query` applies the query template (default instruction unless "
        "`instruction` is given); `document` embeds the input as it is.")
    truncate: StrictBool = TRUNCATE


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str
    usage: EmbeddingUsage


# -- Cohere / Jina rerank ---------------------------------------------------------------------------
class RerankDocument(Request):
    text: StrictStr


class RerankRequest(Request):
    """POST /v1/rerank (Cohere / Jina shape)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"query": "What is the capital of China?", "documents": ["The capital of China is Beijing.",
                                                                 {"text": "Gravity is a force."}],
         "top_n": 1, "return_documents": True},
    ]})

    query: StrictStr
    documents: list[StrictStr | RerankDocument] = Field(description="Strings or `{\"text\": ...}` objects.")
    model: StrictStr | None = Field(None, description="The served reranker's name (GET /v1/models).")
    top_n: StrictInt | None = Field(None, description="Keep the best N (default: all).")
    return_documents: StrictBool = Field(False, description="Include each document's text in the results.")
    instruction: StrictStr | None = Field(None, description="Task instruction (default: web search).")
    max_tokens_per_doc: StrictInt | None = Field(None, description="Cut each document to this many tokens.")
    truncate: StrictBool = TRUNCATE
    priority: StrictInt | None = Field(None, description="Accepted and ignored (Cohere compatibility).")


class RerankResultItem(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResultItem]
    usage: RerankUsage


# -- TEI routes -------------------------------------------------------------------------------------
class EmbedRequest(Request):
    """POST /embed (text-embeddings-inference)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": ["hello", "world"], "normalize": False}]})

    inputs: EmbeddingInput
    normalize: StrictBool = True
    truncate: StrictBool = TRUNCATE
    dimensions: StrictInt | None = None
    instruction: StrictStr | None = INSTRUCTION
    model: StrictStr | None = None
    prompt_name: StrictStr | None = Field(None, description="TEI: a prompt of the model put before each input: "
                                          "`query` (the query template), `document` (none), or a name from the "
                                          "model's config_sentence_transformers.json.")
    truncation_direction: Literal["Left", "Right", "left", "right"] | None = TRUNCATION_DIRECTION


class TEIRerankRequest(Request):
    """POST /rerank (text-embeddings-inference)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"query": "capital of China", "texts": ["Beijing", "gravity"], "raw_scores": True, "return_text": True}]})

    query: StrictStr
    texts: list[StrictStr]
    truncate: StrictBool = TRUNCATE
    raw_scores: StrictBool = Field(False, description="Logits log(p / (1 - p)) instead of probabilities.")
    return_text: StrictBool = False
    instruction: StrictStr | None = None
    model: StrictStr | None = None
    truncation_direction: Literal["Left", "Right", "left", "right"] | None = Field(
        None, description="TEI: only Right (documents are cut at their end).")


class TEIRank(BaseModel):
    index: int
    score: float
    text: str | None = None


class TokenizeRequest(Request):
    """POST /tokenize (text-embeddings-inference)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": "Hello world"}]})

    inputs: StrictStr | list[StrictStr]
    add_special_tokens: StrictBool = Field(True, description="Append the end token and truncate, as embedded.")
    prompt_name: StrictStr | None = Field(None, description="TEI: tokenize each input after this prompt of the "
                                          "embedding model (as /embed's `prompt_name`).")


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool
    start: int | None
    stop: int | None


class SimilarityInput(Request):
    source_sentence: StrictStr = Field(description="The text the others are compared with.")
    sentences: list[StrictStr] = Field(description="Texts compared against `source_sentence`.")


class SimilarityParameters(Request):
    prompt_name: StrictStr | None = Field(None, description="TEI: a prompt of the model put before every text "
                                          "(as /embed's `prompt_name`).")
    truncate: StrictBool | None = Field(None, description="Cut texts over the max length (default true); false "
                                        "answers 413.")
    truncation_direction: Literal["Left", "Right", "left", "right"] | None = TRUNCATION_DIRECTION


class SimilarityRequest(Request):
    """POST /similarity (text-embeddings-inference)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"inputs": {"source_sentence": "What is Deep Learning?", "sentences": ["What is Machine Learning?"]}}]})

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None
    model: StrictStr | None = Field(None, description="Extension: the served embedding model's name.")


# -- Cohere v2 embed --------------------------------------------------------------------------------
CohereEmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]


class CohereContent(Request):
    """One part of a Cohere `inputs` item; only `{"type": "text", "text": ...}` is served (a text model)."""

    type: StrictStr
    text: StrictStr | None = None
    image_url: dict[str, StrictStr] | None = None


class CohereInput(Request):
    content: list[CohereContent]


class CohereEmbedRequest(Request):
    """POST /v2/embed (Cohere v2 shape)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"model": "emb", "texts": ["The capital of China is Beijing."], "input_type": "search_document",
         "embedding_types": ["float", "binary"]},
        {"model": "emb", "texts": ["What is the capital of China?"], "input_type": "search_query",
         "output_dimension": 32, "embedding_types": ["ubinary"], "truncate": "START"},
    ]})

    texts: list[StrictStr] | None = Field(None, description="The texts to embed (or `inputs`).")
    inputs: list[CohereInput] | None = Field(None, description="Cohere's content form: `[{\"content\": [{\"type\": "
                                             "\"text\", \"text\": ...}]}]`; text parts only.")
    images: list[StrictStr] | None = Field(None, description="Refused: this server embeds text only.")
    model: StrictStr | None = Field(None, description="The served embedding model's name (GET /v1/models).")
    input_type: Literal["search_query", "search_document", "classification", "clustering", "image"] | None = Field(
        None, description="search_query: the query template with the default instruction (or `instruction`); "
        "search_document: the text as it is; classification / clustering: as it is, or under `instruction` when "
        "given; image is refused. Left out: as search_document.")
    embedding_types: list[CohereEmbeddingType] | None = Field(
        None, description="Any of float, int8, uint8, binary, ubinary, base64 (default [float]); int8 / uint8 need "
        "the server's --ranges.")
    output_dimension: StrictInt | None = Field(None, description="Matryoshka dimension, 32..hidden size (default: "
                                               "full).")
    max_tokens: StrictInt | None = Field(None, description="Tokens per input at most (end token included), cut as "
                                         "`truncate` says.")
    truncate: Literal["NONE", "START", "END"] = Field(
        "END", description="END cuts the end of a too-long input, START its start (keeping the instruction and the "
        "end token), NONE answers 413.")
    priority: StrictInt | None = Field(None, description="Accepted and ignored (Cohere compatibility).")
    instruction: StrictStr | None = Field(None, description="Extension: task instruction for search_query, "
                                          "classification or clustering inputs.")


class CohereEmbeddings(BaseModel):
    float_: list[list[float]] | None = Field(None, alias="float")
    int8: list[list[int]] | None = None
    uint8: list[list[int]] | None = None
    binary: list[list[int]] | None = None
    ubinary: list[list[int]] | None = None
    base64: list[str] | None = None


class CohereBilledUnits(BaseModel):
    input_tokens: int


class CohereApiVersion(BaseModel):
    version: str


class CohereMeta(BaseModel):
    api_version: CohereApiVersion
    billed_units: CohereBilledUnits


class CohereEmbedResponse(BaseModel):
    id: str
    response_type: Literal["embeddings_by_type"] = "embeddings_by_type"
    embeddings: CohereEmbeddings
    texts: list[str]
    meta: CohereMeta


# -- discovery --------------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qwen-embed"
    kind: Annotated[str, Field(description="embedding or reranker")]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
