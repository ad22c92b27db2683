"""The recipe file format (spec.py): references and where they sit, files that load into the documented
structure (YAML, and JSON since YAML reads it), and each kind of bad file refused in one line that names the
file or the place and says what to write instead. The stage graph checks are tests/recipe/test_recipe.py's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_embed.errors import InputError
from qwen_embed.recipe.spec import Recipe, Ref, Stage, load_recipe, parse_ref, refs_in

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("recipe_*.yaml"))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def refused(path: Path) -> str:
    """The message of the InputError that loading `path` raises, checked to be one line."""
    with pytest.raises(InputError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


# -- references -----------------------------------------------------------------------------------------------
def test_parse_ref_reads_stage_and_output() -> None:
    ref = parse_ref({"from": "stage1.model"}, "s.model")
    assert ref == Ref("stage1", "model") and (ref.stage, ref.output) == ("stage1", "model")
    assert str(ref) == "stage1.model"
    assert {Ref("a", "b"), Ref("a", "b")} == {Ref("a", "b")}  # frozen: hashable, equal by value


@pytest.mark.parametrize("value", ["stage1.model", None, 3, ["from"], {"path": "a.b"}, {}, {"From": "a.b"}])
def test_parse_ref_ignores_other_values(value: Any) -> None:
    assert parse_ref(value, "s.x") is None


@pytest.mark.parametrize("value", [{"from": "stage1"}, {"from": "a.b.c"}, {"from": 5}, {"from": None},
                                   {"from": "a.b", "also": 1}, {"from": ["a.b"]}])
def test_parse_ref_refuses_malformed_references(value: dict[str, Any]) -> None:
    with pytest.raises(InputError) as e:
        parse_ref(value, "mined.model")
    msg = str(e.value)
    assert msg.startswith("mined.model: a reference is written {from: STAGE.OUTPUT}")
    assert "e.g. {from: stage1.model}" in msg and repr(value) in msg and "\n" not in msg


def test_refs_in_finds_every_reference_with_its_key_path() -> None:
    settings = {
        "model": {"path": {"from": "s1.model"}},
        "files": [{"from": "w.train"}, "plain.jsonl", [{"from": "w.heldout"}], {"keep": {"from": "m.pairs"}}],
        "n": 3,
        "note": "from: w.train",
    }
    assert list(refs_in(settings, "st")) == [
        ("st.model.path", Ref("s1", "model")),
        ("st.files[0]", Ref("w", "train")),
        ("st.files[2][0]", Ref("w", "heldout")),
        ("st.files[3].keep", Ref("m", "pairs")),
    ]
    assert list(refs_in({"from": "a.b"}, "st.x")) == [("st.x", Ref("a", "b"))]
    assert list(refs_in(["x", 1, None, {"y": [2]}], "st")) == []


def test_refs_in_names_the_place_of_a_malformed_reference() -> None:
    with pytest.raises(InputError, match=r"^st\.files\[1\]\.keep: a reference is written"):
        list(refs_in({"files": ["ok", {"keep": {"from": "nodot"}}]}, "st"))


# -- files that load --------------------------------------------------------------------------------------------
RECIPE_YAML = """\
name: mine
workdir: out/w              # relative to this file
seed: 7
evaluate: {dataset: data/d, split: test}
stages:
  - {name: weak, kind: pairs, sources: [{beir: data/d, pairs: title-text}], held_out: 0.1}
  - name: init
    kind: init
    shape: {hidden_size: 64}
  - name: stage-1
    kind: train-embed
    config: {model: {path: {from: init.model}}, data: {train_files: [{from: weak.train}, x.jsonl]}}
  - {name: final, kind: eval, embedder: {from: stage-1.model}, dataset: data/d}
