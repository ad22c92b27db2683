"""The recipe's stage kinds (stages.py), each run on small hand-made inputs, with the library call it wraps
replaced by a recording fake where that call is training, mining, merging or a model: the KINDS table against
the module docstring; pairs from BEIR folders (title-text, lead-rest, qrels) and JSONL files, split into train
and held-out rows by id; a BPE tokenizer whose yes/no are single tokens; what init, merge, mine and eval pass
to the functions their commands call; a training stage's outputs read from its run folder; the held-out
BEIR cut and its once-per-run cache; and each mistake refused in one line."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qwen_embed.errors import ConfigError, InputError
from qwen_embed.recipe import stages
from qwen_embed.recipe.spec import Recipe, Stage
from qwen_embed.recipe.stages import (
    KINDS,
    HeldOut,
    StageContext,
    StageResult,
    _find_cycle,
    _held_out,
    _log_tokens,
    _pairs_from_source,
    _train_config,
    _training_result,
    load_eval_dataset,
    run_eval,
    run_init,
    run_merge,
    run_mine,
    run_pairs,
    run_tokenizer,
)


def context(tmp_path: Path, kind: str, settings: dict[str, Any], *, seed: int = 0, name: str = "s") -> StageContext:
    """A StageContext for stage `name` of a one-stage recipe, its folder `tmp_path/out` (made here)."""
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    stage = Stage(name, kind, settings)
    recipe = Recipe("r", tmp_path / "r.yaml", tmp_path, [stage], seed=seed)
    return StageContext(recipe, stage, settings, out, say=lambda m: None)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the table of kinds ----------------------------------------------------------------------------------------
def test_kinds_output_what_the_module_docstring_says() -> None:
    doc = stages.__doc__ or ""
    rows = re.findall(r"^\| ([a-z-]+) \| ([a-z, ]+) \| .* \|$", doc, flags=re.M)
    table = {kind: tuple(o.strip() for o in outputs.split(",")) for kind, outputs in rows if kind != "kind"}
    assert table == {name: kind.outputs for name, kind in KINDS.items()}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_required_setting_is_an_accepted_one(name: str) -> None:
    kind = KINDS[name]
    assert kind.required <= kind.settings
    assert kind.model_output is None or kind.model_output in kind.outputs


# -- held-out rows ---------------------------------------------------------------------------------------------
def test_held_out_is_a_stable_fraction_of_ids() -> None:
    keys = [f"file:{i}" for i in range(4000)]
    held = [k for k in keys if _held_out(k, 0.3, seed=0)]
    assert 0.27 < len(held) / len(keys) < 0.33
    assert held == [k for k in keys if _held_out(k, 0.3, seed=0)]  # the same ids every time
    assert {k for k in keys if _held_out(k, 0.1, seed=0)} <= set(held)  # a smaller fraction: a subset
    assert held != [k for k in keys if _held_out(k, 0.3, seed=1)]  # the seed picks other ids
    assert not any(_held_out(k, 0.0, seed=0) for k in keys)
    assert all(_held_out(k, 1.0, seed=0) for k in keys)


# -- pairs -----------------------------------------------------------------------------------------------------
LEAD = "Vaccines train the immune system well"
REST = "They expose it to a harmless piece of a germ first."


@pytest.fixture
def beir(tmp_path: Path) -> Path:
    """A five-document BEIR folder with a train split: two queries judged relevant, one judged 0."""
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", [
        {"_id": "d1", "title": "Tides", "text": "The Moon pulls the sea."},
        {"_id": "d2", "title": "", "text": "No title here. But the rest of this text has more than enough words."},
        {"_id": "d3", "title": "Vaccines", "text": f"{LEAD}. {REST}"},
        {"_id": "d4", "title": "Only a title", "text": ""},
        {"_id": "d5", "title": "  Spaced  ", "text": " Some text. "},
    ])
    write_jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "what pulls the sea"},
                                         {"_id": "q2", "text": "judged not relevant"},
                                         {"_id": "q3", "text": "how do vaccines work"}])
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\nq3\td3\t2\n")
    return root


def test_beir_title_text_pairs(beir: Path) -> None:
    assert _pairs_from_source({"beir": str(beir)}, "w") == [  # title-text is the default
        {"query": "Tides", "positive": "The Moon pulls the sea.", "id": "title:d1"},
        {"query": "Vaccines", "positive": f"{LEAD}. {REST}", "id": "title:d3"},
        {"query": "Spaced", "positive": "Some text.", "id": "title:d5"},
    ]


def test_beir_lead_rest_pairs_need_four_words_then_eight(beir: Path) -> None:
    assert _pairs_from_source({"beir": str(beir), "pairs": "lead-rest"}, "w") == [
        {"query": f"{LEAD}.", "positive": REST, "id": "lead:d3"}]


def test_beir_qrels_pairs_take_a_relevant_document(beir: Path) -> None:
    rows = _pairs_from_source({"beir": str(beir), "pairs": "qrels", "split": "train", "instruction": "Find it"}, "w")
    assert rows == [
        {"query": "what pulls the sea", "positive": "Tides The Moon pulls the sea.", "id": "qrels:q1",
         "instruction": "Find it"},
        {"query": "how do vaccines work", "positive": f"Vaccines {LEAD}. {REST}", "id": "qrels:q3",
         "instruction": "Find it"},
    ]


@pytest.mark.parametrize(("source", "message"), [
    ({"beir": "x", "pairs": "titles"}, "w: pairs must be title-text, lead-rest or qrels, got 'titles'."),
    ({"wordnet": "x", "kinds": []}, "w: kinds must be a non-empty list of term, usage, kind-of, topic, keywords, "
                                    "got []."),
    ({"path": "x.jsonl"}, "w: a source is {beir: PATH, pairs: title-text|lead-rest|qrels}, {stdlib: {}}, "
                          "{wordnet: FOLDER, kinds: [...]} or {file: PATH}, got {'path': 'x.jsonl'}."),
])
def test_a_bad_source_is_refused_in_one_line(source: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as e:
        _pairs_from_source(source, "w")
    assert str(e.value) == message


def test_file_pairs_keep_their_ids_and_number_the_others(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"query": "a", "positive": "b", "id": "mine"},
                                              {"query": "c", "positive": "d"}])
    assert _pairs_from_source({"file": str(path)}, "w") == [{"query": "a", "positive": "b", "id": "mine"},
                                                            {"query": "c", "positive": "d", "id": "file:1"}]


def test_run_pairs_splits_rows_by_id_into_train_and_held_out(tmp_path: Path) -> None:
    many = write_jsonl(tmp_path / "many.jsonl", [{"query": f"q{i}", "positive": f"p{i}"} for i in range(60)])
    other = write_jsonl(tmp_path / "other.jsonl", [{"query": f"o{i}", "positive": f"x{i}", "id": f"o{i}"}
                                                   for i in range(10)])
    settings = {"sources": [{"file": str(many)}, {"file": str(other), "max_rows": 4}], "held_out": 0.3}
    ctx = context(tmp_path, "pairs", settings, seed=3)
    result = run_pairs(ctx)
    train, held = read_jsonl(ctx.out / "train.jsonl"), read_jsonl(ctx.out / "heldout.jsonl")
    assert result == StageResult({"train": "train.jsonl", "heldout": "heldout.jsonl"},
                                 {"rows": len(train), "held_out_rows": len(held), "per_source": {"0": 60, "1": 4}})
    ids = [r["id"] for r in train + held]
    assert len(ids) == len(set(ids)) == 64 and {f"file:{i}" for i in range(60)} <= set(ids)
    picked = sorted(set(ids) - {f"file:{i}" for i in range(60)})
    assert len(picked) == 4 and set(picked) <= {f"o{i}" for i in range(10)}
    assert 5 <= len(held) <= 35 and len(train) >= 29
    # which side a row is on depends on its id and the seed only, not on the other rows
    assert [r["id"] for r in held] == [i for i in ids if _held_out(i, 0.3, 3)]
    assert sorted(p.name for p in ctx.out.iterdir()) == ["heldout.jsonl", "train.jsonl"]  # no temporary files


def test_run_pairs_is_the_same_for_the_same_seed(tmp_path: Path) -> None:
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"query": f"q{i}", "positive": f"p{i}"} for i in range(40)])
    settings = {"sources": [{"file": str(rows), "max_rows": 20}], "held_out": 0.0}
    texts = []
    for seed in (5, 5, 6):
        ctx = context(tmp_path, "pairs", settings, seed=seed)
        run_pairs(ctx)
        texts.append((ctx.out / "train.jsonl").read_text())
        assert (ctx.out / "heldout.jsonl").read_text() == ""
    assert texts[0] == texts[1] != texts[2]


def test_run_pairs_with_no_rows_is_refused(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(InputError, match=r"^stage s: its sources gave no pairs\.$"):
        run_pairs(context(tmp_path, "pairs", {"sources": [{"file": str(empty)}]}))


@pytest.mark.parametrize("held_out", [1, 2, 1.0, -0.1, "0.1", True, None, float("nan")])
def test_a_held_out_that_is_not_a_fraction_below_1_is_refused(tmp_path: Path, held_out: Any) -> None:
    """held_out: 2 held every row out (an empty training file); a string was read by float()."""
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"query": "q", "positive": "p"}])
    with pytest.raises(InputError, match=r"^stage s: held_out must be the fraction of rows kept out of training"):
        run_pairs(context(tmp_path, "pairs", {"sources": [{"file": str(rows)}], "held_out": held_out}))
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(("sources", "message"), [
    ("data.jsonl", "stage s: sources must be a non-empty list of sources"),
    ([], "stage s: sources must be a non-empty list of sources"),
    ({"file": "data.jsonl"}, "stage s: sources must be a non-empty list of sources"),
    (["data/file.jsonl"], "stage s: sources[0]: a source is {beir: PATH"),
    ([{"file": "x.jsonl"}, {"beir": "b", "pairs": "title-text", "max_row": 5}],
     "stage s: sources[1]: unknown key 'max_row' in a beir source; it takes beir, instruction, max_rows, pairs, "
     "split."),
    ([{"file": "x.jsonl", "split": "train"}], "stage s: sources[0]: unknown key 'split' in a file source; it takes "
                                              "file, max_rows."),
    ([{"stdlib": {"strip_docstrings": False}}], "stage s: sources[0]: unknown key 'strip_docstrings' in stdlib; "
                                                "it takes max_chars, strip_docstring."),
    ([{"stdlib": True}], "stage s: sources[0]: stdlib must be a mapping of max_chars, strip_docstring (or {}), "
                         "got True."),
    ([{"file": "x.jsonl", "max_rows": -5}], "stage s: sources[0]: max_rows must be a whole number >= 1, got -5."),
    ([{"file": "x.jsonl", "max_rows": 0}], "stage s: sources[0]: max_rows must be a whole number >= 1, got 0."),
])
def test_malformed_sources_are_refused_before_any_is_read(tmp_path: Path, sources: Any, message: str) -> None:
    """A misspelt key would be ignored and a string or a mapping read letter by letter or key by key: each is
    refused in one line naming the place, before any source is read (x.jsonl does not exist)."""
    with pytest.raises(InputError) as e:
        run_pairs(context(tmp_path, "pairs", {"sources": sources}))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert list((tmp_path / "out").iterdir()) == []


# -- tokenizer -------------------------------------------------------------------------------------------------
def test_tokenizer_keeps_yes_and_no_single_tokens(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from qwen_embed.tiny import SPECIAL_TOKENS

    rows = write_jsonl(tmp_path / "rows.jsonl", [{"query": f"what is thing {i}", "positive": f"thing {i} is an "
                                                  f"object of kind {i % 7}"} for i in range(40)])
    ctx = context(tmp_path, "tokenizer", {"train_on": str(rows), "vocab_size": 300})  # one path, not a list
    result = run_tokenizer(ctx)
    assert result.outputs == {"tokenizer": "tokenizer.json"} and result.stats["texts"] == 80 + 800
    tok = Tokenizer.from_file(str(ctx.out / "tokenizer.json"))
    assert 256 < tok.get_vocab_size() <= 300 == result.stats["vocab_size"]
    assert all(len(tok.encode(w, add_special_tokens=False).ids) == 1 for w in ("yes", "no", *SPECIAL_TOKENS))
    assert tok.decode(tok.encode("thing 12 is an object").ids) == "thing 12 is an object"


def test_tokenizer_too_small_for_yes_and_no_is_refused(tmp_path: Path) -> None:
    """A vocabulary below the bytes, the special tokens and the three merges of yes/no is refused before any
    text is read; one whose merges go to more frequent pairs of the data, after training."""
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"query": "abcd abcd abcd", "positive": "abcd"}] * 400)
    with pytest.raises(InputError, match=r"^stage s: vocab_size must be a whole number >= 262 \(the 256 bytes, 3 "
                                         r"special tokens and the merges of 'yes' and 'no'\), got 10\.$"):
        run_tokenizer(context(tmp_path, "tokenizer", {"train_on": [str(tmp_path / "missing.jsonl")],
                                                      "vocab_size": 10}))
    with pytest.raises(InputError, match=r"^stage s: 'yes' did not become one token; raise vocab_size\.$"):
        run_tokenizer(context(tmp_path, "tokenizer", {"train_on": [str(rows)], "vocab_size": 262}))
    assert not (tmp_path / "out" / "tokenizer.json").exists()


# -- init ------------------------------------------------------------------------------------------------------
def test_init_passes_shape_and_the_recipe_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[Path, str, dict[str, Any]]] = []

    def make_checkpoint(path: Path, kind: str, **options: Any) -> Path:
        made.append((path, kind, options))
        return path

    monkeypatch.setattr("qwen_embed.tiny.make_checkpoint", make_checkpoint)
    shape = {"hidden_size": 32, "num_hidden_layers": 1}
    ctx = context(tmp_path, "init", {"shape": shape, "tokenizer": "/t/tokenizer.json"}, seed=9)
    assert run_init(ctx) == StageResult({"model": "model"}, {"shape": shape})
    ctx2 = context(tmp_path, "init", {"model_kind": "reranker", "seed": 4, "dtype": "bfloat16"}, seed=9)
    run_init(ctx2)
    assert made == [
        (ctx.out / "model", "embedding", {"tokenizer": "/t/tokenizer.json", "seed": 9, "dtype": "float32", **shape}),
        (ctx.out / "model", "reranker", {"tokenizer": "auto", "seed": 4, "dtype": "bfloat16"}),
    ]


@pytest.mark.parametrize(("settings", "message"), [
    ({"shape": {"hidden_size": 64, "layers": 2}}, "stage s: unknown shape key 'layers'; use head_dim, hidden_size, "
     "intermediate_size, max_position_embeddings, num_attention_heads, num_hidden_layers, num_key_value_heads, "
     "tie_word_embeddings."),
    ({"from_embedding": "/m", "model_kind": "reranker", "shape": {"hidden_size": 64}}, "stage s: from_embedding "
     "makes a reranker of the embedder's shape and tokenizer; set model_kind: reranker and leave out shape and "
     "tokenizer."),
    ({"from_embedding": "/m"}, "set model_kind: reranker"),
])
def test_init_refuses_unknown_shape_keys_and_mixed_settings(tmp_path: Path, settings: dict[str, Any],
                                                            message: str) -> None:
    with pytest.raises(InputError) as e:
        run_init(context(tmp_path, "init", settings))
    assert str(e.value).startswith(message) or message in str(e.value)
    assert list((tmp_path / "out").iterdir()) == []


# -- training --------------------------------------------------------------------------------------------------
def test_train_config_writes_into_the_stage_folder_and_leaves_the_settings(tmp_path: Path) -> None:
    settings = {"config": {"model": {"path": "/m"}, "data": {"train_files": ["/a.jsonl"]},
                           "train": {"max_steps": 3, "output_dir": "elsewhere"}}}
    before = json.dumps(settings)
    ctx = context(tmp_path, "train-embed", settings)
    config = _train_config(ctx)
    assert config.train.output_dir == str(ctx.out / "run") and config.train.max_steps == 3
    assert json.dumps(settings) == before


def test_train_config_refuses_an_unknown_section_naming_the_stage(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^stage stage2: unknown section\(s\) \['optimiser'\]"):
        _train_config(context(tmp_path, "train-embed", {"config": {"optimiser": {"lr": 1}}}, name="stage2"))


def test_training_result_lists_finished_checkpoints_in_step_order(tmp_path: Path) -> None:
    ctx = context(tmp_path, "train-embed", {})
    ckpts = ctx.out / "run" / "checkpoints"
    for step, with_model in ((100, True), (20, True), (300, False)):  # step 300: weights not written (killed)
        (ckpts / f"step-{step:08d}" / ("model" if with_model else "state")).mkdir(parents=True)
    (ctx.out / "run" / "train_log.jsonl").write_text('{"step": 10, "tokens": 100}\n{"step": 20, "tokens": 250}\n'
                                                     '{"eval": 1}\n[1]\n{"step": 30, "tok')  # a torn last line
    result = _training_result(ctx, {"step": 20, "resumed": "step-00000010"})
    assert result == StageResult(
        {"model": "run/model", "checkpoints": ["run/checkpoints/step-00000020/model",
                                               "run/checkpoints/step-00000100/model"], "log": "run/train_log.jsonl"},
        {"steps": 20, "tokens": 350, "resumed_from": "step-00000010"})
    assert _log_tokens(tmp_path / "missing.jsonl") == 0


# -- merge, mine ---------------------------------------------------------------------------------------------
@pytest.fixture
def merges(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], Path, dict[str, Any]]]:
    """A recording `merge_checkpoints` that writes only the folder and its report, as the real one does."""
    from qwen_embed.train.merge import REPORT_NAME, MergeReport

    calls: list[tuple[list[str], Path, dict[str, Any]]] = []

    def merge_checkpoints(paths: list[str], out: Path, **options: Any) -> MergeReport:
        calls.append((list(paths), out, options))
        report = MergeReport(options["method"], list(paths), None, [], None, str(out))
        out.mkdir()
        (out / REPORT_NAME).write_text(json.dumps(report.to_dict()))
        return report

    monkeypatch.setattr("qwen_embed.train.merge.merge_checkpoints", merge_checkpoints)
    return calls


def test_merge_flattens_the_model_lists_and_keeps_the_last(tmp_path: Path, merges: list[Any]) -> None:
    settings = {"models": [["c1", "c2", "c3"], "m4", ["c5"]], "last": 3, "method": "linear", "weights": [1, 2, 3]}
    ctx = context(tmp_path, "merge", settings)
    assert run_merge(ctx) == StageResult({"model": "model"}, {"inputs": ["c3", "m4", "c5"]})
    assert merges == [(["c3", "m4", "c5"], ctx.out / "model", {"method": "linear", "weights": [1, 2, 3]})]
    shutil.rmtree(ctx.out)
    run_merge(context(tmp_path, "merge", {"models": ["a", "b", "c"], "last": 2, "method": "slerp", "t": 0.3}))
    assert merges[1] == (["b", "c"], ctx.out / "model", {"method": "slerp", "t": 0.3})


def test_merge_report_names_the_folder_the_merge_ends_in(tmp_path: Path, tiny_checkpoint: Any) -> None:
    """merge_checkpoints writes into the stage's partial folder, which is renamed once the stage finished: the
    report names the model's final place, not the partial folder that no longer exists then."""
    from qwen_embed.train.merge import REPORT_NAME

    models = [str(tiny_checkpoint("embedding", tokenizer="small", seed=seed)) for seed in (1, 2)]
    ctx = context(tmp_path, "merge", {"models": models, "method": "linear"}, name="merged")
    assert run_merge(ctx) == StageResult({"model": "model"}, {"inputs": models})
    report = json.loads((ctx.out / "model" / REPORT_NAME).read_text(encoding="utf-8"))
    assert report["output"] == str(tmp_path / "merged" / "model") == str(ctx.final / "model")
    assert report["inputs"] == models and report["method"] == "linear" and report["groups"]
    assert sorted(p.name for p in ctx.out.iterdir()) == ["model"]


