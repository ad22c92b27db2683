"""Checkpoint merging (stage 3 of the Qwen3 Embedding recipe): linear, slerp, multislerp, task-slerp, LoRA.

Pure per-tensor functions in one `{name: function}` table (`METHODS`), driven by one streaming loop:

- `linear`:     sum_i w_i x_i with the weights normalised to sum 1 (a model soup; mergekit's `linear`,
                mergekit/merge_methods/linear.py).
- `slerp`:      two models, t in [0, 1], as mergekit's `slerp` (mergekit/merge_methods/slerp.py): the
                tensors are flattened; normalised copies give only the angle, dot = <v0/|v0|, v1/|v1|>
                (a norm <= 1e-8 is left as is); when |dot| > 0.9995 the result is the linear
                interpolation (1 - t) v0 + t v1, else sin((1 - t) theta) / sin(theta) v0 +
                sin(t theta) / sin(theta) v1 with theta = acos(dot), applied to the original tensors.
                t = 0 gives the first model, t = 1 the second, bit for bit.
- `multislerp`: N >= 2 models with weights, as mergekit's `multislerp`
                (mergekit/merge_methods/multislerp.py): with an optional base, x_i = model_i - base;
                u_i = x_i / (|x_i| + eps); the weighted mean m of the u_i, normalised, is the point
                whose tangent space holds the weighted mean of the projected u_i, mapped back with the
                exponential map and scaled by sum_i w_i |x_i|; the base is added back. When |m| < eps
                two models fall back to the weighted sum (more refuse, as mergekit does).
- `task-slerp`: base + slerp of the two task vectors (model - base), as mergekit's `nuslerp` with a base
                and its defaults (flattened, not row-wise; mergekit/merge_methods/nuslerp.py): linear
                interpolation only when 1 - cos^2 <= eps^2 (mergekit's own colinearity test there).
- LoRA (`merge_adapter`, the `merge-lora` command): W + (alpha / r) B @ A per adapted projection
                (alpha / sqrt(r) with rsLoRA), peft's own merge formula.

Departures from mergekit, none visible beyond float rounding: the arithmetic is float32 (float64 for
float64 inputs) and the result takes the first model's dtype, as mergekit's slerp does; dot products
and norms are summed in chunks, as mergekit's current slerp does, so that scratch memory stays bounded
(norms and the report's angles accumulate in float64); a tensor that is identical in every input is
copied, not recomputed (any weighted interpolation of equal points is that point), so frozen or
untouched tensors keep their exact bits.

Streaming: every input is read through the loader's `WeightReader` in its streaming mode (a shard is
opened for each tensor and closed again), keys are matched through the loader's own trunk mapping, and
the output is written by `shards.write_shards` one tensor at a time into size-bounded shards, inside
`files.atomic_dir` (a temporary sibling renamed into place), so a failure leaves nothing behind and
memory stays near one tensor per input. The output keeps the first model's layout (key names, head,
config and tokenizer files). `merge_report.json` records, per tensor group (embeddings, attention,
mlp, norms, head), the angle between the inputs (task vectors when there is a base) and how many
tensors fell back to linear interpolation: checkpoints of one run are often almost colinear, where
slerp equals a soup.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import InputError, WeightsError
from ..files import atomic_dir, check_output_dir
from ..hub import copy_side_files, is_weight_file
from ..shards import CODE_DTYPES, TensorSpec, plan_shards, write_shards
from ..weights import WeightReader, resolve_model_dir, safetensors_files, trunk_mapping

DOT_THRESHOLD = 0.9995  # mergekit slerp: |cos| above this is treated as colinear
EPS = 1e-8
CHUNK = 1 << 20  # elements per chunk of a dot product or norm
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
HEAD_KEYS = ("lm_head.weight", "score.weight")
GROUPS = ("embeddings", "attention", "mlp", "norms", "head", "other")
REPORT_NAME = "merge_report.json"


# -- per-tensor arithmetic -----------------------------------------------------------------------
@dataclass(frozen=True)
class Merged:
    """One merged tensor and whether its method fell back to linear interpolation."""

    tensor: torch.Tensor
    linear_fallback: bool = False


def _dot(a: torch.Tensor, b: torch.Tensor, origin: torch.Tensor | None = None) -> float:
    """<a - origin, b - origin> of flat tensors, summed in chunks into a float64 accumulator."""
    total = 0.0
    for i in range(0, a.numel(), CHUNK):
        x, y = a[i : i + CHUNK], b[i : i + CHUNK]
        if origin is not None:
            x, y = x - origin[i : i + CHUNK], y - origin[i : i + CHUNK]
        total += float((x * y).sum(dtype=torch.float64))
    return total


def _norm(a: torch.Tensor, origin: torch.Tensor | None = None) -> float:
    return math.sqrt(_dot(a, a, origin))


def _unit_dot(a: torch.Tensor, b: torch.Tensor, na: float, nb: float) -> float:
    """<a / na, b / nb> in float32 chunks: the normalised copies only ever exist one chunk at a time."""
    total = torch.zeros((), dtype=a.dtype)
    for i in range(0, a.numel(), CHUNK):
        total += ((a[i : i + CHUNK] / na) * (b[i : i + CHUNK] / nb)).sum()
    return float(total)


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> Merged:
    """sum_i w_i x_i (weights already normalised)."""
    out = tensors[0] * weights[0]
    for x, w in zip(tensors[1:], weights[1:], strict=True):
        out += x * w
    return Merged(out, linear_fallback=True)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = DOT_THRESHOLD,
          eps: float = EPS) -> Merged:
    """mergekit's slerp of two flat tensors (see the module docstring)."""
    n0, n1 = _norm(v0), _norm(v1)
    dot = _unit_dot(v0, v1, n0 if n0 > eps else 1.0, n1 if n1 > eps else 1.0)
    dot = min(1.0, max(-1.0, dot))
    if abs(dot) > dot_threshold:
        return Merged((1 - t) * v0 + t * v1, linear_fallback=True)
    theta = torch.acos(torch.tensor(dot, dtype=v0.dtype))
    sin_theta = torch.sin(theta)
    s0 = torch.sin((1 - t) * theta) / sin_theta
    s1 = torch.sin(t * theta) / sin_theta
    return Merged(s0 * v0 + s1 * v1)


