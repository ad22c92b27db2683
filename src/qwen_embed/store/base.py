"""The `VectorStore` protocol and the plain records it exchanges with the retrieval pipeline.

A store holds one table of chunk rows: `id` (chunk id), `doc_id`, `chunk` (its number in the
document), `text`, `title`, `hash` (content hash of the whole document), `vector` (float32, unit
length) and one column per metadata field. A document is replaced as a whole, atomically: its chunks
are written and its stale chunks deleted in one commit, so that an interrupted run never leaves a
document half-indexed or duplicated.

`TableInfo` is what the table records about how it was made (model, Matryoshka dimension, precision of
the stored vectors, query instruction, tokenizer fingerprint, chunking); `check_compatible` refuses to
mix models, dimensions or precisions.

Precision (`quantize.py`): `float32` (default), `float16`, `int8` / `uint8` (scalar codes with the
table's calibration ranges) or `binary` / `ubinary` (sign bits, searched by Hamming distance, with int8
codes kept beside them for rescoring the best `k * rescore_multiplier` candidates with the float query).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import InputError

# Tables with at least this many rows get an ANN index (IVF + int8 scalar quantisation, exact re-scoring
# of the best candidates); smaller tables are searched exactly. See LanceStore.maintain.
ANN_MIN_ROWS = 20_000
INFO_KEY = b"qwen_embed"
RESERVED_COLUMNS = ("id", "doc_id", "chunk", "text", "title", "hash", "vector", "rescore")
_HUB_CACHE = re.compile(r"models--([^/]+)--([^/]+)/snapshots/")


def model_name(model: str) -> str:
    """Short model name used to recognise one model under different spellings (hub id, cache path, folder)."""
    m = _HUB_CACHE.search(model.replace("\\", "/"))
    if m:
        return m.group(2)
    return Path(model.rstrip("/\\")).name or model


class TableNotFoundError(InputError):
    """The database folder or the table does not exist (yet)."""


@dataclass(frozen=True)
class TableInfo:
    """How a table was made; stored as JSON in the table's schema metadata."""

    model: str  # hub id as given, or the absolute path of a local folder
    dim: int  # Matryoshka dimension of the stored vectors
    hidden_size: int
    tokenizer_fingerprint: str
    query_instruction: str  # default instruction of the query template; documents get none
    chunk_tokens: int
    overlap: int
    max_length: int
    document_instruction: str | None = None
    model_name: str = ""
    format: int = 1
    precision: str = "float32"  # of the stored vectors: see quantize.PRECISIONS
    ranges: list[list[float]] | None = None  # int8 calibration [[min...], [max...]] (int8/uint8/binary tables)

    def __post_init__(self) -> None:
        if not self.model_name:
            object.__setattr__(self, "model_name", model_name(self.model))
        from ..quantize import check_precision

        check_precision(self.precision, self.dim)

    @property
    def needs_ranges(self) -> bool:
        """Whether the stored codes need calibration ranges (int8/uint8 codes, or binary's rescore codes)."""
        return self.precision not in ("float32", "float16")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TableInfo:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def check_compatible(info: TableInfo, table: str, *, model: str | None = None, dim: int | None = None,
                     hidden_size: int | None = None, tokenizer_fingerprint: str | None = None,
                     precision: str | None = None) -> None:
    """Raise InputError when a model, dimension or precision differs from what the table records.

    Two spellings of one model (hub id vs cache folder) match by name, tokenizer and hidden size; pass
    the fingerprint and hidden size once the model is loaded to complete that check.
    """
    if dim is not None and dim != info.dim:
        raise InputError(
            f"table {table!r} holds {info.dim}-dim vectors but dim={dim} was asked; use --dim {info.dim} "
            f"(or leave it out) or index into a new --table."
        )
    if precision is not None and precision != info.precision:
        raise InputError(
            f"table {table!r} stores {info.precision} vectors but precision={precision!r} was asked; vectors of "
            f"different precisions are not mixed in one table: leave --precision out or index into a new --table."
        )
    if model is None or model == info.model:
        return
    same = model_name(model) == info.model_name
    if same and tokenizer_fingerprint is not None:
        same = tokenizer_fingerprint == info.tokenizer_fingerprint
    if same and hidden_size is not None:
        same = hidden_size == info.hidden_size
    if not same:
        raise InputError(
            f"table {table!r} was indexed with model {info.model!r}, not {model!r}: vectors of different "
            f"models cannot be compared. Leave --model out (the table's model is the default) or index into "
            f"a new --table."
        )


@dataclass
class ChunkRows:
    """Rows to write, one per chunk; `vectors` is float32 [n, dim]."""

    ids: list[str]
    doc_ids: list[str]
    chunks: list[int]
    texts: list[str]
    titles: list[str]
    hashes: list[str]
    metadata: list[dict[str, Any]]
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class StoreHit:
    """One stored chunk found by a vector search; `score` is the cosine similarity."""

    id: str
    doc_id: str
    chunk: int
    text: str
    title: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)


class VectorStore(Protocol):
    """What the retrieval pipeline needs from a vector store."""

    info: TableInfo
    name: str

    def count(self) -> int:
        """Number of stored chunk rows."""
        ...

    def doc_hashes(self) -> dict[str, str]:
        """doc_id -> content hash of every stored document."""
        ...

    def replace_documents(self, doc_ids: Sequence[str], rows: ChunkRows) -> None:
        """Write the chunks of `doc_ids` and delete their other stored chunks, in one atomic commit."""
        ...

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete every chunk of these documents; returns the number of rows deleted."""
        ...

    def search(self, vector: np.ndarray, k: int, *, where: str | None = None, exact: bool = False,
               nprobes: int | None = None, refine_factor: int | None = None,
               rescore_multiplier: int | None = None) -> list[StoreHit]:
        """The k stored chunks nearest to a unit float `vector`, best first; `where` filters metadata (SQL).
        Binary tables rescore the best `k * rescore_multiplier` Hamming candidates with the float query."""
        ...

    def maintain(self) -> str | None:
        """Build or refresh the ANN index and compact storage when due; returns what was done."""
        ...

    def has_ann_index(self) -> bool:
        """Whether searches go through an ANN index (else they are exact)."""
        ...

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """All chunk ids and their vectors (for checks and exports)."""
        ...