@pytest.mark.parametrize(("settings", "message"), [
    ({"models": "only-one", "method": "slerp"}, "stage s: merging needs at least two checkpoints, got 1."),
    ({"models": ["a", "b", "c"], "last": 1, "method": "slerp"}, "stage s: merging needs at least two checkpoints, "
                                                                 "got 1."),
    ({"models": ["a", "b", "c"], "last": 0, "method": "slerp"}, "stage s: last must be a whole number >= 1 (merge "
                                                                 "the newest `last` checkpoints), got 0."),
    ({"models": ["a", "b", "c"], "last": -1, "method": "slerp"}, "stage s: last must be a whole number >= 1 (merge "
                                                                  "the newest `last` checkpoints), got -1."),
    # fewer checkpoints than `last` merged the ones there were, quietly (the trainer's last-K refuses)
    ({"models": [["a", "b"]], "last": 3, "method": "multislerp"}, "stage s: last is 3 but models holds 2 "
     "checkpoint(s); merge at most 2, or keep more (train.keep_checkpoints, train.save_every of the stage that "
     "makes them)."),
    ({"models": ["a", "b"], "method": "slurp"}, "stage s: merge method 'slurp' is unknown; use one of linear, slerp, "
                                                "multislerp, task-slerp."),
    ({"models": ["a", "b", "c"], "method": "slerp"}, "stage s: slerp merges exactly 2 models, got 3; use multislerp "
                                                     "or linear for more."),
    ({"models": ["a", "b"], "method": "linear", "weights": [1, 2, 3]}, "stage s: --weights has 3 values for 2 "
                                                                       "models; give one per model."),
    ({"models": ["a", "b"], "method": "linear", "weights": ["1", 2]}, "stage s: weights must be a list of numbers, "
                                                                      "one per checkpoint, got ['1', 2]."),
    ({"models": ["a", "b"], "method": "slerp", "t": 1.5}, "stage s: t must be a number from 0 to 1, got 1.5."),
    ({"models": ["a", 3], "method": "linear"}, "stage s: models must be checkpoint folders (paths, or {from: "
                                               "STAGE.checkpoints}), got 3."),
])
def test_merge_refuses_too_few_checkpoints_and_a_bad_last(tmp_path: Path, merges: list[Any],
                                                          settings: dict[str, Any], message: str) -> None:
    """`last: 0` took every checkpoint (`models[-0:]`) and `last: -1` all but the first, silently."""
    with pytest.raises(InputError) as e:
        run_merge(context(tmp_path, "merge", settings))
    assert str(e.value) == message and merges == []