def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = EPS) -> Merged:
    """mergekit's nuslerp of two flat tensors (flatten=True, not row-wise)."""
    n0, n1 = max(_norm(v0), 1e-7), max(_norm(v1), 1e-7)
    cos = min(1.0, max(-1.0, _unit_dot(v0, v1, n0, n1)))
    if 1 - cos * cos <= eps * eps:
        return Merged((1 - t) * v0 + t * v1, linear_fallback=True)
    theta = torch.acos(torch.tensor(cos, dtype=v0.dtype))
    sin_theta = torch.sin(theta)
    return Merged((torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin_theta)


def multislerp(tensors: Sequence[torch.Tensor], weights: Sequence[float], eps: float = EPS) -> Merged:
    """mergekit's multislerp of flat task vectors (base already subtracted; weights normalised)."""
    if len(tensors) == 1:
        return Merged(tensors[0])
    norms = [_norm(x) for x in tensors]
    mean = torch.zeros_like(tensors[0])
    for x, n, w in zip(tensors, norms, weights, strict=True):
        mean += x / (n + eps) * w
    mean_norm = _norm(mean)
    if mean_norm < eps:
        if len(tensors) == 2:
            return Merged(tensors[0] * weights[0] + tensors[1] * weights[1], linear_fallback=True)
        raise InputError("multislerp: the weighted mean of the inputs' directions is zero (antipodal tensors "
                         "with balancing weights); choose other weights.")
    mean /= mean_norm
    tangent = torch.zeros_like(mean)
    for x, n, w in zip(tensors, norms, weights, strict=True):
        u = x / (n + eps)
        dot = float((u * mean).sum())
        tangent += (u - dot * mean) * w
    tangent_norm = torch.tensor(_norm(tangent) + eps, dtype=mean.dtype)
    result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    return Merged(result * sum(n * w for n, w in zip(norms, weights, strict=True)))


@dataclass(frozen=True)
class MergeParams:
    """The checked settings of one merge: normalised weights, t, and whether a base takes part."""

    method: str
    weights: tuple[float, ...]
    t: float | None
    uses_base: bool


MergeFn = Callable[[list[torch.Tensor], "torch.Tensor | None", MergeParams], Merged]


def _linear(xs: list[torch.Tensor], base: torch.Tensor | None, p: MergeParams) -> Merged:
    return linear(xs, p.weights)


def _slerp(xs: list[torch.Tensor], base: torch.Tensor | None, p: MergeParams) -> Merged:
    assert p.t is not None
    return slerp(p.t, xs[0], xs[1])


def _multislerp(xs: list[torch.Tensor], base: torch.Tensor | None, p: MergeParams) -> Merged:
    if base is None:
        return multislerp(xs, p.weights)
    m = multislerp([x - base for x in xs], p.weights)
    return Merged(m.tensor + base, m.linear_fallback)


def _task_slerp(xs: list[torch.Tensor], base: torch.Tensor | None, p: MergeParams) -> Merged:
    assert base is not None and p.t is not None
    m = nuslerp(p.t, xs[0] - base, xs[1] - base)
    return Merged(base + m.tensor, m.linear_fallback)


METHODS: dict[str, MergeFn] = {"linear": _linear, "slerp": _slerp, "multislerp": _multislerp,
                               "task-slerp": _task_slerp}


def check_params(method: str, n_models: int, *, base: bool, weights: Sequence[float] | None,
                 t: float | None) -> MergeParams:
    """Validate a merge's settings before any file is read; returns them normalised."""
    if method not in METHODS:
        raise InputError(f"merge method {method!r} is unknown; use one of {', '.join(METHODS)}.")
    two = method in ("slerp", "task-slerp")
    if two and n_models != 2:
        raise InputError(f"{method} merges exactly 2 models, got {n_models}; use multislerp or linear for more.")
    if n_models < 2:
        raise InputError(f"{method} needs at least 2 models, got {n_models}.")
    if method == "task-slerp" and not base:
        raise InputError("task-slerp needs --base BASE: the checkpoint both models were fine-tuned from.")
    if base and method in ("linear", "slerp"):
        raise InputError(f"{method} takes no --base; use task-slerp (two models) or multislerp with a base.")
    if t is not None and not two:
        raise InputError(f"{method} takes --weights, not --t; --t is for slerp and task-slerp.")
    if two and weights and t is not None:
        raise InputError(f"give {method} either --t or --weights, not both.")
    if weights is not None and len(weights) == 0:
        weights = None
    if weights is not None:
        if len(weights) != n_models:
            raise InputError(f"--weights has {len(weights)} values for {n_models} models; give one per model.")
        if method == "slerp":
            raise InputError("slerp takes --t (0 gives the first model, 1 the second), not --weights.")
        if not all(math.isfinite(w) for w in weights) or abs(sum(weights)) < 1e-6:
            raise InputError(f"--weights {list(weights)} must be finite and must not sum to 0.")
    w = [float(x) for x in weights] if weights is not None else [1.0] * n_models
    total = sum(w)
    w = [x / total for x in w]
    if two and t is None:
        t = w[1] if weights is not None else 0.5  # mergekit nuslerp: t = w1 / (w0 + w1)
    if t is not None and not (math.isfinite(t) and 0.0 <= t <= 1.0):
        raise InputError(f"--t {t} must be in [0, 1] (0 gives the first model, 1 the second).")
    return MergeParams(method, tuple(w), t, uses_base=base)


def parse_weights(text: str | None) -> list[float] | None:
    """'0.5,0.3,0.2' -> [0.5, 0.3, 0.2] (None for None or '')."""
    if not text:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"--weights {text!r} must be comma-separated numbers, e.g. 0.5,0.3,0.2.") from None


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '200KB' or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not m:
        raise InputError(f"shard size {text!r} must look like 5GB, 500MB or a byte count.")
    unit = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m[2].rstrip("B").rstrip("I")[:1]]
    if "I" in m[2]:
        unit = {1: 1, 10**3: 2**10, 10**6: 2**20, 10**9: 2**30, 10**12: 2**40}[unit]
    size = int(float(m[1]) * unit)
    if size < 1:
        raise InputError(f"shard size {text!r} must be at least one byte.")
    return size


