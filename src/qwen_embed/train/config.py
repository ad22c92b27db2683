"""TrainConfig: every setting of `qwen-embed train embed`, as plain dataclasses read once from YAML.

The YAML file has one mapping per section (model, data, loss, optim, train, lora, eval, rerank, merge); a missing
key takes the default shown here, an unknown key or a value of the wrong type is an error that names
it and lists the valid keys. Each field's `help` is the documentation (`describe()` renders the table
in docs/train.md); each numeric field also declares its allowed `Range`, which `TrainConfig.validate`
checks (finite, within bounds) when the config is read, before any model loads or anything is written.
"""

# ruff: noqa: RUF009  (setting() builds dataclass fields, as field() does)

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..embedder import DEFAULT_INSTRUCTION
from ..errors import ConfigError, is_whole
from ..settings import DEFAULT_EMBEDDING_MODEL
from ..settings import ModelSettings as LoadingSettings
from ..textio import parse_yaml, read_yaml
from .losses import DEFAULT_MARGIN, DEFAULT_TEMPERATURE

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric setting: finite, within `low` .. `high` (None: unbounded), each bound
    included unless open; `why` says what the bound protects. A list setting applies it to each item."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    why: str = ""

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.open_low else '['}{_num(self.low)}, {_num(self.high)}" \
                   f"{')' if self.open_high else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.open_low else '>='} {_num(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.open_high else '<='} {_num(self.high)}"
        else:
            return "a finite number"
        return text


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


COUNT, SIZE = Range(0), Range(1)  # how many (0 allowed), a size or a period (at least 1)
POSITIVE, NON_NEGATIVE, FINITE = Range(0, open_low=True), Range(0), Range()
PROBABILITY = Range(0, 1, open_high=True)  # dropout, AdamW betas


def setting(default: Any, help: str, valid: Range | None = None) -> Any:
    """A dataclass field with its documentation and, for a number, its allowed range."""
    metadata: dict[str, Any] = {"help": help} if valid is None else {"help": help, "range": valid}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class ModelSettings:
    """The `model` section: which checkpoint, where, in which precision (`loading()` gives the shared
    `qwen_embed.settings.ModelSettings` of its weights)."""

    path: str = setting(DEFAULT_EMBEDDING_MODEL, "base checkpoint: hub id or local folder (embedding, "
                        "reranker or base LM; its trunk is trained)")
    device: str | None = setting(None, "cpu, cuda or cuda:N; None: cuda when available (torchrun: cuda:LOCAL_RANK)")
    precision: str = setting("auto", "auto (bf16-autocast on cuda, fp32 on cpu), fp32, bf16-autocast (fp32 "
                             "weights, bf16 compute), or bf16 (bf16 weights and optimiser state)")
    gradient_checkpointing: bool = setting(False, "recompute each layer in the backward pass (less memory)")
    compile: bool = setting(False, "torch.compile each decoder layer (dynamic shapes; fuses the elementwise "
                            "steps on CUDA, at a start-up cost of about a minute)")

    def loading(self) -> LoadingSettings:
        """How the weights are loaded: this checkpoint and device, bf16 weights for `bf16`, else float32."""
        return LoadingSettings(model=self.path, device=self.device,
                               dtype="bfloat16" if self.precision == "bf16" else "float32")


@dataclass
class DataSettings:
    train_files: list[str] = setting([], "JSONL training files: {query, positive | positives, negatives?, "
                                     "instruction?, task?} per line")
    default_instruction: str | None = setting(DEFAULT_INSTRUCTION, "instruction for rows without one (None: "
                                              "such queries get no template)")
    query_max_length: int = setting(512, "tokens per query, template and end token included",
                                   Range(2, why="a token and the end token"))
    doc_max_length: int = setting(512, "tokens per document, end token included",
                                 Range(2, why="a token and the end token"))
    num_negatives: int = setting(4, "hard negatives per query (K); a batch uses min(K, fewest negatives of "
                                 "its rows), so rows without negatives give K = 0", COUNT)
    shuffle_buffer: int = setting(10000, "rows held by the streaming shuffle (1: file order)", SIZE)


@dataclass
class LossSettings:
    temperature: float = setting(DEFAULT_TEMPERATURE, "softmax temperature of the improved InfoNCE (cosine "
                                 "similarities); 0.05 = sentence-transformers' scale 20", POSITIVE)
    margin: float = setting(DEFAULT_MARGIN, "mask a negative term whose similarity exceeds s(q, p+) + margin",
                           FINITE)
    matryoshka_dims: list[int] = setting([], "Matryoshka dims to train (empty: the full size only), e.g. "
                                         "[1024, 512, 256, 128, 64, 32]", SIZE)
    matryoshka_weights: list[float] = setting([], "one weight per Matryoshka dim (empty: 1 each)",
                                               NON_NEGATIVE)


@dataclass
class OptimSettings:
    lr: float = setting(2e-5, "peak learning rate of AdamW (LoRA usually wants ~1e-4 .. 5e-4)",
                        POSITIVE)
    weight_decay: float = setting(0.01, "AdamW weight decay (not applied to norms)", NON_NEGATIVE)
    beta1: float = setting(0.9, "AdamW beta1", PROBABILITY)
    beta2: float = setting(0.999, "AdamW beta2", PROBABILITY)
    eps: float = setting(1e-8, "AdamW epsilon", POSITIVE)
    warmup_steps: int = setting(100, "linear warm-up steps from 0 to lr", COUNT)
    min_lr_ratio: float = setting(0.0, "cosine decay ends at lr * min_lr_ratio at train.max_steps",
                                 Range(0, 1))
    max_grad_norm: float = setting(1.0, "clip the global gradient norm (0: no clipping)", NON_NEGATIVE)


@dataclass
class TrainSettings:
    output_dir: str = setting("runs/embed", "folder for checkpoints, the JSONL log, the final model and the plot")
    max_steps: int = setting(1000, "optimiser steps", SIZE)
    batch_size: int = setting(64, "global batch: query-positive rows per step over all processes",
                              Range(2, why="in-batch negatives"))
    grad_cache: bool = setting(True, "GradCache: chunked forward/backward so the batch fits in memory")
    chunk_tokens: int = setting(16384, "token budget of one GradCache chunk (or of one forward without it)",
                                SIZE)
    seed: int = setting(0, "seed of the data order, the sampling of positives / negatives and torch",
                        Range(0, 2**64 - 1, why="torch's seed range"))
    log_every: int = setting(10, "write a JSONL log line every N steps", SIZE)
    save_every: int = setting(500, "write a resumable checkpoint every N steps (0: only at the end)",
                            COUNT)
    keep_checkpoints: int = setting(2, "checkpoints kept (older ones are deleted)", SIZE)
    resume: bool = setting(True, "continue from the newest checkpoint in output_dir when there is one")
    progress: bool | None = setting(None, "progress bar (None: when stderr is a terminal)")


@dataclass
class LoraSettings:
    enabled: bool = setting(False, "train a LoRA adapter (peft) instead of all weights")
    r: int = setting(16, "LoRA rank", SIZE)
    alpha: int = setting(32, "LoRA alpha (scale = alpha / r)", SIZE)
    dropout: float = setting(0.0, "dropout on the LoRA input", PROBABILITY)
    target_modules: list[str] = setting(LORA_TARGETS, "projections that get adapters")
    merge_at_end: bool = setting(True, "also write the merged model (output_dir/model) at the end")


@dataclass
class EvalSettings:
    file: str | None = setting(None, "held-out JSONL rows (training format); the corpus is their positives and "
                               "negatives. None: no evaluation")
    every: int = setting(500, "evaluate every N steps (and at the end)", SIZE)
    max_queries: int = setting(1000, "use at most this many held-out rows", SIZE)
    k: int = setting(10, "cut-off of Recall@k / MRR@k / nDCG@k", SIZE)


@dataclass
class RerankSettings:
    template: str = setting("card", "input template of the reranker (reranker.py): card (model card form) or "
                            "official-eval (the official evaluation's form); the model is scored with the same one")
    loss: str = setting("sft", "sft (the report's: cross entropy of the yes/no token over the full vocabulary), "
                        "bce (binary cross entropy on logit(yes) - logit(no)) or listwise (softmax over a positive "
                        "and its negatives); seq-cls checkpoints need bce or listwise")
    negatives_per_positive: int = setting(3, "\"no\" examples sampled from a training row's negatives per positive "
                                          "(fewer when the row has fewer)", COUNT)
    max_length: int = setting(1024, "tokens per input (template, query and document); only the document is cut",
                              Range(16, why="the reranker's minimum"))


RERANK_MODEL = "Qwen/Qwen3-Reranker-0.6B"


@dataclass
class MergeSettings:
    method: str | None = setting(None, "at the end of the run, merge saved checkpoints into output_dir/merged: "
                                 "linear, slerp, multislerp or task-slerp (None: no merge); see `qwen-embed merge`")
    checkpoints: str | list[int | str] = setting("last-3", "which checkpoints: 'last-K' (the K newest saved ones; "
                                                  "train.keep_checkpoints must keep K) or a list of steps, "
                                                  "step-N names or checkpoint folders", SIZE)
    t: float | None = setting(None, "slerp / task-slerp position in [0, 1] (0: the first checkpoint); None: 0.5",
                               Range(0, 1))
    weights: list[float] = setting([], "one weight per checkpoint (linear, multislerp; task-slerp: t = w2 / "
                                   "(w1 + w2)); empty: equal", FINITE)
    base: str | None = setting(None, "the base of task-slerp / multislerp (folder or hub id); None: model.path "
                               "for task-slerp, no base for multislerp")
    evaluate: bool = setting(True, "evaluate every merged checkpoint and the merge on eval.file (held out)")


@dataclass
class TrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    rerank: RerankSettings = field(default_factory=RerankSettings)
    merge: MergeSettings = field(default_factory=MergeSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> TrainConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}.")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(sections), key=str)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {unknown}; valid: {sorted(sections)}.")
        built: dict[str, Any] = {}
        hints = typing.get_type_hints(cls)
        for name in sections:
            sect_cls = hints[name]
            built[name] = _build_section(sect_cls, raw.get(name) or {}, f"{source}: {name}")
        cfg = cls(**built)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Each numeric setting within its `Range`, then the checks that need more than one field."""
        self._validate_ranges(source)
        lo = self.loss
        checks = [
            (not lo.matryoshka_weights or len(lo.matryoshka_weights) == len(lo.matryoshka_dims),
             f"loss.matryoshka_weights has {len(lo.matryoshka_weights)} values for "
             f"{len(lo.matryoshka_dims)} dims; give one per dim or none"),
            (not lo.matryoshka_weights or sum(lo.matryoshka_weights) > 0,
             f"loss.matryoshka_weights={lo.matryoshka_weights} sum to 0, so nothing would be trained; give "
             "a positive weight to at least one dim"),
            (self.model.precision in ("auto", "fp32", "bf16-autocast", "bf16"),
             f"model.precision={self.model.precision!r} must be auto, fp32, bf16-autocast or bf16"),
            (self.rerank.loss in ("sft", "bce", "listwise"),
             f"rerank.loss={self.rerank.loss!r} must be sft, bce or listwise"),
            (self.rerank.template in ("card", "official-eval"),
             f"rerank.template={self.rerank.template!r} must be card or official-eval"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"{source}: {msg}.")
        if self.merge.method is not None:
            self._validate_merge(source)

    def _validate_ranges(self, source: str) -> None:
        """Every setting declared with a `Range` (each item of a list one; None and names pass) within it."""
        for sect in dataclasses.fields(self):
            section = getattr(self, sect.name)
            for f in dataclasses.fields(section):
                valid = f.metadata.get("range")
                value = getattr(section, f.name)
                if valid is None or value is None:
                    continue
                items = enumerate(value) if isinstance(value, list) else [(None, value)]
                for i, v in items:
                    if isinstance(v, str) or v in valid:
                        continue
                    key = f"{sect.name}.{f.name}" + ("" if i is None else f"[{i}]")
                    bounded = valid.low is not None or valid.high is not None
                    finite = "a finite number " if bounded and not math.isfinite(v) else ""
                    notes = [valid.why] if valid.why else []
                    notes += [f"default {f.default}"] if i is None and f.default is not None else []
                    why = f" ({'; '.join(notes)})" if notes else ""
                    raise ConfigError(f"{source}: {key}={v} must be {finite}{valid}{why}.")

    def _validate_merge(self, source: str) -> None:
        from ..errors import InputError
        from .merge import check_params

        m = self.merge
        if isinstance(m.checkpoints, str):
            k = m.checkpoints.removeprefix("last-")
            if not m.checkpoints.startswith("last-") or not k.isdigit():
                raise ConfigError(f"{source}: merge.checkpoints={m.checkpoints!r} must be 'last-K' (e.g. last-3) "
                                  "or a list of steps / checkpoint folders.")
            n = int(k)
            if n > self.train.keep_checkpoints:
                raise ConfigError(f"{source}: merge.checkpoints={m.checkpoints} needs train.keep_checkpoints >= "
                                  f"{n} (it is {self.train.keep_checkpoints}).")
        else:
            n = len(m.checkpoints)
        base = m.base is not None or m.method == "task-slerp"
        try:
            check_params(m.method or "", n, base=base, weights=m.weights or None, t=m.t)
        except InputError as e:
            raise ConfigError(f"{source}: merge: {e}") from None


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for i, a in enumerate(inner):
            try:
                return _check_type(value, a, where)
            except ConfigError:
                if i == len(inner) - 1 and len(inner) == 1:
                    raise
        names = " or ".join(getattr(a, "__name__", str(a)) for a in inner)
        raise ConfigError(f"{where} must be {names}, got {value!r}.")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}.")
        return [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and is_whole(value):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise ConfigError(f"{where} must be {getattr(hint, '__name__', hint)}, got {value!r}.")


def _build_section(sect_cls: Any, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {raw!r:.60}.")
    fields = {f.name: f for f in dataclasses.fields(sect_cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {sorted(fields)}.")
    hints = typing.get_type_hints(sect_cls)
    return sect_cls(**{k: _check_type(v, hints[k], f"{where}.{k}") for k, v in raw.items()})


def load_config(path: str | Path, overrides: list[str] | None = None, kind: str = "embed") -> TrainConfig:
    """Read a YAML config; `overrides` are `section.key=value` strings (YAML values) applied on top.

    kind "rerank" makes the default model.path the Qwen3 reranker and train.output_dir runs/rerank."""
    p = Path(path)
    raw = read_yaml(p, "config file", ConfigError) or {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.max_steps=100.")
        if not isinstance(raw, dict):
            break  # TrainConfig.from_dict names the problem
        if not isinstance(raw.get(section, {}), dict):
            raise ConfigError(f"{p}: section {section!r} must be a mapping.")
        try:
            parsed = parse_yaml(value)
        except ValueError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {e}; quote a string "
                              f"(e.g. {key}='\"a: b\"').") from None
        raw.setdefault(section, {})[name] = parsed
    if kind == "rerank" and isinstance(raw, dict):
        for section, key, default in (("model", "path", RERANK_MODEL), ("train", "output_dir", "runs/rerank")):
            if raw.get(section) is None:
                raw[section] = {}
            if isinstance(raw[section], dict):
                raw[section].setdefault(key, default)
    return TrainConfig.from_dict(raw, str(p))


def describe() -> str:
    """Markdown tables of every setting with its default and help (the docs/train.md reference)."""
    out = []
    hints = typing.get_type_hints(TrainConfig)
    for sect in dataclasses.fields(TrainConfig):
        out.append(f"### `{sect.name}`\n\n| setting | default | meaning |\n|---|---|---|")
        for f in dataclasses.fields(hints[sect.name]):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            text = json.dumps(default)
            out.append(f"| `{f.name}` | `{text}` | {f.metadata['help'].replace('|', '&#124;')} |")
        out.append("")
    return "\n".join(out)