def test_mine_passes_its_settings_and_the_recipe_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from qwen_embed.train.mining import MiningSettings

    loaded: list[tuple[str, dict[str, Any]]] = []
    mined: list[tuple[Any, ...]] = []

    def from_pretrained(model: str, **options: Any) -> str:
        loaded.append((model, options))
        return "the embedder"

    def mine(embedder: Any, rows: str, out: Path, *, corpus_path: Any, settings: MiningSettings) -> dict[str, Any]:
        mined.append((embedder, rows, out, corpus_path, settings))
        return {"rows": 2}

    monkeypatch.setattr("qwen_embed.embedder.Embedder.from_pretrained", from_pretrained)
    monkeypatch.setattr("qwen_embed.train.mining.mine", mine)
    ctx = context(tmp_path, "mine", {"model": "/m", "input": "/in.jsonl", "top_k": 9, "margin": 0.1}, seed=11)
    assert run_mine(ctx) == StageResult({"pairs": "pairs.jsonl"}, {"rows": 2})
    assert loaded == [("/m", {"device": None, "max_length": 512})]
    assert mined == [("the embedder", "/in.jsonl", ctx.out / "pairs.jsonl", None,
                      MiningSettings(top_k=9, margin=0.1, seed=11))]


# -- the held-out set and the final evaluation ------------------------------------------------------------------
@pytest.fixture
def judged(tmp_path: Path) -> Path:
    """Six documents, three test queries: q1 judges d5; q2 judges d2 (relevant) and d6 (not); q3 judges d1."""
    root = tmp_path / "judged"
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", [{"_id": f"d{i}", "text": f"document {i}"} for i in range(1, 7)])
    write_jsonl(root / "queries.jsonl", [{"_id": f"q{i}", "text": f"query {i}"} for i in range(1, 4)])
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td5\t1\nq2\td2\t1\nq2\td6\t0\n"
                                             "q3\td1\t1\n")
    return root


