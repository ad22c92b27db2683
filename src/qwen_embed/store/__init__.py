"""Vector stores: a small `VectorStore` protocol and its embedded LanceDB implementation.

The retrieval pipeline talks only to the protocol, so that a server-based engine can be added later
without touching it. `open_store` picks the implementation (LanceDB in a local folder by default).
"""

from .base import (
    ANN_MIN_ROWS,
    ChunkRows,
    StoreHit,
    TableInfo,
    TableNotFoundError,
    VectorStore,
    bind_where,
    check_compatible,
    check_metadata_name,
    sql_literal,
)
from .lance import LanceStore, open_store

__all__ = [
    "ANN_MIN_ROWS",
    "ChunkRows",
    "LanceStore",
    "StoreHit",
    "TableInfo",
    "TableNotFoundError",
    "VectorStore",
    "bind_where",
    "check_compatible",
    "check_metadata_name",
    "open_store",
    "sql_literal",
]
