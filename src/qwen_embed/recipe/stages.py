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
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InputError, is_whole
from .spec import Recipe, Stage, refs_in

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..embedder import Embedder


@dataclass
class StageContext:
    """What a stage's run function gets: resolved settings, its (partial) folder, the recipe."""

    recipe: Recipe
    stage: Stage
    settings: dict[str, Any]  # references replaced by absolute paths
    out: Path
    say: Callable[[str], None] = print
    held_out: HeldOut | None = None  # the run's evaluation sets (a fresh one when None)


@dataclass
class StageResult:
    """Outputs (paths relative to the stage folder) and facts for the report."""

    outputs: dict[str, str | list[str]]
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    outputs: tuple[str, ...]
    settings: frozenset[str]
    run: Callable[[StageContext], StageResult]
    required: frozenset[str] = frozenset()
    model_output: str | None = None  # an embedding model evaluated after the stage (held-out metric)


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
def run_tokenizer(ctx: StageContext) -> StageResult:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ..tiny import SPECIAL_TOKENS

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


def run_init(ctx: StageContext) -> StageResult:
    from ..tiny import make_checkpoint

    s = ctx.settings
    if s.get("from_embedding"):  # a reranker whose trunk is a trained embedder's (rerank_model.py says why)
        from ..train.rerank_model import reranker_from_embedding

        if s.get("model_kind") != "reranker" or s.get("shape") or s.get("tokenizer"):
            raise InputError(f"stage {ctx.stage.name}: from_embedding makes a reranker of the embedder's shape and "
                             "tokenizer; set model_kind: reranker and leave out shape and tokenizer.")
        path = reranker_from_embedding(s["from_embedding"], ctx.out / "model")
        return StageResult({"model": path.name}, {"from_embedding": str(s["from_embedding"])})
    shape = dict(s.get("shape") or {})
    allowed = {"hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
               "intermediate_size", "max_position_embeddings", "tie_word_embeddings"}
    unknown = sorted(set(shape) - allowed)
    if unknown:
        raise InputError(f"stage {ctx.stage.name}: unknown shape key {unknown[0]!r}; use "
                         f"{', '.join(sorted(allowed))}.")
    path = make_checkpoint(ctx.out / "model", s.get("model_kind", "embedding"),
                           tokenizer=str(s.get("tokenizer", "auto")), seed=int(s.get("seed", ctx.recipe.seed)),
                           dtype=s.get("dtype", "float32"), **shape)
    return StageResult({"model": path.name}, {"shape": shape})


# -- training --------------------------------------------------------------------------------------
def _train_config(ctx: StageContext) -> Any:
    from ..train.config import TrainConfig

    raw = json.loads(json.dumps(ctx.settings["config"]))
    raw.setdefault("train", {})["output_dir"] = str(ctx.out / "run")
    return TrainConfig.from_dict(raw, source=f"stage {ctx.stage.name}")


def _training_result(ctx: StageContext, summary: dict[str, Any]) -> StageResult:
    run = ctx.out / "run"
    ckpts = sorted(p for p in (run / "checkpoints").glob("step-*") if (p / "model").is_dir())
    return StageResult(
        {"model": "run/model", "checkpoints": [str(p.relative_to(ctx.out) / "model") for p in ckpts],
         "log": "run/train_log.jsonl"},
        {"steps": summary.get("step"), "tokens": _log_tokens(run / "train_log.jsonl"),
         "resumed_from": summary.get("resumed")})


def run_train_embed(ctx: StageContext) -> StageResult:
    from ..train.loop import train

    return _training_result(ctx, train(_train_config(ctx)))


def run_train_rerank(ctx: StageContext) -> StageResult:
    from ..train.loop import train

    return _training_result(ctx, train(_train_config(ctx), kind="rerank"))


# -- mining, merging ------------------------------------------------------------------------------
def run_mine(ctx: StageContext) -> StageResult:
    from ..embedder import Embedder
    from ..train.mining import MiningSettings, mine

    s = ctx.settings
    emb = Embedder.from_pretrained(s["model"], device=s.get("device"), max_length=int(s.get("max_length", 512)))
    settings = MiningSettings(**{k: s[k] for k in ("top_k", "num_negatives", "margin", "chunk", "dim")
                                 if k in s}, seed=ctx.recipe.seed)
    stats = mine(emb, s["input"], ctx.out / "pairs.jsonl", corpus_path=s.get("corpus"), settings=settings)
    return StageResult({"pairs": "pairs.jsonl"}, stats)