@pytest.mark.parametrize(("cut", "queries", "documents"), [
    ({}, ["q1", "q2", "q3"], ["d1", "d2", "d3", "d4", "d5", "d6"]),
    ({"max_queries": 2}, ["q1", "q2"], ["d1", "d2", "d3", "d4", "d5", "d6"]),
    ({"max_queries": 2, "max_docs": 4}, ["q1", "q2"], ["d1", "d2", "d5", "d6"]),  # judged d5 d2 d6, then d1
    ({"max_queries": 2, "max_docs": 2}, ["q1", "q2"], ["d2", "d5", "d6"]),  # never fewer than the judged
    ({"max_docs": 3}, ["q1", "q2", "q3"], ["d1", "d2", "d5", "d6"]),
])
def test_eval_dataset_cut_keeps_the_judged_documents_first(judged: Path, cut: dict[str, int], queries: list[str],
                                                           documents: list[str]) -> None:
    ds = load_eval_dataset({"dataset": str(judged), **cut})
    assert ds.query_ids == queries and ds.query_texts == [f"query {q[1]}" for q in queries]
    assert ds.corpus_ids == documents and ds.corpus_texts == [f"document {d[1]}" for d in documents]
    assert set(ds.qrels) == set(queries) and ds.qrels.get("q2", {"d2": 1, "d6": 0}) == {"d2": 1, "d6": 0}