"""
STAGES = [
    Stage("weak", "pairs", {"sources": [{"beir": "data/d", "pairs": "title-text"}], "held_out": 0.1}),
    Stage("init", "init", {"shape": {"hidden_size": 64}}),
    Stage("stage-1", "train-embed", {"config": {"model": {"path": {"from": "init.model"}},
                                                "data": {"train_files": [{"from": "weak.train"}, "x.jsonl"]}}}),
    Stage("final", "eval", {"embedder": {"from": "stage-1.model"}, "dataset": "data/d"}),
]


def test_yaml_recipe_loads_into_the_documented_structure(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", RECIPE_YAML)
    recipe = load_recipe(path)
    assert recipe == Recipe(name="mine", path=path.resolve(), workdir=(tmp_path / "out" / "w").resolve(),
                            stages=STAGES, evaluate={"dataset": "data/d", "split": "test"}, seed=7)
    assert recipe.stage("stage-1") is recipe.stages[2]
    assert not (tmp_path / "out").exists()  # loading checks, it does no work


def test_json_recipe_loads_the_same(tmp_path: Path) -> None:
    raw = yaml.safe_load(RECIPE_YAML)
    path = write(tmp_path / "r.json", json.dumps(raw, indent=1))
    recipe = load_recipe(str(path))  # a str path too
    assert recipe.stages == STAGES and recipe.name == "mine" and recipe.seed == 7
    assert recipe.workdir == (tmp_path / "out" / "w").resolve() and recipe.path == path.resolve()


def test_defaults(tmp_path: Path) -> None:
    """No name: the file's stem; no workdir: runs/STEM beside the file; no seed: 0; evaluate null: {}."""
    path = write(tmp_path / "my-recipe.yaml", "evaluate: null\nstages: [{name: a, kind: init}]\n")
    recipe = load_recipe(path)
    assert (recipe.name, recipe.seed, recipe.evaluate) == ("my-recipe", 0, {})
    assert recipe.workdir == (tmp_path / "runs" / "my-recipe").resolve()
    assert recipe.stages == [Stage("a", "init", {})]


def test_absolute_workdir_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "w"
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub" / "r.yaml", f"workdir: {json.dumps(str(target))}\n" + ONE_STAGE)
    assert load_recipe(path).workdir == target


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_load_as_written(example: Path) -> None:
    """Each example recipe: stages, settings, workdir and evaluate exactly as a plain YAML read gives them."""
    raw = yaml.safe_load(example.read_text(encoding="utf-8"))
    recipe = load_recipe(example)
    assert recipe.name == raw["name"] and recipe.seed == raw.get("seed", 0)
    assert recipe.workdir == (example.parent / raw["workdir"]).resolve()
    assert recipe.evaluate == (raw.get("evaluate") or {})
    assert recipe.stages == [Stage(s["name"], s["kind"], {k: v for k, v in s.items() if k not in ("name", "kind")})
                             for s in raw["stages"]]


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"recipe_tiny.yaml", "recipe_demo.yaml"}


# -- bad files ----------------------------------------------------------------------------------------------------
ONE_STAGE = "stages: [{name: a, kind: init}]\n"


def test_missing_file_and_folder(tmp_path: Path) -> None:
    for path in (tmp_path / "none.yaml", tmp_path):
        assert refused(path) == f"recipe {path} does not exist or is not a file."


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", "name: x\nstages: [a, b\nseed: 1\n")
    assert refused(path).startswith(f"recipe {path} is not valid YAML: ")


@pytest.mark.parametrize(("text", "where"), [
    ("name: x\nstages: [a, b\nseed: 1\n", "but got ':' at line 3, column 5"),
    ("name: x\nname: y\n" + "stages: [{name: a, kind: init}]\n", "key 'name' is written twice (line 2, column 1)"),
    ("stages: [{name: a, kind: init, kind: mine}]\n", "key 'kind' is written twice (line 1, column 32)"),
])
def test_invalid_yaml_names_the_line_and_column(tmp_path: Path, text: str, where: str) -> None:
    path = write(tmp_path / "r.yaml", text)
    assert where in refused(path)


def test_a_recipe_that_is_not_utf8_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_bytes(b"name: caf\xe9\n" + ONE_STAGE.encode())
    assert refused(path) == f"recipe {path} is not UTF-8 text (byte 9); convert it first."


@pytest.mark.parametrize("text", ["", "- {name: a, kind: init}\n", "just text\n", "42\n"])
def test_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "r.yaml", text)
    assert refused(path) == (f"recipe {path} must be a mapping with `stages:` (and optional name, workdir, "
                             "evaluate).")


def test_unknown_top_level_key_is_named_with_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", "stage: []\nzeta: 1\n" + ONE_STAGE)
    assert refused(path) == f"recipe {path}: unknown key 'stage'; the keys are evaluate, name, seed, stages, workdir."


