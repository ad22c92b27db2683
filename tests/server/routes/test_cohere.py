"""routes/cohere.py: POST /v2/embed against Cohere's v2 embed API (https://docs.cohere.com/reference/embed):
embedding types, the `inputs` content form, `max_tokens` / `truncate`, the response's `id` and `meta`,
and the server's calibration ranges (`server_ranges`, `check_types`).

References are the in-process `Embedder` (`encode(..., precision=, ranges=)`, `embed_ids` on ids built by
hand) and hand counts. tests/server/test_cohere_embed.py covers the official client, every type at the full
dimension, END / START / NONE and the one-line refusals; this file aims at what it leaves out.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from qwen_embed import DEFAULT_INSTRUCTION, Embedder
from qwen_embed.errors import InputError
from qwen_embed.quantize import calibration_ranges, save_ranges
from qwen_embed.server import ServerSettings, create_app
from qwen_embed.server.routes.cohere import server_ranges

TEXTS = ["The capital of China is Beijing.", "Gravity attracts two bodies towards each other.", "yes"]
CALIBRATION = [f"calibration text {i} about {w}" for i, w in enumerate(
    ["cats", "rivers", "proteins", "the moon", "tax law", "jazz", "volcanoes", "bread", "chess", "glaciers"])]
LONG = "The quick brown fox jumps over the lazy dog. " * 30


@pytest.fixture(scope="module")
def ranges32(small_embedder: Embedder) -> np.ndarray:
    """int8 calibration ranges of the served model's vectors at dimension 32 (not its full 64)."""
    return calibration_ranges(small_embedder.encode(CALIBRATION, dim=32))