def test_held_out_reads_each_cut_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[dict[str, Any]] = []

    def load_eval_dataset(settings: dict[str, Any]) -> object:
        reads.append(settings)
        return object()

    monkeypatch.setattr(stages, "load_eval_dataset", load_eval_dataset)
    data = HeldOut()
    first = data.dataset({"dataset": "d", "max_queries": 2})
    assert data.dataset({"dataset": "d", "split": "test", "max_queries": 2, "device": "cpu"}) is first
    assert data.dataset({"dataset": "d", "max_queries": 3}) is not first
    assert data.dataset({"dataset": "d", "split": "dev", "max_queries": 2}) is not first
    assert len(reads) == 3


def fake_embedder(tokenizer_fingerprint: str, max_length: int) -> Any:
    """What HeldOut.tokenize reads of an Embedder: its tokenizer's fingerprint and its max length."""
    return SimpleNamespace(tokenizer=SimpleNamespace(fingerprint=tokenizer_fingerprint), max_length=max_length)


def test_held_out_tokenizes_once_per_tokenizer_length_and_instruction(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def tokenize_texts(embedder: Any, texts: list[str], instruction: str | None) -> list[list[int]]:
        calls.append((embedder.max_length, tuple(texts), instruction))
        return [[len(t)] for t in texts]

    monkeypatch.setattr("qwen_embed.eval.retrieval.tokenize_texts", tokenize_texts)
    model = fake_embedder("tok-a", 64)
    data = HeldOut()
    assert data.tokenize(model, ["ab", "c"], None) == [[2], [1]]
    data.tokenize(fake_embedder("tok-a", 64), ["ab", "c"], None)  # another model, the same tokenizer: no new call
    data.tokenize(model, ["ab", "c"], "Find")
    data.tokenize(fake_embedder("tok-a", 32), ["ab", "c"], None)
    data.tokenize(fake_embedder("tok-b", 64), ["ab", "c"], None)
    data.tokenize(model, ["ab"], None)
    assert calls == [(64, ("ab", "c"), None), (64, ("ab", "c"), "Find"), (32, ("ab", "c"), None),
                     (64, ("ab", "c"), None), (64, ("ab",), None)]


def test_eval_writes_its_report_with_retrieval_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[Any, ...]] = []

    def retrieval_metric(model: str, settings: dict[str, Any], held_out: Any = None) -> dict[str, Any]:
        seen.append((model, held_out))
        return {"ndcg_at_10": 0.5, "recall_at_100": 0.75, "queries": 2, "documents": 4, "run": {"q": {}}}

    monkeypatch.setattr(stages, "retrieval_metric", retrieval_metric)
    ctx = context(tmp_path, "eval", {"embedder": "/e", "dataset": "/d"})
    ctx.held_out = HeldOut()
    assert run_eval(ctx) == StageResult({"report": "report.json"}, {"ndcg_at_10": 0.5})
    assert seen == [("/e", ctx.held_out)]  # the run's evaluation sets, not a fresh read
    assert json.loads((ctx.out / "report.json").read_text()) == {
        "retrieval": {"ndcg_at_10": 0.5, "recall_at_100": 0.75, "queries": 2, "documents": 4}}


# -- the stage graph -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("edges", "cycle"), [
    ({"a": set(), "b": {"a"}, "c": {"a", "b"}}, None),  # a diamond is no cycle
    ({"a": {"a"}}, ["a", "a"]),
    ({"x": set(), "a": {"c"}, "b": {"a"}, "c": {"b"}}, ["a", "c", "b", "a"]),
    ({"a": set(), "b": {"c"}, "c": {"d"}, "d": {"c"}}, ["c", "d", "c"]),
])
def test_find_cycle(edges: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert _find_cycle(edges) == cycle
