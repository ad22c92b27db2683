"""Safetensors checkpoints written one tensor at a time: a single file, or shards under a size bound.

`plan_shards` splits an ordered list of `TensorSpec` (name, shape, dtype) into shards of at most
`max_shard_bytes` (a tensor larger than the bound gets a shard of its own); `split_shards` splits
into a given number of shards (what `tiny.py` asks for). `write_shards` writes each file's header
first (the layout is known from the specs) and then each tensor's bytes as a callback produces it,
so a writer holds one tensor at a time, never a shard. More than one shard gets Hugging Face's names
(`model-00001-of-00003.safetensors`) and `model.safetensors.index.json` (`weight_map`,
`metadata.total_size`); one shard is `model.safetensors`.

The format, from the safetensors specification: an 8-byte little-endian header length N, N bytes
of JSON (`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`, padded with
spaces to a multiple of 8 as the reference writer does), then the tensors' bytes, contiguous and in
offset order. `safe_open`, `safetensors.torch.load_file` and transformers read the result.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
CODE_DTYPES: dict[str, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the output: its name in the file, shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Consecutive groups of `specs`, each at most `max_shard_bytes` (or one tensor that is larger)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def split_shards(specs: list[TensorSpec], shards: int) -> list[list[TensorSpec]]:
    """`specs` in `shards` consecutive groups whose tensor counts differ by at most one (the first ones hold
    the extra), at most one group per tensor and at least one group ([[]] for no tensor)."""
    if not specs:
        return [[]]
    k = min(max(1, shards), len(specs))
    per, extra = divmod(len(specs), k)
    groups, start = [], 0
    for g in range(k):
        end = start + per + (g < extra)
        groups.append(specs[start:end])
        start = end
    return groups


def shard_names(n: int) -> list[str]:
    """File names of n shards, as transformers' save_pretrained names them."""
    return [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def _header(specs: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    entries: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for s in specs:
        entries[s.name] = {"dtype": DTYPE_CODES[s.dtype], "shape": list(s.shape),
                           "data_offsets": [offset, offset + s.nbytes]}
        offset += s.nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


def write_shards(folder: Path, shards: list[list[TensorSpec]], produce: Callable[[TensorSpec], torch.Tensor],
                 metadata: dict[str, str] | None = None) -> list[Path]:
    """Write the planned shards into `folder`, asking `produce(spec)` for each tensor in order.

    Each produced tensor must have the spec's shape and dtype (checked). `metadata` is added to every
    file's `{"format": "pt"}`. The plan is checked before any file is opened: a tensor name given twice
    or a dtype safetensors cannot store is a ValueError. Returns the files written (the index, when
    there is one, last).
    """
    meta = {"format": "pt", **(metadata or {})}
    seen: set[str] = set()
    for s in (s for specs in shards for s in specs):
        if s.name in seen or s.name == "__metadata__":
            raise ValueError(f"tensor name {s.name!r} is given twice or reserved; a safetensors file maps each "
                             "name to one tensor")
        if s.dtype not in DTYPE_CODES:
            raise ValueError(f"tensor {s.name}: dtype {s.dtype} cannot be stored in safetensors")
        seen.add(s.name)
    names = shard_names(len(shards))
    written: list[Path] = []
    weight_map: dict[str, str] = {}
    for name, specs in zip(names, shards, strict=True):
        path = folder / name
        with path.open("wb") as f:
            f.write(_header(specs, meta))
            for s in specs:
                t = produce(s)
                if tuple(t.shape) != s.shape or t.dtype != s.dtype:
                    raise AssertionError(f"{s.name}: produced {tuple(t.shape)} {t.dtype}, planned {s.shape} {s.dtype}")
                data = t.detach().to("cpu").contiguous().reshape(-1)
                if data.numel():
                    f.write(data.view(torch.uint8).numpy().data)
                weight_map[s.name] = name
        written.append(path)
    if len(shards) > 1:
        total = sum(s.nbytes for specs in shards for s in specs)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2), encoding="utf-8")
        written.append(folder / INDEX_NAME)
    return written