def run_merge(ctx: StageContext) -> StageResult:
    from ..train.merge import merge_checkpoints

    s = ctx.settings
    models = s["models"] if isinstance(s["models"], list) else [s["models"]]
    models = [m for group in models for m in (group if isinstance(group, list) else [group])]
    last = s.get("last")
    if last is not None:
        if not is_whole(last, 1):  # models[-0:] would be all of them, models[-(-1):] all but the first
            raise InputError(f"stage {ctx.stage.name}: last must be a whole number >= 1 (merge the newest `last` "
                             f"checkpoints), got {last!r:.60}.")
        models = models[-last:]
    if len(models) < 2:
        raise InputError(f"stage {ctx.stage.name}: merging needs at least two checkpoints, got {len(models)}.")
    opts = {k: s[k] for k in ("method", "base", "weights", "t") if k in s}
    merge_checkpoints(models, ctx.out / "model", **opts)
    return StageResult({"model": "model"}, {"inputs": [str(m) for m in models]})


# -- synthetic data ------------------------------------------------------------------------------
def run_synth(ctx: StageContext) -> StageResult:
    """`synth queries`: persona-based two-stage generation (resumable, cached) into pairs.jsonl."""
    from ..embedder import Embedder
    from ..synth import GeneratorSettings, LazyEmbedder, SynthSettings, generate_queries, make_generator

    s = ctx.settings
    gen_settings = GeneratorSettings(**(s.get("generator_settings") or {}))
    generator = make_generator(str(s["generator"]), s.get("model"), gen_settings, seed=ctx.recipe.seed)
    name = str(s["embedding_model"])
    embedder = LazyEmbedder(name, lambda: Embedder.from_pretrained(name, max_length=512))
    settings = SynthSettings(**{"seed": ctx.recipe.seed, **(s.get("settings") or {})})
    summary = generate_queries(s["passages"], s["personas"], ctx.out / "pairs.jsonl", generator=generator,
                               embedder=embedder, settings=settings)
    return StageResult({"pairs": "pairs.jsonl"}, dict(summary))


def run_filter(ctx: StageContext) -> StageResult:
    """`synth filter`: keep pairs whose query-passage cosine exceeds min_cos, without duplicates."""
    from ..embedder import Embedder
    from ..synth import DEFAULT_MIN_COS, filter_pairs

    s = ctx.settings
    emb = Embedder.from_pretrained(s["embedding_model"], max_length=512)
    stats = filter_pairs(s["input"], ctx.out / "pairs.jsonl", embedder=emb,
                         min_cos=float(s.get("min_cos", DEFAULT_MIN_COS)))
    return StageResult({"pairs": "pairs.jsonl"}, dict(stats))


# -- evaluation ------------------------------------------------------------------------------------
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
    "pairs": Kind(("train", "heldout"), frozenset({"sources", "held_out"}), run_pairs, frozenset({"sources"})),
    "tokenizer": Kind(("tokenizer",), frozenset({"train_on", "vocab_size"}), run_tokenizer, frozenset({"train_on"})),
    "init": Kind(("model",), frozenset({"shape", "tokenizer", "seed", "dtype", "model_kind", "from_embedding"}),
                 run_init,
                 model_output="model"),
    "synth": Kind(("pairs",), frozenset({"passages", "personas", "generator", "model", "embedding_model",
                                         "settings", "generator_settings"}), run_synth,
                  frozenset({"passages", "personas", "generator", "embedding_model"})),
    "filter": Kind(("pairs",), frozenset({"input", "embedding_model", "min_cos"}), run_filter,
                   frozenset({"input", "embedding_model"})),
    "train-embed": Kind(("model", "checkpoints", "log"), frozenset({"config"}), run_train_embed,
                        frozenset({"config"}), model_output="model"),
    "mine": Kind(("pairs",), frozenset({"model", "input", "corpus", "top_k", "num_negatives", "margin", "chunk", "dim",
                                        "device", "max_length"}), run_mine, frozenset({"model", "input"})),
    "merge": Kind(("model",), frozenset({"models", "last", "method", "base", "weights", "t"}), run_merge,
                  frozenset({"models", "method"}), model_output="model"),
    "train-rerank": Kind(("model", "checkpoints", "log"), frozenset({"config"}), run_train_rerank,
                         frozenset({"config"})),
    "eval": Kind(("report",), frozenset({"embedder", "reranker", "dataset", "split", "top", "max_queries",
                                         "max_docs", "instruction", "device", "max_length"}), run_eval,
                 frozenset({"embedder", "dataset"})),
}


def check_recipe(recipe: Recipe) -> None:
    """Validate names, kinds, settings and the reference graph before any work (see spec.py)."""
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
        if s.kind == "pairs" and not (isinstance(s.settings["sources"], dict) and "from" in s.settings["sources"]):
            try:  # a typo in a later stage's sources is found now, not after the stages before it ran
                check_pairs(s.settings, repr(s.name))
            except InputError as e:
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
