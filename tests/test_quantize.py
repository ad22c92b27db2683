"""qwen_embed.quantize: byte equality with sentence-transformers' quantize_embeddings, and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen_embed import Embedder
from qwen_embed.errors import InputError
from qwen_embed.quantize import (
    PRECISIONS,
    bytes_per_vector,
    calibration_ranges,
    dequantize,
    hamming_distances,
    load_ranges,
    quantize,
    save_ranges,
)


@pytest.fixture(scope="module")
def st_quant() -> Any:
    """sentence-transformers' quantization module, imported by the tests that compare with it (importing it
    pulls in transformers: seconds that every pytest worker would otherwise spend at collection)."""
    return pytest.importorskip("sentence_transformers.util.quantization")


def _random(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_byte_equal_to_sentence_transformers_random(st_quant: Any, precision: str) -> None:
    x = _random(300, 64)
    calib = _random(500, 64, seed=1)
    want = st_quant.quantize_embeddings(x, precision, calibration_embeddings=calib)
    got = quantize(x, precision, calibration=calib)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()
    if precision.endswith("int8"):  # explicit ranges, and ranges from the batch itself
        r = calibration_ranges(calib)
        want_r = st_quant.quantize_embeddings(x, precision, ranges=r)
        assert quantize(x, precision, ranges=r).tobytes() == want_r.tobytes()
        assert quantize(x, precision).tobytes() == st_quant.quantize_embeddings(x, precision).tobytes()


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary", "float16"])
def test_embedder_precision_on_real_embeddings(st_quant: Any, embedder: Embedder, precision: str) -> None:
    texts = [f"document number {i} about topic {i % 7}" for i in range(40)]
    floats = embedder.encode(texts, dim=32)
    ranges = calibration_ranges(floats)
    got = embedder.encode(texts, dim=32, precision=precision, ranges=ranges if precision.endswith("int8") else None)
    if precision == "float16":
        np.testing.assert_array_equal(got, floats.astype(np.float16))
        return
    want = st_quant.quantize_embeddings(floats, precision, ranges=ranges)
    assert got.tobytes() == want.tobytes() and got.dtype == want.dtype
    q = embedder.encode_queries(texts[:3], dim=32, precision=precision,
                                ranges=ranges if precision.endswith("int8") else None)
    assert q.shape[0] == 3


def test_dequantize_matches_sentence_transformers(st_quant: Any) -> None:
    x = _random(200, 48)
    r = calibration_ranges(x)
    for p in ("int8", "uint8"):
        codes = quantize(x, p, ranges=r)
        np.testing.assert_allclose(dequantize(codes, p, r), st_quant._dequantize_embeddings(codes, p, r), atol=1e-6)
        assert np.abs(dequantize(codes, p, r) - x).max() <= (r[1] - r[0]).max() / 255 + 1e-6


def test_hamming_distances() -> None:
    x = _random(50, 64)
    ub = quantize(x, "ubinary")
    b = quantize(x, "binary")
    bits = (x > 0).astype(int)
    want = np.abs(bits - bits[3]).sum(axis=1)
    np.testing.assert_array_equal(hamming_distances(ub[3], ub, "ubinary"), want)
    np.testing.assert_array_equal(hamming_distances(b[3], b, "binary"), want)


def test_errors_are_clear(embedder: Embedder) -> None:
    x = _random(4, 64)
    with pytest.raises(InputError, match="precision='int4' is not supported"):
        quantize(x, "int4")
    with pytest.raises(InputError, match="not a multiple of 8"):
        quantize(_random(4, 36), "binary")
    with pytest.raises(InputError, match="needs calibration ranges"):
        quantize(x[:1], "int8")
    with pytest.raises(InputError, match="shape"):
        quantize(x, "int8", ranges=np.zeros((2, 3)))
    with pytest.raises(InputError, match="must be float"):
        quantize(x.astype(np.int8), "binary")
    with pytest.raises(InputError, match="not supported"):
        embedder.encode(["a"], precision="int4")
    with pytest.raises(InputError, match="not a multiple of 8"):
        embedder.encode(["a", "b"], dim=36, precision="ubinary")
    with pytest.raises(InputError, match="needs calibration ranges"):
        embedder.encode(["a"], precision="int8")


def test_ranges_round_trip(tmp_path: Path) -> None:
    r = calibration_ranges(_random(10, 32))
    save_ranges(tmp_path / "r.json", r)
    np.testing.assert_array_equal(load_ranges(tmp_path / "r.json"), r)
    with pytest.raises(InputError, match="does not exist"):
        load_ranges(tmp_path / "missing.json")
    assert [bytes_per_vector(1024, p) for p in PRECISIONS] == [4096, 2048, 1024, 1024, 128, 128]


def test_cli_embed_precision_and_saved_ranges(st_quant: Any, tiny_embedding_path: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_embed.cli import main

    texts = tmp_path / "t.txt"
    texts.write_text("".join(f"text number {i} about topic {i % 5}\n" for i in range(30)))
    base = ["embed", str(texts), "--model", str(tiny_embedding_path), "--device", "cpu", "--dim", "32"]
    assert main([*base, "-o", str(tmp_path / "f.npy")]) == 0
    floats = np.load(tmp_path / "f.npy")
    assert main([*base, "-o", str(tmp_path / "q.npy"), "--precision", "int8", "--save-ranges",
                 str(tmp_path / "r.json")]) == 0
    ranges = load_ranges(tmp_path / "r.json")
    np.testing.assert_array_equal(ranges, calibration_ranges(floats))
    want = st_quant.quantize_embeddings(floats, "int8", ranges=ranges)
    assert np.load(tmp_path / "q.npy").tobytes() == want.tobytes()
    assert main([*base, "-o", str(tmp_path / "q2.jsonl"), "--precision", "int8", "--ranges",
                 str(tmp_path / "r.json")]) == 0
    import json

    rows = [json.loads(x)["embedding"] for x in (tmp_path / "q2.jsonl").read_text().splitlines()]
    np.testing.assert_array_equal(np.asarray(rows, dtype=np.int8), want)
    assert main([*base, "-o", str(tmp_path / "b.npy"), "--precision", "ubinary"]) == 0
    assert np.load(tmp_path / "b.npy").tobytes() == st_quant.quantize_embeddings(floats, "ubinary").tobytes()
    capsys.readouterr()
    for bad, msg in [(["--precision", "binary", "--dim", "36"], "multiple of 8"),
                     (["--precision", "binary", "--ranges", str(tmp_path / "r.json")], "go with --precision int8"),
                     (["--precision", "int8", "--ranges", str(tmp_path / "missing.json")], "does not exist")]:
        assert main([*base[:-2], *bad, "-o", str(tmp_path / "x.npy")]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.npy").exists()


def test_bad_ranges_and_codes_are_one_line_errors(tmp_path: Path, embedder: Embedder) -> None:
    """A path given as ranges, codes given as a list or of the other int type, ranges of a wrong shape saved
    or loaded: each used to be a ValueError / AttributeError deep in numpy, silently wrong values, or a file
    that no loader could use."""
    x = _random(4, 64)
    r = calibration_ranges(x)
    with pytest.raises(InputError, match=r"got the path 'r\.json'; read the file with .*load_ranges"):
        quantize(x, "int8", ranges="r.json")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="numeric array of shape"):
        quantize(x, "int8", ranges=[["a"] * 64, ["b"] * 64])  # type: ignore[arg-type]
    codes = quantize(x, "int8", ranges=r)
    np.testing.assert_array_equal(dequantize(list(codes), "int8", r), dequantize(codes, "int8", r))
    with pytest.raises(InputError, match="'uint8' codes must be uint8 values, got int8"):
        dequantize(codes, "uint8", r)  # would shift every value by 128 steps
    with pytest.raises(InputError, match=r"shape \[2, dim\]"):
        save_ranges(tmp_path / "bad.json", np.zeros(5))
    assert not (tmp_path / "bad.json").exists()
    np.save(tmp_path / "bad.npy", np.zeros(5))
    with pytest.raises(InputError, match=r"bad\.npy: int8 ranges must be an array of shape \[2, dim\]"):
        load_ranges(tmp_path / "bad.npy")
    (tmp_path / "ragged.json").write_text('{"min": [0, 1], "max": [1]}')
    with pytest.raises(InputError, match=r"ragged\.json is not a JSON object"):
        load_ranges(tmp_path / "ragged.json")
    with pytest.raises(InputError, match=r"1 vector\(s\) cannot be calibrated: pass ranges=calibration_ranges"):
        embedder.encode(["a"], precision="int8")  # encode takes no calibration=, so the fix is ranges=


def test_dequantize_is_the_step_start_by_hand() -> None:
    """q * step + min, step = (max - min) / 255, with int8 codes shifted by 128 (sentence-transformers' rule)."""
    r = np.array([[-1.0, 0.0], [1.0, 0.0]], dtype=np.float32)  # the second dimension has a zero-width range
    codes = np.array([[-128, 0], [127, 3]], dtype=np.int8)
    want = np.array([[-1.0, 128.0], [255 * (2 / 255) - 1.0, 131.0]], dtype=np.float32)
    np.testing.assert_allclose(dequantize(codes, "int8", r), want, rtol=1e-6)
