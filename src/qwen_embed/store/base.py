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

import contextlib
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
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_metadata_name(key: str, doc_id: str) -> None:
    """A metadata field becomes a column that `--where` names in SQL: letters, digits and '_', not reserved."""
    if key in RESERVED_COLUMNS or not _COLUMN_NAME.match(key):
        raise InputError(f"metadata field {key!r} of document {doc_id!r} cannot be a column: use a name of "
                         f"letters, digits and '_' other than {', '.join(RESERVED_COLUMNS)}.")


def model_name(model: str) -> str:
    """Short model name used to recognise one model under different spellings (hub id, cache path, folder)."""
    m = _HUB_CACHE.search(model.replace("\\", "/"))
    if m:
        return m.group(2)
    return Path(model.rstrip("/\\")).name or model


_PARAM = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")


def sql_literal(value: Any) -> str:
    """A value as a SQL literal: strings quoted (quotes doubled), numbers and booleans as written, None NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(f"filter parameter {value!r} is not a finite number.")
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise InputError(f"filter parameter of type {type(value).__name__} cannot be bound; pass a string, number, "
                     f"boolean or None.")


def _outside_strings(where: str) -> str:
    """The filter with the contents of its string literals blanked out ('...' with '' as an escaped quote)."""
    out, quoted, i = [], False, 0
    while i < len(where):
        c = where[i]
        if c == "'":
            if quoted and where[i + 1 : i + 2] == "'":
                out.append("  ")
                i += 2
                continue
            quoted = not quoted
            out.append(c)
        else:
            out.append(" " if quoted else c)
        i += 1
    if quoted:
        raise InputError(f"filter {where!r} has an unterminated string literal; close its quote.")
    return "".join(out)


def bind_where(where: str | None, params: dict[str, Any] | None = None) -> str | None:
    """Check a metadata filter and bind its `:name` parameters as quoted literals.

    A filter is one boolean SQL expression over the table's columns: a `;` (a second statement) or a
    comment (`--`, `/*`) outside string literals is refused rather than silently cut. With `params`,
    `:name` placeholders outside string literals are replaced by `sql_literal(params[name])`, so values
    from users never become SQL: `bind_where("topic = :t", {"t": "a' OR 1=1"})`.
    """
    if where is None:
        if params:
            raise InputError("filter parameters were given without a filter; pass where='... :name ...'.")
        return None
    if not isinstance(where, str) or not where.strip():
        raise InputError(f"filter must be a non-empty string, got {where!r}.")
    bare = _outside_strings(where)
    for bad, what in ((";", "a second statement (';')"), ("--", "a comment ('--')"), ("/*", "a comment ('/*')")):
        if bad in bare:
            raise InputError(f"filter {where!r} holds {what}; a filter is one expression such as "
                             f"\"topic = 'x' AND year > 2000\". Use parameters to match values that contain it.")
    names = _PARAM.findall(bare)
    if not params:
        if names:
            raise InputError(f"filter {where!r} has parameter :{names[0]} but no value was given for it.")
        return where
    missing = [n for n in names if n not in params]
    if missing:
        raise InputError(f"filter {where!r}: no value for parameter :{missing[0]} (given: {', '.join(params)}).")
    unused = [n for n in params if n not in names]
    if unused:
        raise InputError(f"filter parameter {unused[0]!r} does not appear in {where!r} as :{unused[0]}.")
    out, last = [], 0
    for m in _PARAM.finditer(bare):
        out.append(where[last : m.start()])
        out.append(sql_literal(params[m.group(1)]))
        last = m.end()
    out.append(where[last:])
    return "".join(out)


class TableNotFoundError(InputError):
    """The database folder or the table does not exist (yet)."""


@dataclass(frozen=True)
class TableInfo:
    """How a table was made; stored as JSON in the table's schema metadata."""

    model: str  # hub id as given, or the path of a local folder (where to load it from by default)
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
    weights_fingerprint: str = ""  # weights.weights_fingerprint: identifies the model wherever it lies

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
                     precision: str | None = None, weights_fingerprint: str | None = None) -> None:
    """Raise InputError when a model, dimension or precision differs from what the table records.

    With both weights fingerprints known (tables made since they were recorded), the weights decide:
    the same weights in a moved folder or under a hub id are accepted, other weights are refused.
    Otherwise two spellings of one model (hub id vs cache folder) match by name, tokenizer and hidden
    size; pass the tokenizer fingerprint and hidden size once the model is loaded to complete that check.
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
    if model is None:
        return
    if weights_fingerprint and info.weights_fingerprint:
        if weights_fingerprint != info.weights_fingerprint:
            raise InputError(
                f"table {table!r} was indexed with model {info.model_name!r} (weights "
                f"{info.weights_fingerprint[:12]}), but {model!r} holds other weights ({weights_fingerprint[:12]}): "
                f"vectors of different models cannot "
                f"be compared. Pass the table's model with --model, or index into a new --table."
            )
        return
    if model == info.model:
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

    def maintenance_due(self) -> bool:
        """Whether `maintain` has work to do (also after a run that died before its maintenance)."""
        ...

    def writing(self) -> contextlib.AbstractContextManager[None]:
        """The table's writer lock: one writer at a time, readers never wait."""
        ...

    def duplicate_doc_ids(self) -> set[str]:
        """Documents with a chunk id stored more than once."""
        ...

    def has_ann_index(self) -> bool:
        """Whether searches go through an ANN index (else they are exact)."""
        ...

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """All chunk ids and their vectors (for checks and exports)."""
        ...
