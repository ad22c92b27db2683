"""Quantized tables: float16 / int8 / uint8 / binary(+rescore) storage and search, against numpy references."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from qwen_embed.errors import InputError
from qwen_embed.quantize import calibration_ranges, dequantize, hamming_distances, quantize
from qwen_embed.store import TableInfo, open_store

from .test_lance import make_info, rows, unit


def quantized_info(dim: int, precision: str, ranges: np.ndarray | None = None) -> TableInfo:
    return replace(make_info(dim), precision=precision, ranges=None if ranges is None else ranges.tolist())


@pytest.mark.parametrize("precision", ["float16", "int8", "uint8"])
def test_scalar_tables_search_equals_numpy(tmp_path: Path, precision: str) -> None:
    rng = np.random.default_rng(0)
    n, dim = 400, 32
    x = unit(rng, n, dim)
    r = calibration_ranges(x)
    store = open_store(tmp_path / "db", "t", quantized_info(dim, precision, None if precision == "float16" else r))
    docs = {f"d{i}": 1 for i in range(n)}
    store.replace_documents(list(docs), rows(docs, x, {f"d{i}": {"part": i % 2} for i in range(n)}))
    reopened = open_store(tmp_path / "db", "t")
    assert reopened.info.precision == precision
    ids, _ = reopened.vectors()
    order = np.array([int(i[1:].split("#")[0]) for i in ids])
    stored = x[order].astype(np.float16).astype(np.float32) if precision == "float16" else \
        dequantize(quantize(x[order], precision, ranges=r), precision, r)
    for q in unit(rng, 4, dim):
        sims = stored @ q
        hits = reopened.search(q, 10, exact=True)
        assert [h.id for h in hits] == [ids[j] for j in np.argsort(-sims, kind="stable")[:10]]
        np.testing.assert_allclose([h.score for h in hits], np.sort(sims)[::-1][:10], atol=2e-3)
        sub = np.where(order % 2 == 1)[0]
        hits = reopened.search(q, 5, where="part = 1")
        assert [h.id for h in hits] == [ids[j] for j in sub[np.argsort(-sims[sub], kind="stable")[:5]]]


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_hamming_then_int8_rescore(tmp_path: Path, precision: str) -> None:
    rng = np.random.default_rng(1)
    n, dim = 500, 64
    x = unit(rng, n, dim)
    store = open_store(tmp_path / "db", "t", quantized_info(dim, precision))  # ranges from the first batch
    docs = {f"d{i}": 1 for i in range(n)}
    store.replace_documents(list(docs), rows(docs, x))
    r = np.asarray(store.info.ranges, dtype=np.float32)
    np.testing.assert_array_equal(r, calibration_ranges(x))
    ids, _ = store.vectors()
    order = np.array([int(i[1:].split("#")[0]) for i in ids])
    codes = quantize(x[order], "ubinary")
    rescore = dequantize(quantize(x[order], "int8", ranges=r), "int8", r)
    for q in unit(rng, 4, dim):
        ham = hamming_distances(quantize(q, "ubinary"), codes)
        k, m = 5, 3
        cand = np.argsort(ham, kind="stable")[: k * m]
        # candidates are the k*m smallest Hamming distances (ties may be broken differently by Lance)
        hits = store.search(q, k, rescore_multiplier=m, exact=True)
        assert len(hits) == k
        got = [int(h.id[1:].split("#")[0]) for h in hits]
        cutoff = np.sort(ham)[k * m - 1]
        pos = {int(order[j]): j for j in range(n)}
        assert all(ham[pos[g]] <= cutoff for g in got)
        sure = [j for j in cand if ham[j] < cutoff]  # certainly among the candidates, whatever the tie-break
        for h in hits:
            np.testing.assert_allclose(h.score, rescore[pos[int(h.id[1:].split("#")[0])]] @ q, atol=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        assert max(float(rescore[j] @ q) for j in sure) <= hits[0].score + 1e-5
        plain = store.search(q, k, rescore_multiplier=0, exact=True)
        np.testing.assert_allclose(sorted(1 - 2 * ham[pos[int(h.id[1:].split("#")[0])]] / dim for h in plain),
                                   sorted(h.score for h in plain), atol=1e-6)


def test_precision_is_recorded_and_not_mixed(tmp_path: Path) -> None:
    x = unit(np.random.default_rng(2), 10, 32)
    store = open_store(tmp_path / "db", "t", quantized_info(32, "int8", calibration_ranges(x)))
    store.replace_documents([f"d{i}" for i in range(10)], rows({f"d{i}": 1 for i in range(10)}, x))
    from qwen_embed.store import check_compatible

    with pytest.raises(InputError, match="stores int8 vectors"):
        check_compatible(open_store(tmp_path / "db", "t").info, "t", precision="float32")
    with pytest.raises(InputError, match="not a multiple of 8"):
        quantized_info(36, "binary")
    with pytest.raises(InputError, match="not supported"):
        quantized_info(32, "int4")
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        store.replace_documents(["d0"], rows({"d0": 1}, bad[:1]))
    with pytest.raises(InputError, match="rescore_multiplier"):
        store.search(x[0], 3, rescore_multiplier=-1)


def test_first_batch_of_one_cannot_calibrate(tmp_path: Path) -> None:
    store = open_store(tmp_path / "db", "t", quantized_info(32, "int8"))
    assert store.count() == 0 and store.search(unit(np.random.default_rng(0), 1, 32)[0], 3) == []
    with pytest.raises(InputError, match="calibrates"):
        store.replace_documents(["a"], rows({"a": 1}, unit(np.random.default_rng(0), 1, 32)))