@pytest.mark.parametrize("text", ["name: x\n", "stages: []\n", "stages: null\n", "stages: {a: {kind: init}}\n",
                                  "stages: init\n"])
def test_stages_must_be_a_non_empty_list(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "r.yaml", text)
    assert refused(path) == f"recipe {path} needs a non-empty list `stages:`."


@pytest.mark.parametrize(("stages", "number"), [
    ("[init]", 1),
    ("[{name: a}]", 1),
    ("[{kind: init}]", 1),
    ("[{name: a, kind: init}, {name: 3, kind: init}]", 2),
    ("[{name: a, kind: init}, {name: b, kind: [init]}]", 2),
    ("[{name: a, kind: init}, null]", 2),
])
def test_each_stage_needs_a_string_name_and_kind(tmp_path: Path, stages: str, number: int) -> None:
    path = write(tmp_path / "r.yaml", f"stages: {stages}\n")
    assert refused(path).startswith(f"recipe {path}: stage {number} needs a string `name` and `kind`, got ")


@pytest.mark.parametrize("value", ["[dataset]", "text", "3", "[]", "0", "false", "''"])
def test_evaluate_must_be_a_mapping(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "r.yaml", f"evaluate: {value}\n" + ONE_STAGE)
    assert refused(path) == (f"recipe {path}: `evaluate` must be a mapping such as "
                             "{dataset: PATH, split: test}.")


@pytest.mark.parametrize(("value", "shown"), [("'1'", "'1'"), ("1.5", "1.5"), ("true", "True"), ("[1]", "[1]")])
def test_seed_must_be_an_integer(tmp_path: Path, value: str, shown: str) -> None:
    path = write(tmp_path / "r.yaml", f"seed: {value}\n" + ONE_STAGE)
    assert refused(path) == f"recipe {path}: seed must be an integer, got {shown}."


@pytest.mark.parametrize(("text", "wanted"), [
    ("workdir: 5\n", "`workdir` must be a non-empty string (e.g. workdir: runs/recipe), got 5; quote a number."),
    ("workdir: ''\n", "`workdir` must be a non-empty string (e.g. workdir: runs/recipe), got ''; quote a number."),
    ("workdir: [a]\n", "`workdir` must be a non-empty string (e.g. workdir: runs/recipe), got ['a']; quote a number."),
    ("name: [1, 2]\n", "`name` must be a non-empty string (e.g. name: scifact-small), got [1, 2]; quote a number."),
    ("name: 2024\n", "`name` must be a non-empty string (e.g. name: scifact-small), got 2024; quote a number."),
    ("name: {a: 1}\n", "`name` must be a non-empty string (e.g. name: scifact-small), got {'a': 1}; quote a number."),
])
def test_name_and_workdir_must_be_strings(tmp_path: Path, text: str, wanted: str) -> None:
    path = write(tmp_path / "r.yaml", text + ONE_STAGE)
    assert refused(path) == f"recipe {path}: {wanted}"


def test_null_name_workdir_and_evaluate_take_their_defaults(tmp_path: Path) -> None:
    path = write(tmp_path / "plan.yaml", "name:\nworkdir: null\nevaluate: ~\n" + ONE_STAGE)
    recipe = load_recipe(path)
    assert (recipe.name, recipe.workdir, recipe.evaluate) == ("plan", (tmp_path / "runs" / "plan").resolve(), {})


def test_unknown_stage_names_the_stages_there_are(tmp_path: Path) -> None:
    recipe = load_recipe(write(tmp_path / "r.yaml", "stages: [{name: a, kind: init}, {name: b, kind: init}]\n"))
    with pytest.raises(KeyError, match=r"has no stage 'c'; its stages are a, b\."):
        recipe.stage("c")


def test_a_non_string_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", "1: x\nzeta: 2\n" + ONE_STAGE)
    assert refused(path).startswith(f"recipe {path}: unknown key 1; the keys are ")