# -- inputs and key matching ---------------------------------------------------------------------
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta")


@dataclass
class Source:
    """One input checkpoint opened for streaming: folder, config and {tensor id: key in its files}."""

    name: str
    path: Path
    config: ModelConfig
    reader: WeightReader
    keys: dict[str, str]  # tensor id (trunk key, or lm_head.weight / score.weight) -> key in the file

    @classmethod
    def open(cls, name: str | os.PathLike[str]) -> Source:
        """Resolve, parse config.json, read the shard headers and check the keys against the trunk."""
        path = resolve_model_dir(name)
        cfg = ModelConfig.from_file(path / "config.json")
        reader = WeightReader(safetensors_files(path), keep_open=False)
        mapping = trunk_mapping(path, cfg, reader.keys())
        keys = {trunk: file_key for file_key, trunk in mapping.items()}
        keys.update({k: k for k in HEAD_KEYS if k in reader.where})
        return cls(os.fspath(name), path, cfg, reader, keys)

    def shape(self, tid: str) -> tuple[int, ...]:
        """Shape of a tensor (from the header; nothing is read)."""
        return self.reader.shapes[self.keys[tid]]

    def get(self, tid: str) -> torch.Tensor:
        """Read one tensor (its shard is opened for this read only)."""
        return self.reader.get(self.keys[tid])


