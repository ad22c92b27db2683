"""Issue 18.3: Cohere's POST /v2/embed through the official `cohere` client and TEI's POST /similarity.

References are the library's own entry points (`Embedder.encode(..., precision=, ranges=)`, `embed_ids`
on ids cut by hand from the tokenizer), never the server's output: every embedding type must equal the
Python API byte for byte.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import cohere
import httpx
import numpy as np
import pytest

from qwen_embed import DEFAULT_INSTRUCTION, Embedder
from qwen_embed.cli import main
from qwen_embed.embedder import format_query
from qwen_embed.errors import InputError
from qwen_embed.quantize import calibration_ranges, save_ranges
from qwen_embed.server import ServerSettings, create_app

from .conftest import LiveServer

TEXTS = ["The capital of China is Beijing.", "Gravity attracts two bodies towards each other.", "yes",
         "A protein is a chain of amino acids."]
CALIBRATION = [f"calibration text number {i} about {w}" for i, w in enumerate(
    ["cats", "rivers", "proteins", "the moon", "tax law", "jazz", "volcanoes", "bread", "chess", "glaciers"])]
LONG = "The quick brown fox jumps over the lazy dog. " * 30 + "It ends here."  # > max_length 64
ALL_TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]


@pytest.fixture(scope="module")
def ranges(small_embedder: Embedder) -> np.ndarray:
    """int8 calibration ranges of the served model's full-dimension vectors."""
    return calibration_ranges(small_embedder.encode(CALIBRATION))


@pytest.fixture(scope="module")
def quant(small_embedder: Embedder, ranges: np.ndarray, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[LiveServer]:
    """The small embedder served with --ranges (as `qwen-embed embed --save-ranges` writes them)."""
    path = save_ranges(tmp_path_factory.mktemp("ranges") / "ranges.json", ranges)
    settings = ServerSettings(embedding_model="emb", ranges=str(path), max_length=64, max_wait_ms=10, warmup=False)
    with LiveServer(create_app(settings, embedder=small_embedder)) as srv:
        yield srv


def client(srv: LiveServer) -> cohere.ClientV2:
    return cohere.ClientV2(base_url=srv.url, api_key="unused", timeout=30)


def post(srv: LiveServer, body: dict[str, object], path: str = "/v2/embed") -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=30)


def same_bytes(got: np.ndarray, want: np.ndarray) -> bool:
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


@pytest.mark.parametrize(("input_type", "dim"), [("search_document", None), ("search_query", 32)])
def test_cohere_client_every_type_equals_the_python_api(quant: LiveServer, small_embedder: Embedder,
                                                        ranges: np.ndarray, input_type: str, dim: int | None) -> None:
    types = ALL_TYPES if dim is None else ["float", "binary", "ubinary", "base64"]  # ranges are for the full dim
    res = client(quant).embed(model="emb", texts=TEXTS, input_type=input_type, embedding_types=types,
                              output_dimension=dim)
    encode = small_embedder.encode_queries if input_type == "search_query" else small_embedder.encode

    def want(precision: str) -> np.ndarray:
        return np.asarray(encode(TEXTS, dim=dim, precision=precision, ranges=ranges))

    e = res.embeddings
    assert same_bytes(np.array(e.float_, dtype=np.float32), want("float32"))
    b64 = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in e.base64 or []])
    assert same_bytes(b64, want("float32"))
    for name, dtype in (("binary", np.int8), ("ubinary", np.uint8), ("int8", np.int8), ("uint8", np.uint8)):
        if name in types:
            assert same_bytes(np.array(getattr(e, name), dtype=dtype), want(name)), name
    assert res.texts == TEXTS and res.response_type == "embeddings_by_type"
    instruction = DEFAULT_INSTRUCTION if input_type == "search_query" else None
    tokens = sum(len(s) for s in small_embedder.tokenize(TEXTS, instruction=instruction))
    assert res.meta is not None and res.meta.billed_units is not None
    assert res.meta.billed_units.input_tokens == tokens


