"""The stage kinds of a recipe: what each accepts, what it outputs, and the library call that runs it.

Each kind calls the same library function as its command (`train embed` -> `train.loop.train`, `mine`
-> `train.mining.mine`, `merge` -> `train.merge.merge_checkpoints`, `eval retrieval` ->
`eval.retrieval.evaluate_retrieval`, ...), with the stage's folder as its output. Outputs are paths
relative to the stage folder (a list for `checkpoints`); later stages name them `{from: stage.output}`.

| kind | outputs | what it runs |
|---|---|---|
| pairs | train, heldout | weak pairs from local text: BEIR titles -> texts, qrels, docstrings -> sources, WordNet |
| tokenizer | tokenizer | a byte-level BPE trained on pair files (Qwen's special tokens, single-token yes/no) |
| init | model | a random-weight Qwen3 checkpoint of a given shape, or a reranker from an embedder's trunk |
| synth | pairs | persona-based synthetic queries (`qwen_embed.synth`) |
| filter | pairs | the report's cosine filter of synthetic pairs |
| train-embed | model, checkpoints, log | `train embed` (stage 1 or stage 2) |
| mine | pairs | hard negatives mined with an embedder |
| merge | model | stage 3: merge of checkpoints (slerp, ...) |
| train-rerank | model, checkpoints, log | `train rerank` (labelled data only) |
| eval | report | retrieval with the embedder, then reranking of its top candidates |

Every kind's settings are checked in full before any work (`check_recipe`, through the kind's `check`), and
again when the stage runs: with each `{from: ...}` reference standing for a path (`Pending`) until then, and a
training stage's `config:` parsed and validated by the training package's own `TrainConfig.from_dict`. A
typo in a later stage is refused when the recipe loads, not after the stages before it ran for hours.

A LoRA training stage's checkpoints and model are adapters (`run/checkpoints/step-N/adapter`, `run/adapter`);
the stage folds each into its base (the `merge-lora` formula, `train.merge.merge_adapter`) under
`merged-lora/`, so that its `checkpoints` and `model` are plain checkpoints that later stages merge, mine with
or evaluate (`run/model` is kept when the trainer merged it itself, `lora.merge_at_end`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, QwenEmbedError, is_whole
from .spec import Recipe, Stage, parse_ref, refs_in

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..embedder import Embedder
    from ..train.config import TrainConfig


@dataclass
class StageContext:
    """What a stage's run function gets: resolved settings, its (partial) folder, the recipe."""

    recipe: Recipe
    stage: Stage
    settings: dict[str, Any]  # references replaced by absolute paths
    out: Path
    say: Callable[[str], None] = print
    held_out: HeldOut | None = None  # the run's evaluation sets (a fresh one when None)

    @property
    def final(self) -> Path:
        """The folder the stage's outputs will be in once it finished (`out`, its partial folder, renamed):
        what a record written into `out` names as their place."""
        return self.recipe.workdir / self.stage.name


@dataclass
class StageResult:
    """Outputs (paths relative to the stage folder) and facts for the report."""

    outputs: dict[str, str | list[str]]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    """A stage kind: its outputs, the settings it takes (and needs), what runs it, and its checks.

    `check(settings, name)` refuses, in one line, any setting the run would refuse, before any work;
    `counts(settings, name)` says how many paths each output that is a list (a training stage's
    `checkpoints`) will hold, so that a later stage's check sees as many (`last:` of a merge)."""

    outputs: tuple[str, ...]
    settings: frozenset[str]
    run: Callable[[StageContext], StageResult]
    required: frozenset[str] = frozenset()
    model_output: str | None = None  # an embedding model evaluated after the stage (held-out metric)
    check: Callable[[dict[str, Any], str], object] | None = None
    counts: Callable[[dict[str, Any], str], dict[str, int]] | None = None


# -- checks of settings: before any work (check_recipe) and again when the stage runs -------------------------
class Pending(str):
    """An output of an earlier stage while the recipe is checked, before that stage ran: its reference
    (`stage.output`) as a string, standing for the path in every check of a path setting."""

    __slots__ = ()


def _pending(value: Any, where: str, counts: dict[str, dict[str, int]]) -> Any:
    """Settings with each reference replaced by a `Pending` path, or, for an output that is a list of known
    length (`Kind.counts`), by a list of that many."""
    ref = parse_ref(value, where)
    if ref is not None:
        n = counts.get(ref.stage, {}).get(ref.output)
        return Pending(str(ref)) if n is None else [Pending(f"{ref}[{i}]") for i in range(n)]
    if isinstance(value, dict):
        return {k: _pending(v, f"{where}.{k}", counts) for k, v in value.items()}
    if isinstance(value, list):
        return [_pending(v, f"{where}[{i}]", counts) for i, v in enumerate(value)]
    return value


def _check_whole(s: dict[str, Any], key: str, where: str, low: int | None = 1, *, nullable: bool = False,
                 why: str = "") -> None:
    """s[key], when given, is a whole number >= low (or null when `nullable`)."""
    if key not in s or (nullable and s[key] is None) or is_whole(s[key], low):
        return
    limit = "" if low is None else f" >= {low}"
    raise InputError(f"{where}: {key} must be a whole number{limit}{why}{' or null' if nullable else ''}, "
                     f"got {s[key]!r:.60}.")


def _check_number(s: dict[str, Any], key: str, where: str, low: float | None = None,
                  high: float | None = None) -> None:
    """s[key], when given, is a finite number (not a bool) in [low, high]."""
    if key not in s:
        return
    v = s[key]
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) \
        and (low is None or v >= low) and (high is None or v <= high)
    if not ok:
        limit = f" from {low} to {high}" if low is not None and high is not None else ""
        raise InputError(f"{where}: {key} must be a number{limit}, got {v!r:.60}.")