@pytest.mark.parametrize(("stages", "place", "fix"), [
    # a malformed reference: its stage and key
    ([{"name": "a", "kind": "init"}, {"name": "b", "kind": "mine", "model": {"from": "a.model", "x": 1},
                                       "input": "i"}], "b.model: ", "{from: STAGE.OUTPUT}"),
    # a reference to a stage that does not exist, to a later stage, around a cycle
    ([{"name": "a", "kind": "init"}, {"name": "b", "kind": "mine", "model": {"from": "zz.model"},
                                       "input": ["x", {"from": "a.model"}]}], "b.model refers to zz.model",
     "there is no stage 'zz'"),
    ([{"name": "b", "kind": "mine", "model": {"from": "a.model"}, "input": "i"}, {"name": "a", "kind": "init"}],
     "b.model refers to a.model", "move it after 'a'"),
    ([{"name": "a", "kind": "mine", "model": {"from": "b.pairs"}, "input": "i"},
      {"name": "b", "kind": "mine", "model": "m", "input": {"from": "a.pairs"}}], "a -> b -> a",
     "only use outputs of stages before it"),
    # a stage name that is not a word
    ([{"name": "stage one", "kind": "init"}], "'stage one'", "letters, digits, '_' or '-'"),
])
def test_graph_errors_are_one_line_naming_the_place(tmp_path: Path, stages: list[dict[str, Any]], place: str,
                                                    fix: str) -> None:
    path = write(tmp_path / "r.yaml", yaml.safe_dump({"stages": stages}, sort_keys=False))
    msg = refused(path)
    assert msg.startswith(f"recipe {path}: ") and place in msg and fix in msg
    assert not (tmp_path / "runs").exists()


def test_a_non_string_setting_key_is_named_with_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", "stages: [{name: a, kind: init, 1: x, zz: y}]\n")
    assert refused(path).startswith(f"recipe {path}: stage 'a' (init) has unknown setting 1; it takes ")


def test_a_pairs_stages_sources_are_checked_when_the_recipe_loads(tmp_path: Path) -> None:
    """A misspelt source key or a held_out of 2 in a later stage is found at load, naming the file and the
    stage, not after the stages before it ran for hours."""
    text = ("name: t\nstages:\n  - {name: first, kind: pairs, sources: [{file: a.jsonl}]}\n"
            "  - {name: later, kind: pairs, sources: [{file: b.jsonl, max_row: 5}]}\n")
    msg = refused(write(tmp_path / "r.yaml", text))
    assert msg.startswith(f"recipe {tmp_path / 'r.yaml'}: stage 'later': sources[0]: unknown key 'max_row'"), msg
    msg = refused(write(tmp_path / "h.yaml", text.replace(", max_row: 5}]}", "}], held_out: 2}")))
    assert "stage 'later': held_out must be the fraction of rows kept out of training" in msg, msg
    load_recipe(write(tmp_path / "ok.yaml", text.replace("max_row", "max_rows")))


# -- every setting of every stage, before any work -------------------------------------------------------------
WEAK = {"name": "weak", "kind": "pairs", "sources": [{"file": "p.jsonl"}]}


def training(name: str = "s1", kind: str = "train-embed", **sections: Any) -> dict[str, Any]:
    """A training stage on the weak pairs, its `config:` sections replaced or added by `sections`."""
    config = {"model": {"path": "m"}, "data": {"train_files": [{"from": "weak.train"}]},
              "train": {"max_steps": 20, "save_every": 5, "keep_checkpoints": 2}, **sections}
    return {"name": name, "kind": kind, "config": config}


def merging(**settings: Any) -> dict[str, Any]:
    return {"name": "merged", "kind": "merge", "models": {"from": "s1.checkpoints"}, "method": "multislerp",
            **settings}