def test_inputs_form_types_and_instruction(quant: LiveServer, small_embedder: Embedder) -> None:
    inputs = [{"content": [{"type": "text", "text": t}]} for t in TEXTS[:2]]
    got = post(quant, {"inputs": inputs, "input_type": "search_document"}).json()
    assert got["texts"] == TEXTS[:2]
    assert same_bytes(np.array(got["embeddings"]["float"], dtype=np.float32), small_embedder.encode(TEXTS[:2]))
    plain = small_embedder.encode(TEXTS[:2])
    for kind in ("classification", "clustering"):  # as they are, or under the given instruction
        got = post(quant, {"texts": TEXTS[:2], "input_type": kind}).json()["embeddings"]["float"]
        assert same_bytes(np.array(got, dtype=np.float32), plain)
        got = post(quant, {"texts": TEXTS[:2], "input_type": kind, "instruction": "Classify the topic"}).json()
        want = small_embedder.encode(TEXTS[:2], instruction="Classify the topic")
        assert same_bytes(np.array(got["embeddings"]["float"], dtype=np.float32), want)
    got = post(quant, {"texts": TEXTS[:2]}).json()["embeddings"]  # no input_type: as search_document
    assert list(got) == ["float"] and same_bytes(np.array(got["float"], dtype=np.float32), plain)


def test_truncate_end_start_none_and_max_tokens(quant: LiveServer, small_embedder: Embedder) -> None:
    tok, n, eos = small_embedder.tokenizer, small_embedder.max_length, small_embedder.tokenizer.eos_id
    ids = tok.encode_one(LONG)

    def floats(body: dict[str, object]) -> np.ndarray:
        r = post(quant, {"texts": [LONG], "input_type": "search_document", **body})
        assert r.status_code == 200, r.text
        return np.array(r.json()["embeddings"]["float"], dtype=np.float32)

    assert same_bytes(floats({}), small_embedder.encode([LONG]))
    assert same_bytes(floats({"truncate": "END"}), small_embedder.embed_ids([[*ids[: n - 1], eos]]))
    assert same_bytes(floats({"truncate": "START"}), small_embedder.embed_ids([[*ids[-(n - 1):], eos]]))
    assert same_bytes(floats({"max_tokens": 16}), small_embedder.embed_ids([[*ids[:15], eos]]))
    assert same_bytes(floats({"max_tokens": 16, "truncate": "START"}), small_embedder.embed_ids([[*ids[-15:], eos]]))
    # START on a query keeps the instruction first and the end token last
    head = tok.encode_one(format_query("", DEFAULT_INSTRUCTION))
    whole = tok.encode_one(format_query(LONG, DEFAULT_INSTRUCTION))
    assert whole[: len(head)] == head
    want = small_embedder.embed_ids([[*head, *whole[len(whole) - (n - 1 - len(head)):], eos]])
    assert same_bytes(floats({"truncate": "START", "input_type": "search_query"}), want)
    for body in ({"truncate": "NONE"}, {"truncate": "NONE", "max_tokens": 16}):
        r = post(quant, {"texts": [LONG], **body})
        assert r.status_code == 413 and r.json()["error"]["code"] == "input_too_long"
    assert "max_tokens=16" in post(quant, {"texts": [LONG], "truncate": "NONE", "max_tokens": 16}).text