def check_compatible(sources: Sequence[Source]) -> None:
    """Same trunk shape in every config, and every tensor of the first present with its shape elsewhere."""
    first = sources[0]
    for s in sources[1:]:
        for f in _SHAPE_FIELDS:
            a, b = getattr(first.config, f), getattr(s.config, f)
            if a != b:
                raise WeightsError(f"{s.path} has {f}={b} but {first.path} has {f}={a}; only checkpoints of one "
                                   f"Qwen3 trunk shape merge.")
        for tid in first.keys:
            if tid not in s.keys:
                raise WeightsError(f"{s.path} has no tensor {tid!r} (in {first.path}: {first.keys[tid]} "
                                   f"{list(first.shape(tid))}); merge checkpoints with the same head, or put the "
                                   f"one with {tid} second.")
            if s.shape(tid) != first.shape(tid):
                raise WeightsError(f"tensor {tid!r} has shape {list(first.shape(tid))} in {first.path} but "
                                   f"{list(s.shape(tid))} in {s.path}; the checkpoints are of different shapes.")


def tensor_group(tid: str) -> str:
    """embeddings, attention, mlp, norms or head: the report's groups."""
    if tid in HEAD_KEYS:
        return "head"
    if "embed_tokens" in tid:
        return "embeddings"
    if "norm" in tid:
        return "norms"
    if ".mlp." in tid:
        return "mlp"
    if ".self_attn." in tid:
        return "attention"
    return "other"


# -- report --------------------------------------------------------------------------------------
def max_pairwise_angle(vectors: Sequence[torch.Tensor], origin: torch.Tensor | None = None) -> float:
    """The largest angle (degrees) between any two of the flat vectors, seen from `origin` (the base of a
    task-vector merge); float64 sums; a zero vector counts as angle 0."""
    norms = [_norm(v, origin) for v in vectors]
    worst = 0.0
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            if norms[i] <= EPS or norms[j] <= EPS:
                continue
            cos = _dot(vectors[i], vectors[j], origin) / (norms[i] * norms[j])
            worst = max(worst, math.degrees(math.acos(min(1.0, max(-1.0, cos)))))
    return worst


@dataclass
class GroupStats:
    """Counts and angles of one tensor group."""

    tensors: int = 0
    linear_fallback: int = 0
    identical: int = 0
    angles: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """tensors, linear_fallback, identical and the angle's min / mean / max (degrees)."""
        a = self.angles
        angle = {"min": min(a), "mean": sum(a) / len(a), "max": max(a)} if a else None
        return {"tensors": self.tensors, "linear_fallback": self.linear_fallback, "identical": self.identical,
                "angle_deg": angle}


