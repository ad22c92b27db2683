"""The frames HTTP workers and model processes exchange over a Unix socket (`serve --workers N`).

A frame is a fixed header (`HEAD`) and a payload of raw bytes, no pickling:

| kind | direction | a, b | payload |
|---|---|---|---|
| `REQUEST` | worker -> model | sequences n, tokens T | lengths int32 [n], then token ids int32 [T] |
| `CANCEL` | worker -> model | - | none: the client left, or the drain deadline passed |
| `ROWS` | model -> worker | rows, columns (0: a vector) | the rows, dtype `code` ("f" float32, "d" float64) |
| `ERROR` | model -> worker | - | the error's class name, a NUL, its message (UTF-8) |

A `REQUEST` whose `code` is `WARMUP` (a worker's warm-up) runs outside the queue and its metrics. `ROWS`
carries the seconds the request waited in the model's queue and ran in forward passes (the
x-queue-time and x-inference-time headers). Each request has an id that its worker chose; a model process
answers each id once, or not at all after a `CANCEL`.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

HEAD = struct.Struct("<BBQIIQdd")  # kind, code, id, a, b, payload bytes, queue seconds, inference seconds
REQUEST, CANCEL, ROWS, ERROR = 1, 2, 3, 4
WARMUP = 1
DTYPES: dict[int, np.dtype[np.floating]] = {ord("f"): np.dtype("<f4"), ord("d"): np.dtype("<f8")}


@dataclass
class Frame:
    """One decoded frame (module docstring)."""

    kind: int
    id: int
    code: int = 0
    a: int = 0
    b: int = 0
    payload: bytes = b""
    queue_s: float = 0.0
    inference_s: float = 0.0


def request(rid: int, seqs: Sequence[Sequence[int]], warmup: bool = False) -> list[bytes]:
    """A REQUEST frame's parts: header, lengths, ids."""
    lengths = np.fromiter((len(s) for s in seqs), dtype="<i4", count=len(seqs))
    total = int(lengths.sum())
    ids = np.fromiter(itertools.chain.from_iterable(seqs), dtype="<i4", count=total)
    return [HEAD.pack(REQUEST, WARMUP if warmup else 0, rid, len(seqs), total, 4 * (len(seqs) + total), 0.0, 0.0),
            lengths.tobytes(), ids.tobytes()]


def sequences(frame: Frame) -> list[list[int]]:
    """A REQUEST frame's sequences."""
    lengths = np.frombuffer(frame.payload, dtype="<i4", count=frame.a)
    ids = np.frombuffer(frame.payload, dtype="<i4", count=frame.b, offset=4 * frame.a).tolist()
    bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    return [ids[a:b] for a, b in itertools.pairwise(bounds)]


def cancel(rid: int) -> bytes:
    """A CANCEL frame (header only)."""
    return HEAD.pack(CANCEL, 0, rid, 0, 0, 0, 0.0, 0.0)


def rows(rid: int, out: np.ndarray, queue_s: float, inference_s: float) -> list[bytes]:
    """A ROWS frame's parts: header, the array's bytes (float32 or float64, as the model gave them)."""
    code = "d" if out.dtype == np.float64 else "f"
    data = np.ascontiguousarray(out, dtype=DTYPES[ord(code)])
    cols = 0 if data.ndim == 1 else data.shape[1]
    return [HEAD.pack(ROWS, ord(code), rid, data.shape[0], cols, data.nbytes, queue_s, inference_s), data.tobytes()]


def array(frame: Frame) -> np.ndarray:
    """A ROWS frame's array (writable: one copy, as torch.from_numpy wants)."""
    out = np.frombuffer(bytearray(frame.payload), dtype=DTYPES[frame.code])
    return out if frame.b == 0 else out.reshape(frame.a, frame.b)


def error(rid: int, name: str, message: str) -> list[bytes]:
    """An ERROR frame's parts: the error's class name and message."""
    data = f"{name}\0{message}".encode("utf-8", "replace")
    return [HEAD.pack(ERROR, 0, rid, 0, 0, len(data), 0.0, 0.0), data]


def error_of(frame: Frame) -> tuple[str, str]:
    """An ERROR frame's (class name, message)."""
    name, _, message = frame.payload.decode("utf-8", "replace").partition("\0")
    return name, message


async def read(reader: asyncio.StreamReader) -> Frame:
    """The next frame (asyncio.IncompleteReadError at the end of the stream)."""
    kind, code, rid, a, b, size, queue_s, inference_s = HEAD.unpack(await reader.readexactly(HEAD.size))
    payload = await reader.readexactly(size) if size else b""
    return Frame(kind, rid, code, a, b, payload, queue_s, inference_s)