@pytest.mark.parametrize(("body", "status", "param", "words"), [
    ({"embedding_types": ["int4"]}, 422, "embedding_types", "'float'"),
    ({"embedding_types": ["binary"], "output_dimension": 36}, 400, "embedding_types", "multiple of 8"),
    ({"embedding_types": ["int8"], "output_dimension": 32}, 400, "output_dimension", "dimension 64"),
    ({"output_dimension": 16}, 400, "output_dimension", "32..64"),
    ({"output_dimension": 65}, 400, "output_dimension", "32..64"),
    ({"embedding_types": []}, 400, "embedding_types", "at least one"),
    ({"embedding_type": ["float"]}, 400, "embedding_type", "did you mean `embedding_types`"),
    ({"truncate": "BOTH"}, 422, "truncate", "'START'"),
    ({"max_tokens": 0}, 400, "max_tokens", "at least 1"),
    ({"input_type": "image"}, 400, "input_type", "text"),
    ({"images": ["data:image/png;base64,AAAA"]}, 400, "images", "text"),
    ({"inputs": [{"content": [{"type": "text", "text": "a"}]}]}, 400, "texts", "exactly one"),
    ({"texts": None}, 400, "texts", "exactly one"),
    ({"input_type": "search_document", "instruction": "x"}, 400, "instruction", "queries only"),
    ({"model": "other"}, 404, "model", "'emb'"),
])
def test_bad_values_are_one_line_errors(quant: LiveServer, body: dict[str, object], status: int, param: str,
                                        words: str) -> None:
    r = post(quant, {"texts": TEXTS[:1], **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"] and "\n" not in err["message"], err


def test_int8_without_server_ranges_is_refused(live: LiveServer, small_embedder: Embedder) -> None:
    for t in ("int8", "uint8"):  # `live` runs without --ranges
        r = post(live, {"texts": TEXTS, "embedding_types": ["float", t]})
        assert r.status_code == 400 and "--ranges" in r.json()["error"]["message"], r.text
    with pytest.raises(cohere.BadRequestError):
        client(live).embed(model="emb", texts=TEXTS, input_type="search_document", embedding_types=["int8"])
    got = post(live, {"texts": TEXTS, "embedding_types": ["ubinary"]}).json()["embeddings"]["ubinary"]
    assert same_bytes(np.array(got, dtype=np.uint8), small_embedder.encode(TEXTS, precision="ubinary"))


def test_server_refuses_a_bad_ranges_file(small_embedder: Embedder, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a file"):
        ServerSettings(embedding_model="emb", ranges=str(tmp_path / "missing.json")).check()
    wide = save_ranges(tmp_path / "wide.json", np.zeros((2, 96), dtype=np.float32))
    with pytest.raises(InputError, match=r"hidden size 64"):
        create_app(ServerSettings(embedding_model="emb", ranges=str(wide), warmup=False), embedder=small_embedder)


def test_serve_with_a_missing_ranges_file_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWEN_EMBED_RANGES", raising=False)
    assert main(["serve", "--embedding-model", "x", "--ranges", str(tmp_path / "ranges.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ranges.json is not a file" in err and "--save-ranges" in err


def test_similarity_equals_cosine_of_the_python_api(quant: LiveServer, small_embedder: Embedder) -> None:
    src, others = "What is the capital of China?", TEXTS
    r = post(quant, {"inputs": {"source_sentence": src, "sentences": others}}, "/similarity")
    assert r.status_code == 200, r.text
    vecs = small_embedder.encode([src, *others]).astype(np.float64)
    want = vecs[1:] @ vecs[0] / (np.linalg.norm(vecs[1:], axis=1) * np.linalg.norm(vecs[0]))
    assert np.abs(np.array(r.json()) - want).max() <= 1e-6
    q = post(quant, {"inputs": {"source_sentence": src, "sentences": others}, "parameters": {"prompt_name": "query"}},
             "/similarity").json()
    vecs = small_embedder.encode_queries([src, *others]).astype(np.float64)
    assert np.abs(np.array(q) - vecs[1:] @ vecs[0]).max() <= 1e-6
    bad = post(quant, {"inputs": {"source_sentence": src, "sentences": ["a", ""]}}, "/similarity")
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("sentences[1] is an empty string")
    extra = post(quant, {"inputs": {"source_sentence": src, "sentence": ["a"]}}, "/similarity")
    assert extra.status_code in (400, 422) and "sentence" in extra.json()["error"]["message"]


@pytest.mark.parametrize("direction", ["Left", "right"])
def test_similarity_truncation_direction(quant: LiveServer, small_embedder: Embedder, direction: str) -> None:
    tok, n, eos = small_embedder.tokenizer, small_embedder.max_length, small_embedder.tokenizer.eos_id
    ids = tok.encode_one(LONG)
    cut = ids[-(n - 1):] if direction == "Left" else ids[: n - 1]
    vecs = small_embedder.embed_ids([[*cut, eos], small_embedder.tokenize(["yes"])[0]]).astype(np.float64)
    r = post(quant, {"inputs": {"source_sentence": LONG, "sentences": ["yes"]},
                     "parameters": {"truncation_direction": direction}}, "/similarity")
    assert r.status_code == 200, r.text
    assert abs(r.json()[0] - float(vecs[1] @ vecs[0])) <= 1e-6
    refused = post(quant, {"inputs": {"source_sentence": LONG, "sentences": ["yes"]},
                           "parameters": {"truncate": False, "truncation_direction": direction}}, "/similarity")
    assert refused.status_code == 413 and refused.json()["error"]["param"] == "source_sentence"