@dataclass
class MergeReport:
    """What a merge did, per tensor group and per tensor; `merge_report.json` in the output folder."""

    method: str
    inputs: list[str]
    base: str | None
    weights: list[float]
    t: float | None
    output: str
    groups: dict[str, GroupStats] = field(default_factory=dict)
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, tid: str, angle: float | None, fallback: bool, identical: bool) -> None:
        """Record one merged tensor."""
        g = self.groups.setdefault(tensor_group(tid), GroupStats())
        g.tensors += 1
        g.linear_fallback += int(fallback)
        g.identical += int(identical)
        if angle is not None:
            g.angles.append(angle)
        self.tensors[tid] = {"angle_deg": angle, "linear_fallback": fallback, "identical": identical}

    def ordered_groups(self) -> list[tuple[str, GroupStats]]:
        """Groups in the order embeddings, attention, mlp, norms, head."""
        return sorted(self.groups.items(), key=lambda kv: GROUPS.index(kv[0]))

    def to_dict(self) -> dict[str, Any]:
        """The content of merge_report.json."""
        return {"method": self.method, "inputs": self.inputs, "base": self.base, "weights": self.weights,
                "t": self.t, "output": self.output, "groups": {k: v.to_dict() for k, v in self.ordered_groups()},
                "tensors": self.tensors}

    def table(self) -> str:
        """The per-group summary the CLI prints."""
        lines = [f"{self.method} of {len(self.inputs)} models -> {self.output}",
                 f"{'group':<11} {'tensors':>7} {'angle deg min / mean / max':>28} {'linear':>7} {'identical':>9}"]
        for name, g in self.ordered_groups():
            d = g.to_dict()["angle_deg"]
            angle = f"{d['min']:.3f} / {d['mean']:.3f} / {d['max']:.3f}" if d else "-"
            lines.append(f"{name:<11} {g.tensors:>7} {angle:>28} {g.linear_fallback:>7} {g.identical:>9}")
        total = sum(g.tensors for g in self.groups.values())
        fell = sum(g.linear_fallback for g in self.groups.values())
        if self.method in ("slerp", "task-slerp", "multislerp") and total and fell == total:
            lines.append("every tensor fell back to linear interpolation: the inputs are (nearly) colinear, so this "
                         "merge equals a weighted average (a soup).")
        return "\n".join(lines)


# -- the streaming driver ------------------------------------------------------------------------
Progress = Callable[[int], None]


def _compute_dtype(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _progress_bar(total: int, show: bool | None, desc: str) -> Any:
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if show is None else show
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not show)


