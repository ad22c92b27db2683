"""Embedding quantization: float16 / int8 / uint8 / binary / ubinary vectors, and search over them.

Byte-compatible with sentence-transformers' `quantize_embeddings` (sentence_transformers/util/
quantization.py), so vectors made here and there can be mixed in one index:

- `int8` / `uint8` (scalar quantization): per dimension, the calibration range [min, max] is cut
  into 255 equal steps; `q = clip(floor((x - min) / step), 0, 255)` as uint8, minus 128 as int8. A
  zero-width range uses step 1. Ranges come from `ranges` ([2, dim]: row 0 the minima, row 1 the
  maxima) or from a calibration sample; never from a single vector.
- `binary` / `ubinary`: the sign bit (x > 0) of each dimension packed 8 per byte, most significant
  bit first (`np.packbits`); `binary` stores each byte minus 128 as int8, `ubinary` as uint8.
  Here a dimension that is not a multiple of 8 is refused rather than padded.
- `float32` / `float16`: a cast.

Quantization applies after the Matryoshka slice and the L2 normalisation (`pooling.finish`): slice,
normalise, quantize. Search helpers: `hamming_distances` (binary / ubinary codes), `dequantize`
(int8 / uint8 back to the float coordinate system, for rescoring with a float query), `rescore`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .errors import InputError

Precision = Literal["float32", "float16", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
MIN_CALIBRATION = 2
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def check_precision(precision: str, dim: int | None = None) -> str:
    """Validate a precision name (and, for binary ones, that `dim` packs into whole bytes)."""
    if precision not in PRECISIONS:
        raise InputError(f"precision={precision!r} is not supported; use one of {', '.join(PRECISIONS)}.")
    if dim is not None and precision.endswith("binary") and dim % 8:
        raise InputError(f"precision={precision!r} packs 8 dimensions per byte, but dim={dim} is not a multiple "
                         f"of 8; pass a dim divisible by 8 (e.g. {dim - dim % 8 or 8}).")
    return precision


def calibration_ranges(sample: np.ndarray) -> np.ndarray:
    """Per-dimension [min; max] ([2, dim] float32) of a sample of float embeddings ([n, dim], n >= 2)."""
    x = np.asarray(sample)
    if x.ndim != 2 or x.shape[0] < MIN_CALIBRATION:
        raise InputError(f"int8 calibration needs a sample of at least {MIN_CALIBRATION} vectors as an [n, dim] "
                         f"array, got shape {x.shape}; embed more texts or pass saved ranges.")
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"calibration vectors must be float, got {x.dtype}.")
    return np.vstack((x.min(axis=0), x.max(axis=0))).astype(np.float32)


def _check_ranges(ranges: Any, dim: int | None) -> np.ndarray:
    """Ranges as float32 [2, dim] (any [2, d] with dim None), or an InputError that says what is wrong."""
    if isinstance(ranges, str | os.PathLike):
        raise InputError(f"int8 ranges must be an array of shape [2, dim], got the path {os.fspath(ranges)!r}; read "
                         f"the file with qwen_embed.quantize.load_ranges(path) first.", param="ranges")
    try:
        r = np.asarray(ranges, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise InputError(f"int8 ranges must be a numeric array of shape [2, dim] (row 0 minima, row 1 maxima); "
                         f"{type(ranges).__name__} is not one ({e}).", param="ranges") from None
    if r.ndim != 2 or r.shape[0] != 2 or (dim is not None and r.shape[1] != dim):
        raise InputError(f"int8 ranges must be an array of shape [2, {'dim' if dim is None else dim}] (row 0 minima, "
                         f"row 1 maxima); this one holds an array of shape {r.shape}; calibrate on embeddings of the "
                         f"same dimension.", param="ranges")
    if not np.isfinite(r).all() or (r[1] < r[0]).any():
        raise InputError("int8 ranges must be finite with every maximum >= its minimum; calibrate again with "
                         "calibration_ranges(<sample of embeddings>).", param="ranges")
    return r


def quantize(embeddings: np.ndarray, precision: str, *, ranges: np.ndarray | None = None,
             calibration: np.ndarray | None = None) -> np.ndarray:
    """Float embeddings [n, dim] (or [dim]) -> the given precision (see the module docstring).

    int8 / uint8 take `ranges`, else ranges computed from `calibration`, else from `embeddings`
    themselves when they hold at least two vectors (a single vector cannot be calibrated).
    """
    x = np.asarray(embeddings)
    if x.dtype in (np.int8, np.uint8) or not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"embeddings to quantize must be float, got {x.dtype}.")
    dim = x.shape[-1]
    check_precision(precision, dim)
    if precision == "float32":
        return x.astype(np.float32)
    if precision == "float16":
        return x.astype(np.float16)
    if precision.endswith("int8"):
        if ranges is None:
            if calibration is None and (x.ndim == 1 or x.shape[0] < MIN_CALIBRATION):
                raise InputError(f"precision={precision!r} needs calibration ranges, and {len(x) if x.ndim > 1 else 1} "
                                 f"vector(s) cannot be calibrated: pass ranges=calibration_ranges(<sample of at least "
                                 f"{MIN_CALIBRATION} embeddings>) or ranges=load_ranges(path) (quantize() also takes "
                                 f"calibration=<sample>).", param="ranges")
            ranges = calibration_ranges(x if calibration is None else calibration)
        r = _check_ranges(ranges, dim)
        starts = r[0]
        steps = (r[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        q = np.clip(np.floor((x - starts) / steps), 0, 255)
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
    bits = np.packbits(x > 0, axis=-1)
    return (bits - 128).astype(np.int8) if precision == "binary" else bits


def dequantize(codes: np.ndarray, precision: str, ranges: np.ndarray) -> np.ndarray:
    """int8 / uint8 codes -> float32 values at the start of their step, in the float query's coordinates
    (as sentence-transformers' `_dequantize_embeddings` does for rescoring)."""
    if precision not in ("int8", "uint8"):
        raise InputError(f"dequantize takes int8 or uint8 codes, got precision={precision!r}.")
    codes = np.asarray(codes)
    if codes.dtype != np.dtype(precision):
        raise InputError(f"precision={precision!r} codes must be {precision} values, got {codes.dtype}; pass the "
                         f"precision the codes were made with.", param="precision")
    r = _check_ranges(ranges, codes.shape[-1])
    steps = (r[1] - r[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    q = codes.astype(np.float64) + (128 if precision == "int8" else 0)
    return (q * steps + r[0]).astype(np.float32)


def unpack_binary(codes: np.ndarray, precision: str) -> np.ndarray:
    """binary / ubinary codes -> uint8 packed bits (ubinary's layout)."""
    if precision == "binary":
        return (codes.astype(np.int16) + 128).astype(np.uint8)
    if precision == "ubinary":
        return codes.astype(np.uint8, copy=False)
    raise InputError(f"expected binary or ubinary codes, got precision={precision!r}.")


def hamming_distances(query: np.ndarray, codes: np.ndarray, precision: str = "ubinary") -> np.ndarray:
    """Hamming distance between one packed query code [bytes] and packed codes [n, bytes] -> [n] int."""
    q = unpack_binary(np.asarray(query).reshape(1, -1), precision)
    c = unpack_binary(np.asarray(codes), precision)
    if q.shape[1] != c.shape[1]:
        raise InputError(f"query code has {q.shape[1]} bytes, the codes have {c.shape[1]}.")
    return _POPCOUNT[np.bitwise_xor(c, q)].sum(axis=1, dtype=np.int64)


def save_ranges(path: str | os.PathLike[str], ranges: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write calibration ranges as JSON ({"min": [...], "max": [...]}) atomically."""
    from .files import write_json_atomic

    r = _check_ranges(ranges, None)  # a wrong shape would write a file no loader can use
    return write_json_atomic(path, {"min": r[0].tolist(), "max": r[1].tolist()}, overwrite=overwrite, indent=None)


def load_ranges(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ranges saved by `save_ranges` (or a .npy of shape [2, dim])."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"ranges file {p} does not exist; write one with --save-ranges first.")
    try:
        if p.suffix == ".npy":
            r = np.load(p, allow_pickle=False)
        else:
            raw = json.loads(p.read_text(encoding="utf-8"))
            r = np.asarray([raw["min"], raw["max"]], dtype=np.float32)
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"ranges file {p} is not a JSON object with 'min' and 'max' lists of equal length, nor a "
                         f".npy array of shape [2, dim] ({e}); write it with save_ranges.") from None
    try:
        return _check_ranges(r, None)
    except InputError as e:
        raise InputError(f"ranges file {p}: {e}") from None


def bytes_per_vector(dim: int, precision: str) -> int:
    """Storage of one vector in bytes."""
    check_precision(precision, dim)
    return {"float32": 4 * dim, "float16": 2 * dim, "int8": dim, "uint8": dim}.get(precision, dim // 8)