@pytest.mark.parametrize(("stages", "message"), [
    # the user trial: a misspelt training key of a finished stage was found only after the stage was deleted
    ([WEAK, training(train={"max_step": 4})], "stage 's1': train: unknown key(s) ['max_step']; valid: ["),
    ([WEAK, training("rr", "train-rerank", lora={"enabled": True, "r": 0})], "stage 'rr': lora.r=0 must be >= 1"),
    ([WEAK, training(optim={"lr": "fast"})], "stage 's1': optim.lr must be float"),
    ([WEAK, training(merge={"method": "multislerp", "checkpoints": "last-3"})],
     "stage 's1': merge.checkpoints=last-3 needs train.keep_checkpoints >= 3"),
    ([WEAK, {"name": "s1", "kind": "train-embed", "config": "train.yaml"}],
     "stage 's1': config must be a mapping of training sections"),
    ([WEAK, {"name": "s1", "kind": "train-embed", "config": {"model": {"path": {"from": "weak.train"}},
                                                               "data": {"train_files": {"from": "weak.heldout"}}}}],
     "stage 's1': data.train_files must be a list"),
    # a merge stage: its method and numbers; `last` against the checkpoints the training stage will keep
    ([WEAK, training(), merging(method="slurp")], "stage 'merged': merge method 'slurp' is unknown"),
    ([WEAK, training(), merging(last=3)], "stage 'merged': last is 3 but models holds 2 checkpoint(s); merge at "
                                          "most 2, or keep more (train.keep_checkpoints"),
    ([WEAK, training(train={"max_steps": 4, "save_every": 0, "keep_checkpoints": 5}), merging()],
     "stage 'merged': merging needs at least two checkpoints, got 1."),
    ([WEAK, training(), merging(method="slerp", last=2, t=2)], "stage 'merged': t must be a number from 0 to 1"),
    ([WEAK, training(), merging(method="linear", weights=[1, 2, 3])], "stage 'merged': --weights has 3 values for 2"),
    # mining, evaluation, tokenizer, init, filter, synth, pairs
    ([WEAK, training(), {"name": "m", "kind": "mine", "model": {"from": "s1.model"}, "input": {"from": "weak.train"},
                         "top_k": 0}], "stage 'm': top_k must be a whole number >= 1, got 0."),
    ([WEAK, {"name": "m", "kind": "mine", "model": "x", "input": {"from": "weak.train"}, "margin": "0.1"}],
     "stage 'm': margin must be a number, got '0.1'."),
    ([WEAK, {"name": "m", "kind": "mine", "model": "x", "input": {"from": "weak.train"}, "dim": 0}],
     "stage 'm': dim must be a whole number >= 1 or null, got 0."),
    ([{"name": "e", "kind": "eval", "embedder": "x", "dataset": "d", "top": 0}],
     "stage 'e': top must be a whole number >= 1, got 0."),
    ([{"name": "e", "kind": "eval", "embedder": "x", "dataset": "d", "max_queries": "60"}],
     "stage 'e': max_queries must be a whole number >= 1 or null, got '60'."),
    ([WEAK, {"name": "v", "kind": "tokenizer", "train_on": [{"from": "weak.train"}], "vocab_size": 100}],
     "stage 'v': vocab_size must be a whole number >= 262"),
    ([{"name": "i", "kind": "init", "dtype": "float16"}], "stage 'i': dtype must be float32 or bfloat16, got "
                                                          "'float16'."),
    ([{"name": "i", "kind": "init", "shape": {"hidden_size": "64"}}], "stage 'i': shape: hidden_size must be a "
                                                                      "whole number >= 1, got '64'."),
    ([{"name": "i", "kind": "init", "model_kind": "embeder"}], "stage 'i': model_kind must be embedding, reranker, "
                                                               "seq-cls, got 'embeder'."),
    ([WEAK, {"name": "f", "kind": "filter", "input": {"from": "weak.train"}, "embedding_model": "e", "min_cos": 7}],
     "stage 'f': min_cos must be a number from -1 to 1, got 7."),
    ([{"name": "q", "kind": "synth", "passages": "p", "personas": "r", "generator": "local:g", "embedding_model": "e",
       "settings": {"min_word": 3}}], "stage 'q': unknown key 'min_word' in settings; it takes "),
    ([{"name": "q", "kind": "synth", "passages": "p", "personas": "r", "generator": "http://h/v1",
       "embedding_model": "e"}], "stage 'q': generator http://h/v1 is an endpoint: set model: NAME"),
    ([{"name": "q", "kind": "synth", "passages": "p", "personas": "r", "generator": "local:g", "embedding_model": "e",
       "generator_settings": {"temperature": 9}}], "stage 'q': generator_settings: temperature=9 must be"),
    ([{"name": "w", "kind": "pairs", "sources": [{"beir": "b", "pairs": "titles"}]}],
     "stage 'w': sources[0]: pairs must be title-text, lead-rest or qrels, got 'titles'."),
    ([{"name": "w", "kind": "pairs", "sources": [{"wordnet": "b", "kinds": ["terms"]}]}],
     "stage 'w': sources[0]: kinds must be a non-empty list of term, usage, kind-of, topic, keywords, got ['terms']."),
])
def test_every_setting_of_every_stage_is_checked_when_the_recipe_loads(tmp_path: Path, stages: list[dict[str, Any]],
                                                                      message: str) -> None:
    """What a stage's run would refuse is refused when the recipe loads, in one line naming the file and the
    stage, before any stage runs (and before a finished stage of that name could be touched); references stand
    for paths, and a training stage's `checkpoints` for as many as it will keep."""
    path = write(tmp_path / "r.yaml", yaml.safe_dump({"name": "t", "workdir": "w", "stages": stages},
                                                     sort_keys=False))
    msg = refused(path)
    assert msg.startswith(f"recipe {path}: {message}"), msg
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(("evaluate", "message"), [
    ({"dataset": "d", "max_querys": 5}, "evaluate: unknown key 'max_querys'; it takes dataset, device, instruction, "
                                        "max_docs, max_length, max_queries, split."),
    ({"dataset": "d", "max_docs": 0}, "evaluate: max_docs must be a whole number >= 1 or null, got 0."),
    ({"split": "test"}, "evaluate needs dataset: a BEIR folder"),
])
def test_the_evaluation_set_is_checked_when_the_recipe_loads(tmp_path: Path, evaluate: dict[str, Any],
                                                             message: str) -> None:
    """It is read after the first model stage: a typo there failed the run after that stage."""
    path = write(tmp_path / "r.yaml", yaml.safe_dump({"evaluate": evaluate, "stages": [{"name": "a", "kind": "init"}]}))
    assert refused(path).startswith(f"recipe {path}: {message}")


