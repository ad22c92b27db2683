"""Strict weight loading (and, re-exported from the torch-free `hub.py`, checkpoint resolution).

`resolve_model_dir` (`hub.py`) turns a local folder or a hub id into a folder (the local hub cache first,
a download second, a clear error when offline; never a silent fallback). `load_trunk` reads single or
sharded safetensors, strips the `model.` prefix of causal-LM / sequence-classification saves, builds
the trunk on the meta device and loads with `strict=True, assign=True` after comparing key sets
itself so that a mismatch is reported readably. Reranker heads are reduced to the one vector that
scores: W[yes] - W[no] of lm_head (or of the tied embedding), or the converted `score.weight` row.
Only those two rows of lm_head are read from disk. A tensor holding NaN or inf is refused by name
(`check_finite`, issue 23): such a checkpoint only ever gives NaN vectors and scores.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .config import ModelConfig
from .errors import WeightsError
from .hub import FINGERPRINT_BLOCK as FINGERPRINT_BLOCK  # hub.py's public names: weights.<name> keeps working
from .hub import FINGERPRINT_SAMPLES as FINGERPRINT_SAMPLES
from .hub import HUB_FILES as HUB_FILES
from .hub import resolve_model_dir as resolve_model_dir
from .hub import safetensors_files as safetensors_files
from .hub import weights_fingerprint as weights_fingerprint
from .model import Qwen3Model
from .settings import float_dtype_name, weights_dtype_name


class WeightReader:
    """Maps key -> shard over a checkpoint's safetensors files, turning header damage into WeightsError.

    `keep_open=True` (loading) keeps every shard open (memory-mapped) for fast repeated reads.
    `keep_open=False` (streaming, as merging does) opens a shard for each read and closes it again, so
    that the pages of tensors already read do not stay mapped: reading a whole checkpoint then needs
    about one tensor of memory, not the checkpoint's size. Shapes and dtypes come from the headers.
    """

    def __init__(self, files: list[Path], device: str = "cpu", *, keep_open: bool = True) -> None:
        self.device = device
        self.handles: dict[Path, Any] = {}
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, str] = {}  # safetensors codes: F32, BF16, ...
        for f in files:
            h = self._open(f)
            for k in h.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                self.where[k] = f
                sl = h.get_slice(k)
                self.shapes[k], self.dtypes[k] = tuple(sl.get_shape()), sl.get_dtype()
            if keep_open:
                self.handles[f] = h
            else:
                h.__exit__(None, None, None)

    def _open(self, f: Path) -> Any:
        try:
            h = safe_open(str(f), framework="pt", device=self.device)
            return h.__enter__()
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{f} is not a readable safetensors file ({e}); it may be truncated: "
                               "download it again.") from None

    @contextlib.contextmanager
    def _handle(self, key: str) -> Iterator[Any]:
        f = self.where[key]
        if f in self.handles:
            yield self.handles[f]
            return
        h = self._open(f)
        try:
            yield h
        finally:
            h.__exit__(None, None, None)

    def keys(self) -> list[str]:
        """Every tensor name, shard by shard."""
        return list(self.where)

    def get(self, key: str) -> torch.Tensor:
        """One tensor, read from its shard (WeightsError when the file is damaged)."""
        try:
            with self._handle(key) as h:
                return h.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise WeightsError(f"{self.where[key]}: tensor {key!r} cannot be read ({e}); the file may be "
                               "truncated: download it again.") from None

    def rows(self, key: str, rows: list[int]) -> torch.Tensor:
        """Some rows of a 2-D tensor, read without the rest (the reranker's yes / no rows)."""
        try:
            with self._handle(key) as h:
                sl = h.get_slice(key)
                return torch.stack([sl[r : r + 1][0] for r in rows])
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise WeightsError(f"{self.where[key]}: rows of {key!r} cannot be read ({e}).") from None


def _summarise(keys: list[str], limit: int = 8) -> str:
    """Collapse layer numbers so that a report stays short: layers.{0..27}.mlp.up_proj.weight."""
    groups: dict[str, list[int]] = {}
    for k in keys:
        m = re.match(r"^(.*?layers\.)(\d+)(\..*)$", k)
        if m:
            groups.setdefault(m.group(1) + "{}" + m.group(3), []).append(int(m.group(2)))
        else:
            groups.setdefault(k, [])
    parts = []
    for pat, nums in sorted(groups.items()):
        if nums:
            nums.sort()
            span = str(nums[0]) if len(nums) == 1 else f"{nums[0]}..{nums[-1]}"
            parts.append(pat.replace("{}", "{" + span + "}"))
        else:
            parts.append(pat)
    more = f" (+{len(parts) - limit} more)" if len(parts) > limit else ""
    return ", ".join(parts[:limit]) + more


def iter_trunk_keys(reader_keys: list[str], cfg: ModelConfig) -> Iterator[tuple[str, str]]:
    """(key in file, key in the trunk) for every trunk tensor; heads are handled apart."""
    prefix = "" if cfg.kind == "embedding" else "model."
    for k in reader_keys:
        if k in ("lm_head.weight", "score.weight"):
            continue
        yield k, (k[len(prefix):] if prefix and k.startswith(prefix) else k)


def trunk_mapping(model_dir: Path, cfg: ModelConfig, reader_keys: list[str],
                  expected: set[str] | None = None) -> dict[str, str]:
    """{key in file: key in the trunk} for every trunk tensor, checked against the trunk of `cfg`.

    Raises WeightsError naming the missing / unexpected keys (layer numbers collapsed), or a causal-LM
    config over weights without the `model.` prefix. `expected` defaults to the keys of Qwen3Model(cfg).
    """
    if expected is None:
        with torch.device("meta"):
            expected = set(Qwen3Model(cfg).state_dict().keys())
    mapping = dict(iter_trunk_keys(reader_keys, cfg))
    found = set(mapping.values())
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if cfg.kind != "embedding" and not any(k.startswith("model.") for k in reader_keys):
        raise WeightsError(
            f"{model_dir}: config says {cfg.architecture} but no key starts with 'model.'; "
            "the weights look like an embedding (Qwen3Model) save. Fix `architectures` in config.json."
        )
    if missing or unexpected:
        msg = [f"{model_dir}: the weights do not match a {cfg.architecture} of this config."]
        if missing:
            msg.append(f"missing {len(missing)}: {_summarise(missing)}.")
        if unexpected:
            msg.append(f"unexpected {len(unexpected)}: {_summarise(unexpected)}.")
        msg.append("Check that config.json belongs to these weights.")
        raise WeightsError(" ".join(msg))
    return mapping


def all_finite(t: torch.Tensor) -> bool:
    """True when a tensor holds no NaN or inf. A float32 sum first (one read; NaN and inf reach it), the
    elementwise test only when the sum is not finite (large finite values can overflow a sum)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    return bool(torch.isfinite(t.sum(dtype=torch.float32))) or bool(torch.isfinite(t).all())


def check_finite(t: torch.Tensor, name: str, model_dir: Path) -> torch.Tensor:
    """`t`, or a WeightsError naming it when it holds NaN or inf (a broken conversion or training run)."""
    if not all_finite(t):
        bad = int((~torch.isfinite(t)).sum())
        raise WeightsError(f"{model_dir}: {name} holds {bad} NaN or infinite values of {t.numel()}; every vector "
                           "or score of this checkpoint would be NaN. Load an intact copy (an earlier training "
                           "checkpoint, or the original download).")
    return t


def load_trunk(
    model_dir: Path, cfg: ModelConfig, device: torch.device, dtype: torch.dtype,
    head_rows: tuple[int, int] | None = None, want_head: bool = True,
) -> tuple[Qwen3Model, torch.Tensor | None]:
    """Build the trunk and load its weights strictly; for rerankers also return the score vector [H].

    `head_rows` = (yes_id, no_id) for a causal-LM reranker: the vector is W[yes] - W[no] of lm_head,
    or of embed_tokens when the embeddings are tied (float32).
    """
    reader = WeightReader(safetensors_files(model_dir), "cpu")
    with torch.device("meta"):
        model = Qwen3Model(cfg)
    mapping = trunk_mapping(model_dir, cfg, reader.keys(), set(model.state_dict().keys()))
    state = {}
    for file_key, key in mapping.items():
        t = reader.get(file_key)
        want = model.state_dict()[key].shape
        if t.shape != want:
            raise WeightsError(f"{model_dir}: {file_key} has shape {list(t.shape)}, the config implies {list(want)}.")
        state[key] = check_finite(t.to(device=device, dtype=dtype), file_key, model_dir)  # on the device: fast
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    head = _head_vector(reader, cfg, model_dir, head_rows) if want_head else None
    return model, (None if head is None else check_finite(head, "the reranker head (yes - no row)", model_dir))


def _head_vector(
    reader: WeightReader, cfg: ModelConfig, model_dir: Path, head_rows: tuple[int, int] | None
) -> torch.Tensor | None:
    keys = set(reader.keys())
    if cfg.kind == "embedding":
        return None
    if cfg.kind == "seq-cls":
        if "score.weight" not in keys:
            raise WeightsError(f"{model_dir}: a Qwen3ForSequenceClassification checkpoint needs score.weight.")
        w = reader.get("score.weight")
        if tuple(w.shape) != (1, cfg.hidden_size):
            raise WeightsError(
                f"{model_dir}: score.weight has shape {list(w.shape)}; a converted Qwen3 reranker has "
                f"[1, {cfg.hidden_size}] (the yes - no row). Two-label classifiers are not Qwen3 rerankers."
            )
        return w[0].float()
    assert head_rows is not None
    name = "lm_head.weight" if "lm_head.weight" in keys else "model.embed_tokens.weight"
    if name != "lm_head.weight" and not cfg.tie_word_embeddings:
        raise WeightsError(f"{model_dir}: lm_head.weight is missing and tie_word_embeddings is false.")
    yes, no = reader.rows(name, list(head_rows)).float()
    return yes - no


def pick_device(device: str | torch.device | None) -> torch.device:
    """None -> CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise WeightsError(f"device {device!r} is not a torch device; use 'cpu', 'cuda' or 'cuda:N'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WeightsError(f"device {device!r} was asked for but CUDA is not available here; use the cpu device.")
    return dev


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> bfloat16 on CUDA, float32 elsewhere; strings like 'bf16' or 'float32' accepted
    (settings.float_dtype_name); int8 is the caller's (checkpoint.py)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    name = weights_dtype_name(None, str(device)) if dtype is None else float_dtype_name(dtype)
    dt: torch.dtype = getattr(torch, name)
    return dt
