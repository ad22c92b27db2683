"""The report's consistency filter: keep a pair only if its query-passage cosine exceeds a threshold.

Stage 2 of the Qwen3 Embedding recipe keeps the synthetic pairs whose cosine similarity is greater
than 0.7. The query is embedded as training will embed it (`Instruct: {instruction}\\nQuery:{query}`,
the row's instruction or `default_instruction`), the passage (the row's `positive`, or the first of
`positives`) as a document; cosine = dot product of the L2-normalised embeddings. A pair is kept when
cosine > `min_cos` (strictly). Exact duplicates (the same query and positive) are dropped before
embedding, the first one kept. Rows stream through in chunks; kept rows are written as they were,
with `meta.cos` added, to a temporary sibling renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ..embedder import DEFAULT_INSTRUCTION
from ..errors import InputError
from ..files import atomic_file, check_output_file
from ..jsonl import iter_jsonl
from ..train.data import parse_row
from .settings import DEFAULT_MIN_COS

if TYPE_CHECKING:
    from ..embedder import Embedder



def _pair_key(query: str, positive: str) -> bytes:
    return hashlib.sha256(json.dumps([query, positive], ensure_ascii=False).encode("utf-8")).digest()


def _cosines(embedder: Embedder, queries: list[str], instructions: list[str], positives: list[str],
             dim: int | None) -> np.ndarray:
    """Cosine of each (query with its instruction, positive) pair; queries grouped by instruction."""
    q = np.zeros((len(queries), dim or embedder.hidden_size), dtype=np.float32)  # [n, d]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ins in enumerate(instructions):
        groups[ins].append(i)
    for ins, idx in groups.items():
        q[idx] = embedder.encode([queries[i] for i in idx], instruction=ins, dim=dim)
    p = embedder.encode(positives, dim=dim)  # [n, d]
    return np.einsum("nd,nd->n", q, p)


def filter_pairs(input: str | Path, output: str | Path, *, embedder: Embedder, min_cos: float = DEFAULT_MIN_COS,
                 default_instruction: str = DEFAULT_INSTRUCTION, dim: int | None = None, chunk: int = 4096,
                 overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Write the rows of `input` whose cosine exceeds `min_cos`, without exact duplicates; returns counts."""
    if not -1.0 <= min_cos <= 1.0:
        raise InputError(f"min_cos={min_cos} is not a cosine; use a value in -1..1 (the report uses 0.7).")
    if chunk < 1:
        raise InputError(f"chunk={chunk} must be >= 1.")
    src = Path(input)
    if not src.is_file():
        raise InputError(f"pairs file {src} does not exist or is not a file.")
    check_output_file(output, overwrite=overwrite)
    seen: set[bytes] = set()
    counts = {"rows": 0, "duplicates": 0, "below_min_cos": 0, "kept": 0}
    cos_sum = 0.0
    bar = tqdm(disable=not progress, unit="pair", desc="filter")

    def flush(rows: list[dict[str, Any]], out: Any) -> None:
        nonlocal cos_sum
        if not rows:
            return
        examples = [parse_row(r, f"{src}") for r in rows]
        cos = _cosines(embedder, [e.query for e in examples], [e.instruction or default_instruction for e in examples],
                       [e.positives[0] for e in examples], dim)
        for row, c in zip(rows, cos.tolist(), strict=True):
            cos_sum += c
            if c > min_cos:
                meta: dict[str, Any] = row["meta"] if isinstance(row.get("meta"), dict) else {}
                out.write(json.dumps({**row, "meta": {**meta, "cos": round(c, 6)}}, ensure_ascii=False) + "\n")
                counts["kept"] += 1
            else:
                counts["below_min_cos"] += 1
        bar.update(len(rows))

    with src.open(encoding="utf-8-sig") as f, atomic_file(output, overwrite=overwrite) as out:
        rows: list[dict[str, Any]] = []
        for n, obj in iter_jsonl(f, str(src)):
            ex = parse_row(obj, f"{src}:{n}")
            counts["rows"] += 1
            key = _pair_key(ex.query, ex.positives[0])
            if key in seen:
                counts["duplicates"] += 1
                continue
            seen.add(key)
            rows.append(obj)
            if len(rows) == chunk:
                flush(rows, out)
                rows = []
        flush(rows, out)
        if counts["rows"] == 0:  # raised before the rename: an existing output stays as it was
            raise InputError(f"pairs file {src} holds no rows.")
    bar.close()
    scored = counts["rows"] - counts["duplicates"]
    return {**counts, "min_cos": min_cos, "mean_cos": cos_sum / scored if scored else None, "output": str(output)}