def merge_checkpoints(
    paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], method: str = "slerp",
    base: str | os.PathLike[str] | None = None, weights: Sequence[float] | None = None, t: float | None = None,
    *, overwrite: bool = False, max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES, progress: bool | None = None,
) -> MergeReport:
    """Merge checkpoints of one Qwen3 trunk into `out` (the first model's layout, config and tokenizer).

    method: linear (weights, normalised; default equal), slerp (2 models, t in [0, 1], default 0.5),
    multislerp (N >= 2 models, weights, optional base), task-slerp (2 models + base; t, or weights w0, w1
    giving t = w1 / (w0 + w1)). Settings and inputs are checked (key sets through the loader's mapping,
    shapes, configs) before anything is written; `out` must be new or empty unless `overwrite` (then only
    the files written here are replaced). Writes size-bounded shards and merge_report.json; returns the
    report.
    """
    if isinstance(paths, str | os.PathLike):
        raise InputError(f"paths must be a list of checkpoints, got the single path {os.fspath(paths)!r}.")
    params = check_params(method, len(paths), base=base is not None, weights=weights, t=t)
    max_bytes = parse_size(max_shard_size)
    check_output_dir(out, overwrite=overwrite)
    sources = [Source.open(p) for p in paths]
    base_src = Source.open(base) if base is not None else None
    check_compatible(sources + ([base_src] if base_src else []))
    first = sources[0]
    report = MergeReport(method, [s.name for s in sources], base_src.name if base_src else None,
                         list(params.weights), params.t, os.fspath(out))
    fn = METHODS[method]

    def produce(spec: TensorSpec) -> torch.Tensor:
        tid = ids[spec.name]
        raw = [s.get(tid) for s in sources]
        b_raw = base_src.get(tid) if base_src else None
        bar.update(spec.nbytes)
        if all(torch.equal(raw[0], x) for x in raw[1:]):
            report.add(tid, 0.0, False, True)
            return raw[0].to(spec.dtype)
        cdt = _compute_dtype(raw + ([b_raw] if b_raw is not None else []))
        xs = [x.reshape(-1).to(cdt) for x in raw]
        b = b_raw.reshape(-1).to(cdt) if b_raw is not None else None
        del raw, b_raw
        angle = max_pairwise_angle(xs, b)
        merged = fn(xs, b, params)
        report.add(tid, angle, merged.linear_fallback, False)
        return merged.tensor.reshape(spec.shape).to(spec.dtype)

    ids = {fk: tid for tid, fk in first.keys.items()}
    specs = [TensorSpec(fk, first.reader.shapes[fk], CODE_DTYPES[first.reader.dtypes[fk]])
             for fk in first.reader.where if fk in ids]
    bar = _progress_bar(sum(s.nbytes for s in specs), progress, f"{method} merge")
    try:
        with atomic_dir(out, overwrite=overwrite, as_a_set=is_weight_file) as tmp:
            write_shards(tmp, plan_shards(specs, max_bytes), produce)
            copy_side_files(first.path, tmp, config=True)
            (tmp / REPORT_NAME).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    finally:
        bar.close()
    return report


# -- LoRA: base + adapter, the `merge-lora` method -------------------------------------------------
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")