def _check_text(s: dict[str, Any], key: str, where: str, *, nullable: bool = False, what: str = "a path") -> None:
    """s[key], when given, is a non-empty string (a path or a name), or null when `nullable`."""
    if key not in s or (nullable and s[key] is None):
        return
    v = s[key]
    if not isinstance(v, str) or not v:
        raise InputError(f"{where}: {key} must be {what} (a non-empty string){' or null' if nullable else ''}, "
                         f"got {v!r:.60}.")


def _check_table(cls: Any, raw: Any, key: str, where: str) -> Any:
    """A settings dataclass of the synth package built from the mapping `raw` (unknown keys refused)."""
    import dataclasses

    if raw is None:
        raw = {}
    names = sorted(f.name for f in dataclasses.fields(cls))
    if not isinstance(raw, dict):
        raise InputError(f"{where}: {key} must be a mapping of {', '.join(names)}, got {raw!r:.60}.")
    unknown = sorted(set(raw) - set(names), key=str)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} in {key}; it takes {', '.join(names)}.")
    try:
        return cls(**raw).check()
    except InputError as e:
        raise InputError(f"{where}: {key}: {e}") from None


# -- helpers -------------------------------------------------------------------------------------
def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    from ..files import atomic_file

    with atomic_file(path) as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _held_out(key: str, fraction: float, seed: int) -> bool:
    h = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def _read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    from ..jsonl import iter_jsonl

    with open(path, encoding="utf-8") as f:
        return [obj for _, obj in iter_jsonl(f, str(path))]


def _log_tokens(log: Path) -> int:
    total = 0
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                total += int(json.loads(line).get("tokens", 0))
            except (ValueError, AttributeError):
                continue
    return total


# -- pairs ---------------------------------------------------------------------------------------
# each kind of source, known by the first of these keys that it holds, and the keys it takes
SOURCE_KEYS = {"beir": frozenset({"beir", "pairs", "split", "instruction", "max_rows"}),
               "stdlib": frozenset({"stdlib", "max_rows"}),
               "wordnet": frozenset({"wordnet", "kinds", "seed", "max_rows"}),
               "file": frozenset({"file", "max_rows"})}
SOURCE_FORMS = ("a source is {beir: PATH, pairs: title-text|lead-rest|qrels}, {stdlib: {}}, {wordnet: FOLDER, "
                "kinds: [...]} or {file: PATH}")
STDLIB_OPTIONS = frozenset({"max_chars", "strip_docstring"})
BEIR_PAIRS = ("title-text", "lead-rest", "qrels")


def _check_source(src: Any, where: str) -> None:
    """A source is a mapping of one kind's keys (a misspelt key would be ignored); refused in one line."""
    kind = next((k for k in SOURCE_KEYS if k in src), None) if isinstance(src, dict) else None
    if kind is None:
        raise InputError(f"{where}: {SOURCE_FORMS}, got {src!r:.80}.")
    unknown = sorted(set(src) - SOURCE_KEYS[kind], key=str)
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} in a {kind} source; it takes "
                         f"{', '.join(sorted(SOURCE_KEYS[kind]))}.")
    if kind == "stdlib":
        opts = src["stdlib"] if src["stdlib"] is not None else {}
        if not isinstance(opts, dict):
            raise InputError(f"{where}: stdlib must be a mapping of {', '.join(sorted(STDLIB_OPTIONS))} (or {{}}), "
                             f"got {opts!r:.60}.")
        bad = sorted(set(opts) - STDLIB_OPTIONS, key=str)
        if bad:
            raise InputError(f"{where}: unknown key {bad[0]!r} in stdlib; it takes "
                             f"{', '.join(sorted(STDLIB_OPTIONS))}.")
        _check_whole(opts, "max_chars", f"{where}: stdlib")
        if not isinstance(opts.get("strip_docstring", True), bool):
            raise InputError(f"{where}: stdlib: strip_docstring must be true or false, got "
                             f"{opts['strip_docstring']!r:.60}.")
    else:
        _check_text(src, kind, where)
    if kind == "beir":
        if src.get("pairs", "title-text") not in BEIR_PAIRS:
            raise InputError(f"{where}: pairs must be title-text, lead-rest or qrels, got {src['pairs']!r:.60}.")
        _check_text(src, "split", where, what="a split name")
        _check_text(src, "instruction", where, nullable=True, what="an instruction")
    if kind == "wordnet":
        from ..train.wordnet_pairs import KINDS as WORDNET_KINDS

        kinds = src.get("kinds", list(WORDNET_KINDS))
        if not isinstance(kinds, list) or not kinds or not all(k in WORDNET_KINDS for k in kinds):
            raise InputError(f"{where}: kinds must be a non-empty list of {', '.join(WORDNET_KINDS)}, "
                             f"got {kinds!r:.60}.")
        _check_whole(src, "seed", where, None)
    limit = src.get("max_rows")
    if limit is not None and not is_whole(limit, 1):
        raise InputError(f"{where}: max_rows must be a whole number >= 1, got {limit!r:.60}.")


