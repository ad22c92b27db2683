"""Embedder behaviour through the public API."""

from pathlib import Path

import numpy as np
import pytest

from qwen_embed import DEFAULT_INSTRUCTION, Embedder, QwenEmbedError, format_query
from qwen_embed.errors import InputError


def test_shapes_dtype_and_norm(embedder: Embedder) -> None:
    v = embedder.encode(["alpha", "beta gamma"])
    assert v.shape == (2, 64) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    raw = embedder.encode(["alpha"], normalize=False)
    assert not np.isclose(np.linalg.norm(raw), 1.0)
    assert np.allclose(raw / np.linalg.norm(raw), v[:1], atol=1e-6)


def test_matryoshka_is_slice_then_normalise(embedder: Embedder) -> None:
    raw = embedder.encode(["matryoshka"], normalize=False)
    v32 = embedder.encode(["matryoshka"], dim=32)
    assert v32.shape == (1, 32)
    assert np.allclose(v32, raw[:, :32] / np.linalg.norm(raw[:, :32]), atol=1e-6)


def test_query_template_and_defaults(embedder: Embedder) -> None:
    assert format_query("q", "Do X") == "Instruct: Do X\nQuery:q"
    q = embedder.encode_queries(["what is gravity"])
    assert np.array_equal(q, embedder.encode(["what is gravity"], instruction=DEFAULT_INSTRUCTION))
    assert np.array_equal(q, embedder.encode([format_query("what is gravity", DEFAULT_INSTRUCTION)]))
    d = embedder.encode_documents(["what is gravity"])
    assert not np.allclose(q, d)
    custom = embedder.encode_queries(["what is gravity"], instruction="Find physics papers")
    assert not np.allclose(q, custom)


def test_input_order_restored(embedder: Embedder) -> None:
    texts = ["short", "a much longer text " * 20, "mid length text here"]
    v = embedder.encode(texts)
    for i, t in enumerate(texts):
        assert np.allclose(v[i], embedder.encode([t])[0], atol=1e-5)


def test_progress_bar_for_long_inputs(embedder: Embedder, capsys: pytest.CaptureFixture[str]) -> None:
    embedder.encode(["x"] * 20, progress=True)
    assert "embedding" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"texts": []}, "empty"), ({"texts": [""]}, "empty string"), ({"texts": [b"bytes"]}, "bytes"),
     ({"texts": ["a"], "dim": 0}, r"dim=0 is out of range"), ({"texts": ["a"], "dim": 31}, "dim=31"),
     ({"texts": ["a"], "dim": 65}, r"32\.\.64"), ({"texts": ["a"], "instruction": 5}, "instruction")],
)
def test_bad_input(embedder: Embedder, kwargs: dict, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        embedder.encode(**kwargs)


def test_max_length_limits(tiny_embedding_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QwenEmbedError, match="max_length=40000 is out of range"):
        Embedder.from_pretrained(tiny_embedding_path, device="cpu", max_length=40000)
    e = Embedder.from_pretrained(tiny_embedding_path, device="cpu", max_length=32768)
    assert e.max_length == 32768
    assert Embedder.from_pretrained(tiny_embedding_path, device="cpu").max_length == 8192


def test_default_max_length_follows_a_lower_model_limit(tmp_path: Path) -> None:
    """A model whose position limit is below 8192 loads with that limit by default; asking for more is an error."""
    from qwen_embed import Reranker
    from qwen_embed.tiny import make_checkpoint

    emb = make_checkpoint(tmp_path / "e", "embedding", tokenizer="small", max_position_embeddings=512)
    rr = make_checkpoint(tmp_path / "r", "reranker", tokenizer="small", max_position_embeddings=512)
    assert Embedder.from_pretrained(emb, device="cpu").max_length == 512
    assert Reranker.from_pretrained(rr, device="cpu").max_length == 512
    with pytest.raises(QwenEmbedError, match=r"max_length=8192 is out of range: use 2\.\.512"):
        Embedder.from_pretrained(emb, device="cpu", max_length=8192)


def test_chunked_tokenization_pipeline_equals_one_pass(embedder: Embedder, monkeypatch: pytest.MonkeyPatch) -> None:
    import qwen_embed.embedder as mod

    texts = [f"text number {i} " * (1 + i % 7) for i in range(23)]
    one = embedder.encode(texts, dim=48)
    monkeypatch.setattr(mod, "TOKENIZE_CHUNK", 5)  # 5 chunks through the worker pool
    assert np.abs(embedder.encode(texts, dim=48) - one).max() <= 1e-6


def test_one_string_gives_one_vector_and_tensors_on_request(embedder: Embedder) -> None:
    """Issue 11.11: sentence-transformers' conventions."""
    import torch

    one = embedder.encode("alpha")
    assert one.shape == (64,) and np.allclose(one, embedder.encode(["alpha"])[0])
    assert embedder.encode_queries("what is alpha").shape == (64,)
    t = embedder.encode(["alpha", "beta"], convert_to_tensor=True, dim=32)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 32) and t.dtype == torch.float32
    assert np.allclose(t.numpy(), embedder.encode(["alpha", "beta"], dim=32))
    assert isinstance(embedder.encode_documents("beta", convert_to_tensor=True), torch.Tensor)


def test_similarity_is_the_cosine_matrix() -> None:
    import torch

    from qwen_embed import similarity

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
    ref = np.array([[x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for y in b] for x in a])  # by definition
    out = similarity(a, b)
    assert isinstance(out, np.ndarray) and out.shape == (3, 4) and np.allclose(out, ref, atol=1e-6)
    tout = similarity(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(tout, torch.Tensor) and np.allclose(tout.numpy(), ref, atol=1e-6)
    assert similarity(a[0], b).shape == (1, 4)  # a 1-D vector is one row, as in sentence-transformers
    with pytest.raises(InputError, match="one dimension"):
        similarity(a, b[:, :4])


def test_counts_take_numpy_integers(tiny_embedding_path: Path) -> None:
    """A count read from an array (np.int64) is the int it is, for every count of the API (one rule)."""
    e = Embedder.from_pretrained(tiny_embedding_path, device="cpu", max_length=np.int64(16), batch_tokens=np.int64(64),
                                 threads=np.int64(1))  # type: ignore[arg-type]
    assert (e.max_length, e.engine.batch_tokens) == (16, 64) and type(e.max_length) is int
    assert e.encode(["a b"], dim=np.int64(32)).shape == (1, 32)


def test_embed_ids_refuses_bad_ids_in_one_line_and_takes_numpy_rows(embedder: Embedder) -> None:
    """They used to fail as IndexError (an id outside the vocabulary), AssertionError (an empty sequence),
    ValueError (a numpy array, a string) or TypeError (a generator, a flat list)."""
    ids = embedder.tokenize(["hello there", "general kenobi"])
    want = embedder.embed_ids(ids)
    np.testing.assert_array_equal(embedder.embed_ids(np.array([ids[0]])), embedder.embed_ids(ids[:1]))
    np.testing.assert_array_equal(embedder.embed_ids(iter(ids)), want)
    vocab = embedder.config.vocab_size
    for seqs, needle in [([[]], "holds 0 token ids"), ([[vocab]], f"token id {vocab}, outside"),
                         ([[-1]], "token id -1"), (["abc"], "must be a list of token ids"),
                         ([5, 6], "must be a list of token ids, got int"), ([], "seqs is empty")]:
        with pytest.raises(InputError, match=needle):
            embedder.embed_ids(seqs)  # type: ignore[arg-type]