def lora_merge(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """peft's LoRA merge of one projection: W + (B @ A) * scale, [out, in] + ([out, r] @ [r, in])."""
    return weight + (b @ a) * scale


def _lora_scale(raw: dict[str, Any], where: Path) -> float:
    """alpha / r (alpha / sqrt(r) with rsLoRA), refusing the adapter features this merge does not fold."""
    if raw.get("peft_type", "LORA") != "LORA":
        raise InputError(f"{where}: peft_type {raw.get('peft_type')!r} is not LORA; only LoRA adapters merge.")
    for key in ("use_dora", "fan_in_fan_out"):
        if raw.get(key):
            raise InputError(f"{where}: {key}=true is not supported by merge-lora; merge it with peft's "
                             "merge_and_unload instead.")
    for key in ("rank_pattern", "alpha_pattern"):
        if raw.get(key):
            raise InputError(f"{where}: a per-layer {key} is not supported by merge-lora; merge it with peft's "
                             "merge_and_unload instead.")
    r, alpha = int(raw["r"]), float(raw["lora_alpha"])
    return alpha / math.sqrt(r) if raw.get("use_rslora") else alpha / r


def _read_adapter(adapter_dir: Path, src: Source) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """{trunk key of the adapted weight: (A, B)} and the scale, checked against the base's tensors."""
    from safetensors.torch import load_file

    from .lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PREFIX

    if not (adapter_dir / ADAPTER_CONFIG).is_file() or not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise InputError(f"{adapter_dir} is not a PEFT adapter folder: it needs {ADAPTER_CONFIG} and "
                         f"{ADAPTER_WEIGHTS}.")
    scale = _lora_scale(json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8")), adapter_dir)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(adapter_dir / ADAPTER_WEIGHTS)).items():
        m = _LORA_KEY.match(key.removeprefix(PREFIX))
        module = m["module"] if m else ""
        tid = module + ".weight"
        if m and tid not in src.keys and module.startswith("model."):  # peft around a causal LM
            tid = module.removeprefix("model.") + ".weight"
        if not m or tid not in src.keys:
            raise InputError(f"{adapter_dir}: adapter key {key!r} matches no layer of {src.path}.")
        parts.setdefault(tid, {})[m["which"]] = value
    pairs = {}
    for tid, ab in parts.items():
        if set(ab) != {"A", "B"}:
            raise InputError(f"{adapter_dir}: {tid} has lora_{''.join(ab)} but not both lora_A and lora_B.")
        out_f, in_f = src.shape(tid)
        if ab["A"].shape[1] != in_f or ab["B"].shape[0] != out_f or ab["A"].shape[0] != ab["B"].shape[1]:
            raise InputError(f"{adapter_dir}: {tid} is {[out_f, in_f]} but lora_B @ lora_A is "
                             f"{list(ab['B'].shape)} @ {list(ab['A'].shape)}; the adapter belongs to another base.")
        pairs[tid] = (ab["A"], ab["B"])
    return pairs, scale


def merge_adapter(base: str | os.PathLike[str], adapter_dir: str | os.PathLike[str], out: str | os.PathLike[str],
                  *, dtype: str | torch.dtype | None = None, overwrite: bool = False,
                  max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES, progress: bool | None = None) -> Path:
    """Fold a PEFT LoRA adapter into its base, streaming the base one tensor at a time (`merge-lora`).

    The output keeps the base's layout (embedding or causal-LM keys, lm_head), config and tokenizer;
    `dtype` (float32 / bfloat16 / float16) changes the saved dtype of the floating-point weights.
    """
    out_dtype = saved_float_dtype(dtype) if dtype is not None else None
    check_output_dir(out, overwrite=overwrite)
    src = Source.open(base)
    pairs, scale = _read_adapter(Path(adapter_dir), src)
    ids = {fk: tid for tid, fk in src.keys.items()}

    def saved_dtype(fk: str) -> torch.dtype:
        own = CODE_DTYPES[src.reader.dtypes[fk]]
        return out_dtype if out_dtype is not None and own.is_floating_point else own

    def produce(spec: TensorSpec) -> torch.Tensor:
        bar.update(spec.nbytes)
        tid = ids[spec.name]
        w = src.get(tid)
        if tid in pairs:
            a, b = pairs[tid]
            w = lora_merge(w.float(), a.float(), b.float(), scale)
        return w.to(spec.dtype)

    specs = [TensorSpec(fk, src.reader.shapes[fk], saved_dtype(fk)) for fk in src.reader.where]
    bar = _progress_bar(sum(s.nbytes for s in specs), progress, "merge-lora")
    try:
        with atomic_dir(out, overwrite=overwrite, as_a_set=is_weight_file) as tmp:
            write_shards(tmp, plan_shards(specs, parse_size(max_shard_size)), produce)
            copy_side_files(src.path, tmp, config=True)
            if out_dtype is not None:
                _set_config_dtype(tmp / "config.json", out_dtype)
    finally:
        bar.close()
    return Path(out)


SAVED_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def saved_float_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """merge-lora's --dtype: one of SAVED_DTYPES (by any of the loader's names for it), else one line listing
    only those (the loader's own message also offers int8, a compute mode that is not a saved dtype)."""
    from ..weights import pick_dtype

    try:
        dt = pick_dtype(dtype, torch.device("cpu"))
        if dt in SAVED_DTYPES:
            return dt
    except WeightsError:
        pass
    raise InputError(f"--dtype {str(dtype)!r} is not a dtype merge-lora saves; use "
                     f"{', '.join(SAVED_DTYPES.values())}, or leave it out to keep the base's.")


def _set_config_dtype(path: Path, dtype: torch.dtype) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    name = SAVED_DTYPES[dtype]
    raw["torch_dtype"] = name
    if "dtype" in raw:
        raw["dtype"] = name
    path.write_text(json.dumps(raw, indent=2), encoding="utf-8")


# -- merging at the end of a training run (the `merge:` section of a training config) ---------------
EvaluateFn = Callable[[Path], dict[str, float]]
EVAL_NAME = "held_out_eval.json"


def select_checkpoints(run_dir: Path, which: str | Sequence[int | str]) -> list[Path]:
    """The run's checkpoint folders named by `which`: 'last-K', or steps / step-N names / folders."""
    saved = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if (p / "state.pt").is_file())
    if isinstance(which, str):
        k = int(which.removeprefix("last-"))
        if len(saved) < k:
            raise InputError(f"merge.checkpoints={which} but {run_dir / 'checkpoints'} holds {len(saved)} "
                             f"checkpoint(s); save more often (train.save_every) or merge fewer.")
        return saved[-k:]
    chosen = []
    for item in which:
        path = run_dir / "checkpoints" / (f"step-{item:08d}" if isinstance(item, int) else item)
        if not path.is_dir():
            path = Path(str(item))
        if not path.is_dir():
            raise InputError(f"merge.checkpoints names {item!r}, which is neither a checkpoint of {run_dir} nor a "
                             f"folder; saved: {[p.name for p in saved]}.")
        chosen.append(path)
    return chosen


def held_out_evaluator(cfg: Any, eval_set: Any, tokenizer: Any, device: torch.device,
                       autocast: Callable[[], Any] | None = None) -> EvaluateFn | None:
    """A function that loads a checkpoint folder's trunk and scores it on the run's held-out set
    (`train.evaluate.evaluate` with the run's settings); None without an eval set or with evaluate off."""
    if eval_set is None or not cfg.merge.evaluate:
        return None

    def fn(folder: Path) -> dict[str, float]:
        from ..checkpoint import Checkpoint
        from .evaluate import evaluate

        model = Checkpoint.load(folder, device, torch.float32, want_head=False).model
        d = cfg.data
        return evaluate(model, tokenizer, eval_set, device=device, k=cfg.eval.k, query_max_length=d.query_max_length,
                        doc_max_length=d.doc_max_length, batch_tokens=cfg.train.chunk_tokens,
                        autocast=autocast() if autocast else None)
    return fn


def merge_run(run_dir: str | os.PathLike[str], settings: Any, *, base_model: str | os.PathLike[str],
              evaluate_fn: EvaluateFn | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Merge a run's checkpoints into run_dir/merged as `settings` (a `MergeSettings`) say, then evaluate.

    LoRA checkpoints (an `adapter/` folder) are first folded into `base_model` (temporary folders,
    removed afterwards). With `evaluate_fn`, every input and the merge are scored and written to
    merged/held_out_eval.json. Returns {"inputs": {name: metrics}, "merged": metrics, "report": ...}.
    """
    import tempfile

    run = Path(run_dir)
    steps = select_checkpoints(run, settings.checkpoints)
    base = settings.base or (os.fspath(base_model) if settings.method == "task-slerp" else None)
    tmp = Path(tempfile.mkdtemp(prefix=".merge-inputs-", dir=run))
    try:
        inputs = []
        for step in steps:
            if (step / "adapter").is_dir():
                inputs.append(merge_adapter(base_model, step / "adapter", tmp / step.name, progress=False))
            else:
                inputs.append(step / "model" if (step / "model").is_dir() else step)
        report = merge_checkpoints(inputs, run / "merged", method=settings.method, base=base,
                                   weights=settings.weights or None, t=settings.t, overwrite=True, progress=progress)
        if any(p.parent == tmp for p in inputs):  # name folded LoRA inputs by their adapters, not temp folders
            from ..files import write_json_atomic

            report.inputs = [os.fspath(s / "adapter") if p.parent == tmp else os.fspath(p)
                             for s, p in zip(steps, inputs, strict=True)]
            write_json_atomic(run / "merged" / REPORT_NAME, report.to_dict())
        print(report.table(), file=sys.stderr)
        result: dict[str, Any] = {"inputs": {}, "merged": None, "report": report.to_dict()["groups"]}
        if evaluate_fn is not None:
            for step, folder in zip(steps, inputs, strict=True):
                result["inputs"][step.name] = evaluate_fn(folder)
            result["merged"] = evaluate_fn(run / "merged")
            from ..files import write_json_atomic

            write_json_atomic(run / "merged" / EVAL_NAME, {k: v for k, v in result.items() if k != "report"})
            for name, metrics in [*result["inputs"].items(), ("merged", result["merged"])]:
                print(f"{name:<16} " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()), file=sys.stderr)
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