def _pairs_from_source(src: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if "beir" in src:
        from ..eval.beir import load_beir

        kind = src.get("pairs", "title-text")
        if kind in ("title-text", "lead-rest"):
            rows = []
            for n, d in enumerate(_read_jsonl(Path(src["beir"]) / "corpus.jsonl")):
                title, text = (d.get("title") or "").strip(), (d.get("text") or "").strip()
                doc_id = str(d.get("_id", n))
                if kind == "title-text" and title and text:
                    rows.append({"query": title, "positive": text, "id": f"title:{doc_id}"})
                elif kind == "lead-rest":  # first sentence -> the rest of the text
                    lead, _, rest = text.partition(". ")
                    if len(lead.split()) >= 4 and len(rest.split()) >= 8:
                        rows.append({"query": lead + ".", "positive": rest, "id": f"lead:{doc_id}"})
            return rows
        if kind == "qrels":
            ds = load_beir(src["beir"], src.get("split", "train"))
            corpus = ds.corpus
            rows = []
            for q, text in zip(ds.query_ids, ds.query_texts, strict=True):
                pos = [d for d, g in ds.qrels[q].items() if g > 0 and corpus.get(d)]
                if pos:
                    rows.append({"query": text, "positive": corpus[pos[0]], "id": f"qrels:{q}",
                                 **({"instruction": src["instruction"]} if src.get("instruction") else {})})
            return rows
        raise InputError(f"{where}: pairs must be title-text, lead-rest or qrels, got {kind!r}.")
    if "stdlib" in src:
        from ..train.stdlib_pairs import collect_pairs

        opts = src["stdlib"] or {}
        return [{"query": p.query, "positive": p.source[: int(opts.get("max_chars", 2000))], "task": "code",
                 "id": f"stdlib:{p.name}"} for p in collect_pairs(strip_docstring=opts.get("strip_docstring", True))]
    if "wordnet" in src:
        from ..train.wordnet_pairs import KINDS, wordnet_pairs

        kinds = src.get("kinds", list(KINDS))
        if not isinstance(kinds, list) or not kinds:
            raise InputError(f"{where}: kinds must be a non-empty list of {', '.join(KINDS)}, got {kinds!r:.60}.")
        return wordnet_pairs(src["wordnet"], kinds=tuple(kinds), seed=int(src.get("seed", 0)))
    if "file" in src:
        rows = _read_jsonl(src["file"])
        return [{**r, "id": r.get("id", f"file:{i}")} for i, r in enumerate(rows)]
    raise InputError(f"{where}: {SOURCE_FORMS}, got {src!r:.80}.")


def check_pairs(settings: dict[str, Any], name: str) -> float:
    """A pairs stage's `held_out` and `sources` (each one's keys), checked when the recipe is loaded and again
    when the stage runs, before any source is read -> the held-out fraction."""
    fraction = settings.get("held_out", 0.05)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 1:
        raise InputError(f"stage {name}: held_out must be the fraction of rows kept out of training, a "
                         f"number from 0 up to (not including) 1 (default 0.05), got {fraction!r:.60}.")
    sources = settings["sources"]
    if not isinstance(sources, list) or not sources:
        raise InputError(f"stage {name}: sources must be a non-empty list of sources (e.g. [{{file: "
                         f"pairs.jsonl}}]), got {sources!r:.60}.")
    for i, src in enumerate(sources):
        _check_source(src, f"stage {name}: sources[{i}]")
    return float(fraction)


def run_pairs(ctx: StageContext) -> StageResult:
    s = ctx.settings
    fraction = check_pairs(s, ctx.stage.name)
    sources = s["sources"]
    rows: list[dict[str, Any]] = []
    counts = {}
    for i, src in enumerate(sources):
        got = _pairs_from_source(src, f"stage {ctx.stage.name}: sources[{i}]")
        limit = src.get("max_rows")
        if limit:
            random.Random(ctx.recipe.seed + i).shuffle(got)
            got = got[: int(limit)]
        counts[str(i)] = len(got)
        rows += got
    if not rows:
        raise InputError(f"stage {ctx.stage.name}: its sources gave no pairs.")
    train = [r for r in rows if not _held_out(r["id"], fraction, ctx.recipe.seed)]
    held = [r for r in rows if _held_out(r["id"], fraction, ctx.recipe.seed)]
    random.Random(ctx.recipe.seed).shuffle(train)
    _write_rows(ctx.out / "train.jsonl", train)
    _write_rows(ctx.out / "heldout.jsonl", held)
    return StageResult({"train": "train.jsonl", "heldout": "heldout.jsonl"},
                       {"rows": len(train), "held_out_rows": len(held), "per_source": counts})


# -- tokenizer and init ----------------------------------------------------------------------------
def check_tokenizer(settings: dict[str, Any], name: str) -> None:
    """`train_on` is a path or a non-empty list of paths; `vocab_size` holds at least the 256 bytes, the special
    tokens and the three merges that make "yes" and "no" single tokens."""
    from ..tiny import SPECIAL_TOKENS

    where = f"stage {name}"
    files = settings["train_on"]
    if not (isinstance(files, str) and files) and not (
            isinstance(files, list) and files and all(isinstance(f, str) and f for f in files)):
        raise InputError(f"{where}: train_on must be a pair file or a non-empty list of them, got {files!r:.60}.")
    low = 256 + len(SPECIAL_TOKENS) + 3
    _check_whole(settings, "vocab_size", where, low,
                 why=f" (the 256 bytes, {len(SPECIAL_TOKENS)} special tokens and the merges of 'yes' and 'no')")


def run_tokenizer(ctx: StageContext) -> StageResult:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ..tiny import SPECIAL_TOKENS

    check_tokenizer(ctx.settings, ctx.stage.name)
    files = ctx.settings["train_on"]
    files = files if isinstance(files, list) else [files]
    texts: list[str] = []
    for f in files:
        for r in _read_jsonl(f):
            texts += [str(r.get("query", "")), str(r.get("positive", ""))]
    texts += ["yes", "no", "yes no", "no yes"] * 200  # the reranker's answers stay single tokens
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    vocab = int(ctx.settings.get("vocab_size", 8192))
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    for word in ("yes", "no"):
        if len(tok.encode(word, add_special_tokens=False).ids) != 1:
            raise InputError(f"stage {ctx.stage.name}: {word!r} did not become one token; raise vocab_size.")
    tok.save(str(ctx.out / "tokenizer.json"))
    return StageResult({"tokenizer": "tokenizer.json"}, {"vocab_size": tok.get_vocab_size(), "texts": len(texts)})


SHAPE_KEYS = frozenset({"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                        "intermediate_size", "max_position_embeddings", "tie_word_embeddings"})
MODEL_KINDS = ("embedding", "reranker", "seq-cls")  # what `tiny.make_checkpoint` makes
INIT_DTYPES = ("float32", "bfloat16")


def check_init(settings: dict[str, Any], name: str) -> None:
    """`from_embedding` alone (with model_kind: reranker), or a shape of known keys, each a whole number >= 1
    (tie_word_embeddings: true or false), a known model_kind and dtype, a whole seed, a tokenizer path or name."""
    s, where = settings, f"stage {name}"
    if s.get("from_embedding"):  # a reranker whose trunk is a trained embedder's (rerank_model.py says why)
        if s.get("model_kind") != "reranker" or s.get("shape") or s.get("tokenizer"):
            raise InputError(f"{where}: from_embedding makes a reranker of the embedder's shape and "
                             "tokenizer; set model_kind: reranker and leave out shape and tokenizer.")
        _check_text(s, "from_embedding", where)
        return
    shape = s.get("shape") or {}
    if not isinstance(shape, dict):
        raise InputError(f"{where}: shape must be a mapping of {', '.join(sorted(SHAPE_KEYS))}, got {shape!r:.60}.")
    unknown = sorted(set(shape) - SHAPE_KEYS, key=str)
    if unknown:
        raise InputError(f"{where}: unknown shape key {unknown[0]!r}; use {', '.join(sorted(SHAPE_KEYS))}.")
    for key, value in shape.items():
        if key == "tie_word_embeddings":
            if value is not None and not isinstance(value, bool):
                raise InputError(f"{where}: shape.tie_word_embeddings must be true, false or null, got {value!r:.60}.")
        else:
            _check_whole(shape, key, f"{where}: shape")
    if s.get("model_kind", "embedding") not in MODEL_KINDS:
        raise InputError(f"{where}: model_kind must be {', '.join(MODEL_KINDS)}, got {s['model_kind']!r:.60}.")
    if s.get("dtype", "float32") not in INIT_DTYPES:
        raise InputError(f"{where}: dtype must be {' or '.join(INIT_DTYPES)}, got {s['dtype']!r:.60}.")
    _check_whole(s, "seed", where, None)
    _check_text(s, "tokenizer", where, what="auto, real, small or the path of a tokenizer.json")


def run_init(ctx: StageContext) -> StageResult:
    from ..tiny import make_checkpoint

    s = ctx.settings
    check_init(s, ctx.stage.name)
    if s.get("from_embedding"):  # a reranker whose trunk is a trained embedder's (rerank_model.py says why)
        from ..train.rerank_model import reranker_from_embedding

        path = reranker_from_embedding(s["from_embedding"], ctx.out / "model")
        return StageResult({"model": path.name}, {"from_embedding": str(s["from_embedding"])})
    shape = dict(s.get("shape") or {})
    path = make_checkpoint(ctx.out / "model", s.get("model_kind", "embedding"),
                           tokenizer=str(s.get("tokenizer", "auto")), seed=int(s.get("seed", ctx.recipe.seed)),
                           dtype=s.get("dtype", "float32"), **shape)
    return StageResult({"model": path.name}, {"shape": shape})


# -- training --------------------------------------------------------------------------------------
LORA_FOLDER = "merged-lora"  # a LoRA stage's adapters folded into its base (checkpoints by step, `final`)


def parse_train_config(config: Any, output_dir: str | Path, name: str) -> TrainConfig:
    """A stage's `config:` as the training package parses and validates it (`TrainConfig.from_dict`; its
    errors are ConfigErrors naming the stage), writing into `output_dir`. The settings are left as they are."""
    from ..train.config import TrainConfig

    if not isinstance(config, dict):
        raise InputError(f"stage {name}: config must be a mapping of training sections (model, data, loss, optim, "
                         f"train, lora, eval, rerank, merge; docs/train.md), got {config!r:.60}.")
    raw = json.loads(json.dumps(config, default=str))  # a copy; a YAML date becomes text, which from_dict refuses
    if raw.get("train") is None:
        raw["train"] = {}
    if isinstance(raw["train"], dict):  # else from_dict names the problem
        raw["train"]["output_dir"] = str(output_dir)
    return TrainConfig.from_dict(raw, source=f"stage {name}")


def kept_checkpoints(cfg: TrainConfig) -> int:
    """How many checkpoints a finished run of `cfg` keeps: one every `train.save_every` steps and one at
    `train.max_steps` (only that one when save_every is 0), the newest `train.keep_checkpoints` of them."""
    t = cfg.train
    every = abs(t.save_every)
    saves = t.max_steps // every + (t.max_steps % every != 0) if every else 1
    return min(max(1, t.keep_checkpoints), saves)


def check_training(settings: dict[str, Any], name: str) -> None:
    parse_train_config(settings["config"], "run", name)


def training_counts(settings: dict[str, Any], name: str) -> dict[str, int]:
    """The number of paths a training stage's `checkpoints` will hold."""
    return {"checkpoints": kept_checkpoints(parse_train_config(settings["config"], "run", name))}


def _train_config(ctx: StageContext) -> TrainConfig:
    return parse_train_config(ctx.settings.get("config"), ctx.out / "run", ctx.stage.name)


def _fold(base: str | None, adapter: Path, out: Path) -> Path:
    """`adapter` folded into its base (`merge-lora`) as the checkpoint folder `out`; kept when there already
    (written whole by a rename: a run killed while folding resumes with the next one)."""
    from ..train.merge import merge_adapter

    if out.is_dir():
        return out
    if base is None:  # the base the adapter records (the trainer writes model.path there)
        from ..train.lora import ADAPTER_CONFIG

        base = json.loads((adapter / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not base:
            raise InputError(f"{adapter} names no base model (base_model_name_or_path); it cannot be folded.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return merge_adapter(base, adapter, out, progress=False)


def _training_result(ctx: StageContext, summary: dict[str, Any], base: str | None = None) -> StageResult:
    """The outputs of a finished training run under `ctx.out / "run"`: its model and the checkpoints it kept, in
    step order. A LoRA run's adapters (a checkpoint's `adapter/`; `run/adapter` when the trainer did not merge
    the model, `lora.merge_at_end: false`) are folded into `base` (None: the base each adapter records) under
    merged-lora/, so that every output is a plain checkpoint."""
    run = ctx.out / "run"
    ckpts = sorted(p for p in (run / "checkpoints").glob("step-*")
                   if (p / "model").is_dir() or (p / "adapter").is_dir())
    adapters = [p for p in ckpts if not (p / "model").is_dir()]
    final_adapter = not (run / "model").is_dir() and (run / "adapter").is_dir()
    if adapters or final_adapter:
        ctx.say(f"[{ctx.stage.name}] folding {len(adapters) + final_adapter} LoRA adapter(s) into the base "
                f"({LORA_FOLDER}/)")
    checkpoints = [p / "model" if (p / "model").is_dir() else _fold(base, p / "adapter", ctx.out / LORA_FOLDER / p.name)
                   for p in ckpts]
    model = _fold(base, run / "adapter", ctx.out / LORA_FOLDER / "final") if final_adapter else run / "model"
    return StageResult(
        {"model": str(model.relative_to(ctx.out)), "checkpoints": [str(p.relative_to(ctx.out)) for p in checkpoints],
         "log": "run/train_log.jsonl"},
        {"steps": summary.get("step"), "tokens": _log_tokens(run / "train_log.jsonl"),
         "resumed_from": summary.get("resumed")})


def run_train_embed(ctx: StageContext) -> StageResult:
    from ..train.loop import train

    cfg = _train_config(ctx)
    return _training_result(ctx, train(cfg), cfg.model.path)


def run_train_rerank(ctx: StageContext) -> StageResult:
    from ..train.loop import train

    cfg = _train_config(ctx)
    return _training_result(ctx, train(cfg, kind="rerank"), cfg.model.path)


# -- mining, merging ------------------------------------------------------------------------------
def check_mine(settings: dict[str, Any], name: str) -> None:
    """Paths for model, input and corpus; top_k, num_negatives, chunk and max_length whole numbers >= 1; dim one
    or null; margin a number (`train.mining.MiningSettings`)."""
    s, where = settings, f"stage {name}"
    for key in ("model", "input"):
        _check_text(s, key, where)
    _check_text(s, "corpus", where, nullable=True)
    _check_text(s, "device", where, nullable=True, what="a device (cpu, cuda, cuda:N)")
    for key in ("top_k", "num_negatives", "chunk", "max_length"):
        _check_whole(s, key, where)
    _check_whole(s, "dim", where, nullable=True)
    _check_number(s, "margin", where)


def run_mine(ctx: StageContext) -> StageResult:
    from ..embedder import Embedder
    from ..train.mining import MiningSettings, mine

    s = ctx.settings
    check_mine(s, ctx.stage.name)
    emb = Embedder.from_pretrained(s["model"], device=s.get("device"), max_length=int(s.get("max_length", 512)))
    settings = MiningSettings(**{k: s[k] for k in ("top_k", "num_negatives", "margin", "chunk", "dim")
                                 if k in s}, seed=ctx.recipe.seed)
    stats = mine(emb, s["input"], ctx.out / "pairs.jsonl", corpus_path=s.get("corpus"), settings=settings)
    return StageResult({"pairs": "pairs.jsonl"}, stats)


def check_merge(settings: dict[str, Any], name: str) -> list[str]:
    """The checkpoints a merge stage merges (its `models` flattened, the newest `last` of them), checked with
    its method, t, weights and base as `qwen-embed merge` checks them (`train.merge.check_params`). `last`
    more than there are is refused, as the trainer's `merge.checkpoints: last-K` is."""
    from ..train.merge import check_params

    s, where = settings, f"stage {name}"
    models = s["models"] if isinstance(s["models"], list) else [s["models"]]
    models = [m for group in models for m in (group if isinstance(group, list) else [group])]
    bad = next((m for m in models if not isinstance(m, str) or not m), None)
    if bad is not None:
        raise InputError(f"{where}: models must be checkpoint folders (paths, or {{from: STAGE.checkpoints}}), "
                         f"got {bad!r:.60}.")
    last = s.get("last")
    if last is not None:
        if not is_whole(last, 1):  # models[-0:] would be all of them, models[-(-1):] all but the first
            raise InputError(f"{where}: last must be a whole number >= 1 (merge the newest `last` checkpoints), got "
                             f"{last!r:.60}.")
        if last > len(models):
            raise InputError(f"{where}: last is {last} but models holds {len(models)} checkpoint(s); merge at most "
                             f"{len(models)}, or keep more (train.keep_checkpoints, train.save_every of the stage "
                             f"that makes them).")
        models = models[-last:]
    if len(models) < 2:
        raise InputError(f"{where}: merging needs at least two checkpoints, got {len(models)}.")
    method, t, weights = s["method"], s.get("t"), s.get("weights")
    if not isinstance(method, str):
        raise InputError(f"{where}: method must be linear, slerp, multislerp or task-slerp, got {method!r:.60}.")
    if t is not None:
        _check_number(s, "t", where, 0, 1)
    if weights is not None and not (isinstance(weights, list) and all(
            isinstance(w, int | float) and not isinstance(w, bool) for w in weights)):
        raise InputError(f"{where}: weights must be a list of numbers, one per checkpoint, got {weights!r:.60}.")
    _check_text(s, "base", where, nullable=True)
    try:
        check_params(method, len(models), base=s.get("base") is not None, weights=weights, t=t)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    return models


def run_merge(ctx: StageContext) -> StageResult:
    from ..files import write_json_atomic
    from ..train.merge import REPORT_NAME, merge_checkpoints

    s = ctx.settings
    models = check_merge(s, ctx.stage.name)
    opts = {k: s[k] for k in ("method", "base", "weights", "t") if k in s}
    report = merge_checkpoints(models, ctx.out / "model", **opts)
    report.output = str(ctx.final / "model")  # where the merge will be once the stage folder is renamed
    write_json_atomic(ctx.out / "model" / REPORT_NAME, report.to_dict())
    return StageResult({"model": "model"}, {"inputs": [str(m) for m in models]})


# -- synthetic data ------------------------------------------------------------------------------
def check_synth(settings: dict[str, Any], name: str) -> None:
    """Paths and names; a generator that `synth.make_generator` takes (an endpoint needs `model`); `settings` and
    `generator_settings` mappings of the synth package's tables, checked by their own `check()`."""
    from ..synth import GeneratorSettings, SynthSettings

    s, where = settings, f"stage {name}"
    for key in ("passages", "personas", "embedding_model"):
        _check_text(s, key, where)
    _check_text(s, "generator", where, what="http(s)://HOST/v1 or local:PATH")
    _check_text(s, "model", where, nullable=True, what="the name of the model the endpoint serves")
    generator = s["generator"]
    if generator.lower().startswith(("http://", "https://")) and not s.get("model"):
        raise InputError(f"{where}: generator {generator} is an endpoint: set model: NAME (the model it serves).")
    if not generator.startswith("local:") and not generator.lower().startswith(("http://", "https://")):
        raise InputError(f"{where}: generator {generator!r:.80} is neither an http(s):// base URL of an "
                         f"OpenAI-compatible server (e.g. http://localhost:8000/v1) nor local:PATH of a causal LM.")
    _check_table(SynthSettings, s.get("settings"), "settings", where)
    _check_table(GeneratorSettings, s.get("generator_settings"), "generator_settings", where)


def run_synth(ctx: StageContext) -> StageResult:
    """`synth queries`: persona-based two-stage generation (resumable, cached) into pairs.jsonl."""
    from ..embedder import Embedder
    from ..synth import GeneratorSettings, LazyEmbedder, SynthSettings, generate_queries, make_generator

    s = ctx.settings
    check_synth(s, ctx.stage.name)
    gen_settings = GeneratorSettings(**(s.get("generator_settings") or {}))
    generator = make_generator(str(s["generator"]), s.get("model"), gen_settings, seed=ctx.recipe.seed)
    name = str(s["embedding_model"])
    embedder = LazyEmbedder(name, lambda: Embedder.from_pretrained(name, max_length=512))
    settings = SynthSettings(**{"seed": ctx.recipe.seed, **(s.get("settings") or {})})
    summary = generate_queries(s["passages"], s["personas"], ctx.out / "pairs.jsonl", generator=generator,
                               embedder=embedder, settings=settings)
    return StageResult({"pairs": "pairs.jsonl"}, dict(summary))


def check_filter(settings: dict[str, Any], name: str) -> None:
    """Paths for input and embedding_model; min_cos a cosine, from -1 to 1."""
    s, where = settings, f"stage {name}"
    for key in ("input", "embedding_model"):
        _check_text(s, key, where)
    _check_number(s, "min_cos", where, -1, 1)


def run_filter(ctx: StageContext) -> StageResult:
    """`synth filter`: keep pairs whose query-passage cosine exceeds min_cos, without duplicates."""
    from ..embedder import Embedder
    from ..synth import DEFAULT_MIN_COS, filter_pairs

    s = ctx.settings
    check_filter(s, ctx.stage.name)
    emb = Embedder.from_pretrained(s["embedding_model"], max_length=512)
    stats = filter_pairs(s["input"], ctx.out / "pairs.jsonl", embedder=emb,
                         min_cos=float(s.get("min_cos", DEFAULT_MIN_COS)))
    return StageResult({"pairs": "pairs.jsonl"}, dict(stats))


# -- evaluation ------------------------------------------------------------------------------------
EVALUATE_KEYS = frozenset({"dataset", "split", "max_queries", "max_docs", "instruction", "device", "max_length"})


def check_eval_set(settings: dict[str, Any], where: str) -> None:
    """The settings of a held-out BEIR cut (the recipe's `evaluate:` and an eval stage's): a dataset folder, a
    split, max_queries and max_docs whole numbers >= 1 (or null: all), max_length >= 1, an instruction, a device."""
    s = settings
    _check_text(s, "dataset", where, what="a BEIR folder")
    _check_text(s, "split", where, what="a split name (test, dev, train)")
    for key in ("max_queries", "max_docs"):
        _check_whole(s, key, where, nullable=True)
    _check_whole(s, "max_length", where)
    _check_text(s, "instruction", where, nullable=True, what="an instruction")
    _check_text(s, "device", where, nullable=True, what="a device (cpu, cuda, cuda:N)")


def check_evaluate(evaluate: dict[str, Any]) -> None:
    """The recipe's `evaluate:` (empty: no held-out metric): only the keys of a held-out cut, a dataset."""
    if not evaluate:
        return
    unknown = sorted(set(evaluate) - EVALUATE_KEYS, key=str)
    if unknown:
        raise InputError(f"evaluate: unknown key {unknown[0]!r}; it takes {', '.join(sorted(EVALUATE_KEYS))}.")
    if "dataset" not in evaluate:
        raise InputError("evaluate needs dataset: a BEIR folder (e.g. evaluate: {dataset: data/scifact, split: "
                         "test}); leave evaluate out for no held-out metric.")
    check_eval_set(evaluate, "evaluate")


def check_eval(settings: dict[str, Any], name: str) -> None:
    """An eval stage: its embedder (and reranker) paths, its held-out cut, `top` >= 1."""
    s, where = settings, f"stage {name}"
    _check_text(s, "embedder", where)
    _check_text(s, "reranker", where, nullable=True)
    check_eval_set(s, where)
    _check_whole(s, "top", where)


def load_eval_dataset(settings: dict[str, Any]) -> Any:
    """A BEIR split, optionally cut to its first `max_queries` judged queries and a corpus of at most
    `max_docs` documents (the judged ones first), for quick held-out checks."""
    from ..eval.beir import BeirDataset, load_beir

    ds = load_beir(settings["dataset"], settings.get("split", "test"))
    mq, md = settings.get("max_queries"), settings.get("max_docs")
    if not mq and not md:
        return ds
    qids = ds.query_ids[: int(mq)] if mq else ds.query_ids
    judged = [d for q in qids for d in ds.qrels[q]]
    first = list(dict.fromkeys(judged))
    rest = [d for d in ds.corpus_ids if d not in set(first)]
    limit = max(int(md), len(first)) if md else len(ds.corpus_ids)
    keep = set(first + rest[: max(0, limit - len(first))])
    corpus = [(i, t) for i, t in zip(ds.corpus_ids, ds.corpus_texts, strict=True) if i in keep]
    qtext = dict(zip(ds.query_ids, ds.query_texts, strict=True))
    return BeirDataset(ds.name, ds.split, [i for i, _ in corpus], [t for _, t in corpus], qids,
                       [qtext[q] for q in qids], {q: ds.qrels[q] for q in qids}, dict(ds.stats))


class HeldOut:
    """One recipe run's evaluation data: each BEIR cut (`load_eval_dataset`) read once, and the token ids of
    its texts kept per tokenizer (its fingerprint), max length and instruction, for the held-out check after
    every stage and the final evaluation, which evaluate models of one tokenizer on the same texts (reading
    and tokenizing them again took ~1 s of CPU per evaluation of the tiny recipe). Kept for the run only."""

    def __init__(self) -> None:
        self._datasets: dict[tuple[Any, ...], Any] = {}
        self._ids: dict[tuple[Any, ...], list[list[int]]] = {}

    def dataset(self, settings: dict[str, Any]) -> Any:
        """`load_eval_dataset(settings)`, read once per dataset, split and cut."""
        key = (settings["dataset"], settings.get("split", "test"), settings.get("max_queries"),
               settings.get("max_docs"))
        if key not in self._datasets:
            self._datasets[key] = load_eval_dataset(settings)
        return self._datasets[key]

    def tokenize(self, embedder: Embedder, texts: Sequence[str], instruction: str | None) -> list[list[int]]:
        """`eval.retrieval.tokenize_texts`, once per tokenizer, max length, instruction and texts."""
        from ..eval.retrieval import tokenize_texts

        key = (embedder.tokenizer.fingerprint, embedder.max_length, instruction, tuple(texts))
        if key not in self._ids:
            self._ids[key] = tokenize_texts(embedder, texts, instruction)
        return self._ids[key]


def retrieval_metric(model: str | Path, settings: dict[str, Any], held_out: HeldOut | None = None,
                     ) -> dict[str, Any]:
    """nDCG@10 (and Recall@100) of an embedding model on the recipe's held-out set (read and tokenized
    through `held_out`, a fresh `HeldOut` when None)."""
    from ..embedder import DEFAULT_INSTRUCTION, Embedder
    from ..eval.retrieval import evaluate_retrieval

    data = held_out or HeldOut()
    emb = Embedder.from_pretrained(model, device=settings.get("device"),
                                   max_length=int(settings.get("max_length", 512)))
    ds = data.dataset(settings)
    instruction = settings.get("instruction", DEFAULT_INSTRUCTION)
    res = evaluate_retrieval(emb, ds, instruction=instruction, ks=[10, 100], depth=100, progress=False,
                             tokenize=data.tokenize)
    agg = res.dims[0].evaluation.aggregate
    return {"ndcg_at_10": agg.get("ndcg_cut_10"), "recall_at_100": agg.get("recall_100"),
            "queries": len(ds.query_ids), "documents": len(ds.corpus_ids), "run": res.dims[0].run}


def run_eval(ctx: StageContext) -> StageResult:
    s = ctx.settings
    check_eval(s, ctx.stage.name)
    data = ctx.held_out or HeldOut()
    result = retrieval_metric(s["embedder"], s, data)
    run = result.pop("run")
    report: dict[str, Any] = {"retrieval": result}
    if s.get("reranker"):
        from ..embedder import DEFAULT_INSTRUCTION
        from ..eval.rerank import evaluate_rerank
        from ..reranker import Reranker

        rr = Reranker.from_pretrained(s["reranker"], device=s.get("device"),
                                      max_length=int(s.get("max_length", 512)))
        ds = data.dataset(s)
        ev = evaluate_rerank(rr, ds, run, instruction=s.get("instruction", DEFAULT_INSTRUCTION),
                             top=int(s.get("top", 100)), ks=[10], progress=False)
        report["rerank"] = {"ndcg_at_10_before": ev.before.aggregate.get("ndcg_cut_10"),
                            "ndcg_at_10_after": ev.after.aggregate.get("ndcg_cut_10"), "top": ev.top}
    from ..files import write_json_atomic

    write_json_atomic(ctx.out / "report.json", report)
    stats = {"ndcg_at_10": result["ndcg_at_10"]}
    if "rerank" in report:
        stats["rerank_ndcg_at_10"] = report["rerank"]["ndcg_at_10_after"]
    return StageResult({"report": "report.json"}, stats)


KINDS: dict[str, Kind] = {
    "pairs": Kind(("train", "heldout"), frozenset({"sources", "held_out"}), run_pairs, frozenset({"sources"}),
                  check=check_pairs),
    "tokenizer": Kind(("tokenizer",), frozenset({"train_on", "vocab_size"}), run_tokenizer, frozenset({"train_on"}),
                      check=check_tokenizer),
    "init": Kind(("model",), frozenset({"shape", "tokenizer", "seed", "dtype", "model_kind", "from_embedding"}),
                 run_init, model_output="model", check=check_init),
    "synth": Kind(("pairs",), frozenset({"passages", "personas", "generator", "model", "embedding_model",
                                         "settings", "generator_settings"}), run_synth,
                  frozenset({"passages", "personas", "generator", "embedding_model"}), check=check_synth),
    "filter": Kind(("pairs",), frozenset({"input", "embedding_model", "min_cos"}), run_filter,
                   frozenset({"input", "embedding_model"}), check=check_filter),
    "train-embed": Kind(("model", "checkpoints", "log"), frozenset({"config"}), run_train_embed,
                        frozenset({"config"}), model_output="model", check=check_training, counts=training_counts),
    "mine": Kind(("pairs",), frozenset({"model", "input", "corpus", "top_k", "num_negatives", "margin", "chunk", "dim",
                                        "device", "max_length"}), run_mine, frozenset({"model", "input"}),
                 check=check_mine),
    "merge": Kind(("model",), frozenset({"models", "last", "method", "base", "weights", "t"}), run_merge,
                  frozenset({"models", "method"}), model_output="model", check=check_merge),
    "train-rerank": Kind(("model", "checkpoints", "log"), frozenset({"config"}), run_train_rerank,
                         frozenset({"config"}), check=check_training, counts=training_counts),
    "eval": Kind(("report",), frozenset({"embedder", "reranker", "dataset", "split", "top", "max_queries",
                                         "max_docs", "instruction", "device", "max_length"}), run_eval,
                 frozenset({"embedder", "dataset"}), check=check_eval),
}


def check_recipe(recipe: Recipe) -> None:
    """Validate names, kinds, the reference graph, then every stage's settings in full (its kind's `check`,
    references standing for paths) and the `evaluate:` set, before any work (see spec.py); each mistake is one
    InputError naming the recipe file."""
    where = str(recipe.path)
    position = {}
    for i, s in enumerate(recipe.stages):
        if s.name in position:
            raise InputError(f"recipe {where}: two stages are named {s.name!r}; names must be unique.")
        if not s.name.replace("-", "_").isidentifier():
            raise InputError(f"recipe {where}: stage name {s.name!r} must be letters, digits, '_' or '-'.")
        position[s.name] = i
    edges: dict[str, set[str]] = {s.name: set() for s in recipe.stages}
    for s in recipe.stages:
        kind = KINDS.get(s.kind)
        if kind is None:
            raise InputError(f"recipe {where}: stage {s.name!r} has unknown kind {s.kind!r}; kinds: "
                             f"{', '.join(KINDS)}.")
        unknown = sorted(set(s.settings) - kind.settings, key=str)
        if unknown:
            raise InputError(f"recipe {where}: stage {s.name!r} ({s.kind}) has unknown setting {unknown[0]!r}; "
                             f"it takes {', '.join(sorted(kind.settings))}.")
        missing = sorted(kind.required - set(s.settings))
        if missing:
            raise InputError(f"recipe {where}: stage {s.name!r} ({s.kind}) needs the setting {missing[0]!r}.")
        try:
            refs = list(refs_in(s.settings, s.name))
        except InputError as e:  # a malformed reference: name the file too
            raise InputError(f"recipe {where}: {e}") from None
        for key, ref in refs:
            if ref.stage not in position:
                raise InputError(f"recipe {where}: {key} refers to {ref}, but there is no stage {ref.stage!r}.")
            edges[s.name].add(ref.stage)
            target = recipe.stages[position[ref.stage]]
            if ref.output not in KINDS[target.kind].outputs:
                raise InputError(f"recipe {where}: {key} refers to {ref}, but a {target.kind} stage outputs "
                                 f"{', '.join(KINDS[target.kind].outputs)}.")
    cycle = _find_cycle(edges)
    if cycle:
        raise InputError(f"recipe {where}: the stages form a cycle: {' -> '.join(cycle)}; each stage may only "
                         f"use outputs of stages before it.")
    for i, s in enumerate(recipe.stages):
        for key, ref in refs_in(s.settings, s.name):
            if position[ref.stage] >= i:
                what = "itself" if ref.stage == s.name else f"the later stage {ref.stage!r}"
                raise InputError(f"recipe {where}: {key} refers to {ref}, an output of {what}; a stage may only "
                                 f"use outputs of stages before it (move it after {ref.stage!r}).")
    # the settings, as each stage's run would check them: a typo in a later stage is found now, not after the
    # stages before it ran (and a finished stage of the same name is never touched for it)
    counts: dict[str, dict[str, int]] = {}  # the lengths of earlier stages' list outputs (checkpoints)
    try:
        check_evaluate(recipe.evaluate)
        for s in recipe.stages:
            kind = KINDS[s.kind]
            settings = _pending(s.settings, s.name, counts)
            if kind.check is not None:
                kind.check(settings, repr(s.name))
            counts[s.name] = kind.counts(settings, repr(s.name)) if kind.counts is not None else {}
    except QwenEmbedError as e:  # an InputError, or the training package's ConfigError
        raise InputError(f"recipe {where}: {e}") from None


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges[n]):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if state.get(m) is None and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in edges:
        if state.get(n) is None and (found := visit(n)):
            return found
    return None