@pytest.fixture(scope="module")
def quant32(small_embedder: Embedder, ranges32: np.ndarray, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[TestClient]:
    """The small embedder served with --ranges saved at dimension 32."""
    path = save_ranges(tmp_path_factory.mktemp("ranges") / "r32.json", ranges32)
    settings = ServerSettings(embedding_model="emb", ranges=str(path), max_wait_ms=0, warmup=False)
    with TestClient(create_app(settings, embedder=small_embedder)) as client:
        yield client


def same_bytes(got: np.ndarray, want: np.ndarray) -> bool:
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


def embed(client: TestClient, body: dict[str, object]) -> dict[str, object]:
    r = client.post("/v2/embed", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, object] = r.json()
    return out


def test_int8_at_the_dimension_of_the_server_ranges(quant32: TestClient, small_embedder: Embedder,
                                                    ranges32: np.ndarray) -> None:
    got = embed(quant32, {"texts": TEXTS, "embedding_types": ["int8", "uint8", "float"], "output_dimension": 32})
    e = got["embeddings"]
    assert isinstance(e, dict)
    for name, dtype in (("int8", np.int8), ("uint8", np.uint8)):
        want = small_embedder.encode(TEXTS, dim=32, precision=name, ranges=ranges32)
        assert same_bytes(np.array(e[name], dtype=dtype), want), name
    assert same_bytes(np.array(e["float"], dtype=np.float32), small_embedder.encode(TEXTS, dim=32))
    # the full dimension has no ranges on this server: refused before any work, naming what to send
    r = quant32.post("/v2/embed", json={"texts": TEXTS, "embedding_types": ["uint8"]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "output_dimension" and "output_dimension=32" in err["message"]


def test_a_type_asked_twice_is_answered_once(api: TestClient, small_embedder: Embedder) -> None:
    got = embed(api, {"texts": TEXTS, "embedding_types": ["ubinary", "float", "ubinary", "float"]})
    e = got["embeddings"]
    assert isinstance(e, dict) and sorted(e) == ["float", "ubinary"]
    assert same_bytes(np.array(e["ubinary"], dtype=np.uint8), small_embedder.encode(TEXTS, precision="ubinary"))
    assert same_bytes(np.array(e["float"], dtype=np.float32), small_embedder.encode(TEXTS))


def test_response_id_and_meta_are_coheres(api: TestClient, small_embedder: Embedder) -> None:
    a = embed(api, {"texts": TEXTS[:1], "input_type": "search_query"})
    b = embed(api, {"texts": TEXTS[:1], "input_type": "search_query"})
    assert uuid.UUID(str(a["id"])) != uuid.UUID(str(b["id"]))  # a fresh id per response
    assert a["response_type"] == "embeddings_by_type" and a["texts"] == TEXTS[:1]
    tokens = len(small_embedder.tokenize(TEXTS[:1], instruction=DEFAULT_INSTRUCTION)[0])
    assert a["meta"] == {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}}


def test_priority_is_accepted_and_changes_nothing(api: TestClient) -> None:
    plain = embed(api, {"texts": TEXTS, "input_type": "search_document"})
    with_priority = embed(api, {"texts": TEXTS, "input_type": "search_document", "priority": 5})
    assert plain["embeddings"] == with_priority["embeddings"] and plain["meta"] == with_priority["meta"]


@pytest.mark.parametrize(("max_tokens", "tokens"), [(1, 1), (2, 2), (10_000, 64)])
def test_max_tokens_keeps_that_many_tokens_end_token_included(api: TestClient, small_embedder: Embedder,
                                                              max_tokens: int, tokens: int) -> None:
    """Cohere's max_tokens counts the end token; past the model's max length (64) that length rules."""
    ids = small_embedder.tokenizer.encode_one(LONG)
    got = embed(api, {"texts": [LONG, LONG], "max_tokens": max_tokens})
    want = small_embedder.embed_ids([[*ids[: tokens - 1], small_embedder.tokenizer.eos_id]])[0]
    vecs = np.array(got["embeddings"]["float"], dtype=np.float32)  # type: ignore[index]
    assert np.abs(vecs - want).max() <= 1e-6
    assert got["meta"]["billed_units"]["input_tokens"] == 2 * tokens  # type: ignore[index]


def test_truncate_none_embeds_texts_that_fit(api: TestClient, small_embedder: Embedder) -> None:
    got = embed(api, {"texts": TEXTS, "truncate": "NONE", "max_tokens": 64})
    assert same_bytes(np.array(got["embeddings"]["float"], dtype=np.float32),  # type: ignore[index]
                      small_embedder.encode(TEXTS))


@pytest.mark.parametrize(("inputs", "words"), [
    ([{"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}], "image_url"),
    ([{"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], "text, text"),
    ([{"content": [{"type": "text", "text": "a"}]}, {"content": [{"type": "text"}]}], "inputs[1]"),
    ([{"content": []}], "none"),
])
def test_inputs_other_than_one_text_part_are_refused_naming_the_input(api: TestClient, inputs: list[object],
                                                                      words: str) -> None:
    r = api.post("/v2/embed", json={"inputs": inputs})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "inputs" and words in err["message"], err


@pytest.mark.parametrize("field", ["texts", "inputs"])
def test_an_empty_list_of_inputs_is_refused(api: TestClient, field: str) -> None:
    r = api.post("/v2/embed", json={field: []})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    assert f"{field} is empty" in r.json()["error"]["message"]


@pytest.mark.parametrize(("array", "words"), [
    (np.zeros((3, 64), dtype=np.float32), "[2, dim]"),
    (np.zeros(64, dtype=np.float32), "[2, dim]"),
    (np.zeros((2, 0), dtype=np.float32), "[2, dim]"),
    (np.array([[0.0] * 32, [np.nan] * 32], dtype=np.float32), "finite"),
    (np.array([[1.0] * 32, [0.0] * 32], dtype=np.float32), "maximum >= its minimum"),
])
def test_server_ranges_that_cannot_be_used_are_refused_at_start(api: TestClient, tmp_path: Path, array: np.ndarray,
                                                                words: str) -> None:
    path = tmp_path / "ranges.npy"
    np.save(path, array)
    with pytest.raises(InputError) as e:
        server_ranges(str(path), api.app.state.qe.embedding)  # type: ignore[attr-defined]
    assert words in str(e.value) and "\n" not in str(e.value)
    assert server_ranges(None, api.app.state.qe.embedding) is None  # type: ignore[attr-defined]