def test_settings_that_the_stages_take_load(tmp_path: Path) -> None:
    """References stand for paths in every kind's checks, a training stage's checkpoints for as many as it keeps
    (4 here: steps 10, 15, 20 and 22 of 22, saved every 5)."""
    stages = [WEAK, {"name": "v", "kind": "tokenizer", "train_on": {"from": "weak.train"}, "vocab_size": 262},
              {"name": "i", "kind": "init", "tokenizer": {"from": "v.tokenizer"},
               "shape": {"hidden_size": 32, "tie_word_embeddings": True}},
              training(model={"path": {"from": "i.model"}}, train={"max_steps": 22, "save_every": 5,
                                                                   "keep_checkpoints": 4},
                       lora={"enabled": True, "r": 4, "merge_at_end": False}),
              {"name": "m", "kind": "mine", "model": {"from": "s1.model"}, "input": {"from": "weak.train"},
               "margin": -1, "dim": None, "corpus": None},
              merging(last=4, weights=[1, 1, 2, 2]),
              {"name": "rr", "kind": "init", "model_kind": "reranker", "from_embedding": {"from": "merged.model"}},
              training("r2", "train-rerank", model={"path": {"from": "rr.model"}}, data={"train_files": [
                  {"from": "m.pairs"}]}, rerank={"loss": "listwise"}),
              {"name": "f", "kind": "filter", "input": {"from": "m.pairs"}, "embedding_model": {"from": "s1.model"}},
              {"name": "q", "kind": "synth", "passages": "p", "personas": "r", "generator": "http://h/v1", "model": "g",
               "embedding_model": {"from": "merged.model"}, "settings": {"languages": ["English", "German"]}},
              {"name": "e", "kind": "eval", "embedder": {"from": "merged.model"}, "reranker": {"from": "r2.model"},
               "dataset": "d", "top": 20, "max_queries": None}]
    path = write(tmp_path / "r.yaml", yaml.safe_dump({"evaluate": {"dataset": "d", "max_queries": 5},
                                                      "stages": stages}))
    assert [s.name for s in load_recipe(path).stages] == [s["name"] for s in stages]
    too_many = [*stages[:4], merging(last=5)]
    assert "last is 5 but models holds 4 checkpoint(s)" in refused(write(tmp_path / "r.yaml", yaml.safe_dump(
        {"stages": too_many})))
