"""The recipe runner (runner.py) with cheap fake stage kinds in place of training: a finished stage is its
atomically renamed folder with its stage.json; a done stage is skipped; an interrupted one resumes in its
partial folder (or starts afresh when its settings changed); a changed setting, seed or evaluation set re-runs
that stage and exactly the stages that use it; `--rerun` forces a stage and its users; the work folder and
folders the runner did not make are never deleted or written over; the report's table. The real recipe end
to end is tests/recipe/test_recipe.py's."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from qwen_embed.errors import InputError
from qwen_embed.recipe import runner
from qwen_embed.recipe.runner import MARKER, StageRecord, check_workdir, run, stage_fingerprints, status, write_report
from qwen_embed.recipe.spec import Recipe, Stage, load_recipe
from qwen_embed.recipe.stages import KINDS, Kind, StageContext, StageResult


class Interrupted(Exception):
    """What a fake stage raises to stand for a kill in the middle of its work."""


@dataclass
class Call:
    """One call of a fake stage: its name, resolved settings, its folder and what that folder held then."""

    stage: str
    settings: dict[str, Any]
    out: Path
    found: list[str]
    final_existed: bool


@dataclass
class FakeStages:
    """Fake kinds `fake` (outputs `out`, a file, and `many`, a list of files) and `fake-model` (an embedding
    model evaluated after the stage). Each call writes progress.txt first; a stage named in `interrupt`
    stops there once, as a killed run would."""

    calls: list[Call] = field(default_factory=list)
    interrupt: set[str] = field(default_factory=set)
    evaluated: list[Path] = field(default_factory=list)

    def ran(self) -> list[str]:
        return [c.stage for c in self.calls]

    def run(self, ctx: StageContext) -> StageResult:
        found = sorted(p.name for p in ctx.out.iterdir() if p.name != ".fingerprint")
        self.calls.append(Call(ctx.stage.name, ctx.settings, ctx.out, found,
                               (ctx.out.parent / ctx.stage.name).exists()))
        (ctx.out / "progress.txt").write_text("half way\n")
        if ctx.stage.name in self.interrupt:
            self.interrupt.discard(ctx.stage.name)
            raise Interrupted(ctx.stage.name)
        (ctx.out / f"value-{ctx.settings.get('value')}.txt").write_text("made by this run\n")
        (ctx.out / "out.txt").write_text(json.dumps(ctx.settings))
        (ctx.out / "model").mkdir()
        return StageResult({"out": "out.txt", "many": ["progress.txt", "out.txt"], "model": "model"},
                           {"folder": ctx.out, "tokens": 42})

    def metric(self, model: str | Path, settings: dict[str, Any], held_out: Any = None) -> dict[str, Any]:
        self.evaluated.append(Path(model))
        return {"ndcg_at_10": 0.25, "recall_at_100": 0.5, "queries": 3, "documents": 9, "run": {"q": {"d": 1.0}}}


FAKE_SETTINGS = frozenset({"value", "input", "more", "model_kind"})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeStages:
    stages = FakeStages()
    monkeypatch.setitem(KINDS, "fake", Kind(("out", "many"), FAKE_SETTINGS, stages.run))
    monkeypatch.setitem(KINDS, "fake-model", Kind(("out", "many", "model"), FAKE_SETTINGS, stages.run,
                                                  model_output="model"))
    monkeypatch.setattr(runner, "retrieval_metric", stages.metric)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # no report plot (its import is ~1 s): it is optional
    return stages


def write_recipe(path: Path, stages: list[dict[str, Any]], **top: Any) -> Recipe:
    raw = {"name": "t", "workdir": "w", **top, "stages": stages}
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return load_recipe(path)


def quiet(messages: list[str]) -> Any:
    return messages.append


A = {"name": "a", "kind": "fake", "value": 1}
B = {"name": "b", "kind": "fake", "value": 2, "input": {"from": "a.out"}, "more": [{"from": "a.many"}, "plain"]}


# -- a finished stage is its renamed folder -------------------------------------------------------------------
def test_a_finished_stage_is_its_renamed_folder_with_its_record(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A, B])
    records = run(recipe, say=quiet([]))
    work = tmp_path / "w"
    assert [(r.name, r.status) for r in records] == [("a", "ran"), ("b", "ran")]
    # each stage ran in STAGE.partial, before its folder existed; only the renamed folders are left
    assert [(c.out, c.final_existed) for c in fake.calls] == [(work / "a.partial", False), (work / "b.partial", False)]
    assert sorted(p.name for p in work.iterdir()) == [MARKER, "a", "b", "recipe_report.md"]
    assert sorted(p.name for p in (work / "a").iterdir()) == ["model", "out.txt", "progress.txt", "stage.json",
                                                            "value-1.txt"]
    record = json.loads((work / "a" / "stage.json").read_text(encoding="utf-8"))
    assert re.fullmatch(r"[0-9a-f]{64}", record.pop("fingerprint"))
    assert isinstance(record.pop("seconds"), float)
    assert record == {"name": "a", "kind": "fake", "format": 1, "metric": None,
                      "outputs": {"out": "out.txt", "many": ["progress.txt", "out.txt"], "model": "model"},
                      # a path in the stats as text, and, inside the partial folder, as it is after the rename
                      "stats": {"folder": str(work / "a"), "tokens": 42}}
    assert json.loads((work / MARKER).read_text(encoding="utf-8")) == {"recipe": str(tmp_path / "r.yaml"),
                                                                       "name": "t"}


def test_references_become_absolute_paths_of_the_earlier_outputs(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A, B])
    run(recipe, say=quiet([]))
    a = tmp_path / "w" / "a"
    assert fake.calls[1].settings == {"value": 2, "input": str(a / "out.txt"),
                                      "more": [[str(a / "progress.txt"), str(a / "out.txt")], "plain"]}
    # the recipe itself keeps its references
    assert recipe.stages[1].settings["input"] == {"from": "a.out"}


def test_a_second_run_skips_every_done_stage(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A, B])
    first = run(recipe, say=quiet([]))
    said: list[str] = []
    again = run(load_recipe(recipe.path), say=said.append)
    assert fake.ran() == ["a", "b"]
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert [(r.name, r.fingerprint, r.outputs, r.seconds) for r in again] == \
        [(r.name, r.fingerprint, r.outputs, r.seconds) for r in first]
    assert said == ["[a] done already (fake); skipped", "[b] done already (fake); skipped"]


def test_a_failed_stage_leaves_no_stage_folder(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A, B])
    fake.interrupt.add("b")
    with pytest.raises(Interrupted):
        run(recipe, say=quiet([]))
    work = tmp_path / "w"
    assert (work / "a" / "stage.json").is_file()
    assert not (work / "b").exists() and (work / "b.partial" / "progress.txt").is_file()
    assert [r["state"] for r in status(recipe)] == ["done", "partial"]


# -- resume ---------------------------------------------------------------------------------------------------
def test_an_interrupted_stage_resumes_in_its_partial_folder(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A, B])
    fake.interrupt.add("b")
    with pytest.raises(Interrupted):
        run(recipe, say=quiet([]))
    said: list[str] = []
    records = run(recipe, say=said.append)
    assert fake.ran() == ["a", "b", "b"]
    assert fake.calls[2].found == ["progress.txt"]  # what the interrupted run wrote is there to resume from
    assert "[b] resuming (fake)" in said and not any("discarded" in m for m in said)
    assert [r.status for r in records] == ["skipped", "ran"]
    assert not (tmp_path / "w" / "b.partial").exists() and (tmp_path / "w" / "b" / "stage.json").is_file()
    assert not (tmp_path / "w" / "b" / ".fingerprint").exists()


def test_an_interrupted_stage_with_other_settings_starts_afresh(tmp_path: Path, fake: FakeStages) -> None:
    fake.interrupt.add("b")
    with pytest.raises(Interrupted):
        run(write_recipe(tmp_path / "r.yaml", [A, B]), say=quiet([]))
    said: list[str] = []
    run(write_recipe(tmp_path / "r.yaml", [A, {**B, "value": 3}]), say=said.append)
    assert fake.ran() == ["a", "b", "b"] and fake.calls[2].found == []
    assert "[b] an interrupted run with other settings is discarded" in said and "[b] running (fake)" in said


def test_a_partial_folder_without_its_fingerprint_is_started_afresh(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A])
    (tmp_path / "w" / "a.partial").mkdir(parents=True)
    (tmp_path / "w" / MARKER).write_text("{}")
    (tmp_path / "w" / "a.partial" / "old.txt").write_text("no .fingerprint: which settings made it is unknown")
    run(recipe, say=quiet([]))
    assert fake.calls[0].found == []
    assert not (tmp_path / "w" / "a" / "old.txt").exists()


@pytest.mark.parametrize("mark", [True, False])
def test_a_stage_killed_after_its_record_before_its_rename_is_not_run_again(tmp_path: Path, fake: FakeStages,
                                                                           mark: bool) -> None:
    """The last steps of a stage: its record written into STAGE.partial, `.fingerprint` removed, the rename.
    A kill between them leaves a finished stage in the partial folder: the next run renames it."""
    recipe = write_recipe(tmp_path / "r.yaml", [A, B])
    first = run(recipe, say=quiet([]))
    work = tmp_path / "w"
    (work / "b").rename(work / "b.partial")
    if mark:
        (work / "b.partial" / ".fingerprint").write_text(first[1].fingerprint + "\n")
    assert [r["state"] for r in status(recipe)] == ["done", "partial"]
    said: list[str] = []
    again = run(recipe, say=said.append)
    assert fake.ran() == ["a", "b"]  # nothing ran again
    assert "[b] finished by an interrupted run; kept" in said
    assert [(r.name, r.fingerprint, r.outputs) for r in again] == [(r.name, r.fingerprint, r.outputs) for r in first]
    assert not (work / "b.partial").exists() and not (work / "b" / ".fingerprint").exists()
    assert (work / "b" / "value-2.txt").is_file() and [r["state"] for r in status(recipe)] == ["done", "done"]


# -- what re-runs ---------------------------------------------------------------------------------------------
C = {"name": "c", "kind": "fake", "value": 5}  # uses nothing
D = {"name": "d", "kind": "fake", "input": {"from": "b.out"}}  # uses b, which uses a


def test_a_changed_setting_reruns_that_stage_and_the_stages_that_use_it(tmp_path: Path, fake: FakeStages) -> None:
    run(write_recipe(tmp_path / "r.yaml", [A, B, C, D]), say=quiet([]))
    changed = write_recipe(tmp_path / "r.yaml", [{**A, "value": 7}, B, C, D])
    assert [r["state"] for r in status(changed)] == ["changed", "changed", "done", "changed"]
    said: list[str] = []
    records = run(changed, say=said.append)
    assert fake.ran() == ["a", "b", "c", "d", "a", "b", "d"]
    assert [r.status for r in records] == ["ran", "ran", "skipped", "ran"]
    assert "[a] settings or inputs changed since it ran: running it again" in said
    # the old folder, which the runner made, is replaced: nothing of the old run is left in it
    assert sorted(p.name for p in (tmp_path / "w" / "a").glob("value-*")) == ["value-7.txt"]
    assert [r["state"] for r in status(changed)] == ["done"] * 4


def snapshot(folder: Path) -> list[tuple[str, str | None]]:
    """Every path under `folder` with its text (None for a folder)."""
    return sorted((str(p.relative_to(folder)), p.read_text() if p.is_file() else None) for p in folder.rglob("*"))


def test_a_failed_rerun_leaves_the_finished_stage_as_it_was(tmp_path: Path, fake: FakeStages) -> None:
    """The finished folder was deleted before the new version ran: a rerun that failed lost the stage. Now the
    new version runs in STAGE.partial beside it and replaces it only once finished."""
    recipe = write_recipe(tmp_path / "r.yaml", [A, B])
    run(recipe, say=quiet([]))
    work = tmp_path / "w"
    before = snapshot(work / "a")
    fake.interrupt.add("a")
    changed = write_recipe(tmp_path / "r2.yaml", [{**A, "value": 7}, B])
    with pytest.raises(Interrupted):
        run(changed, say=quiet([]))
    assert fake.calls[2].out == work / "a.partial" and fake.calls[2].final_existed  # beside the finished one
    assert snapshot(work / "a") == before and (work / "a.partial" / "progress.txt").is_file()
    assert [r["state"] for r in status(recipe)] == ["done", "done"]  # still finished, with its own settings
    assert [r["state"] for r in status(changed)] == ["changed", "changed"]
    said: list[str] = []
    records = run(changed, say=said.append)  # the new version resumes, then takes the stage's place
    assert "[a] resuming (fake)" in said and [r.status for r in records] == ["ran", "ran"]
    assert sorted(p.name for p in (work / "a").glob("value-*")) == ["value-7.txt"]
    assert sorted(p.name for p in work.iterdir()) == [MARKER, "a", "b", "recipe_report.md"]


def test_a_finished_training_stage_with_a_misspelt_setting_is_refused_and_kept(
        tmp_path: Path, fake: FakeStages, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user trial: a train-embed stage run to completion, then the recipe run with `max_steps` misspelt
    `max_step`: "settings or inputs changed ... running it again", then "train: unknown key(s)", and the finished
    stage was gone. Now the recipe is refused when it loads and the stage is untouched."""
    from qwen_embed.recipe.stages import _train_config

    def train(ctx: StageContext) -> StageResult:  # parses its config as the real stage does, then a cheap fake
        _train_config(ctx)
        return fake.run(ctx)

    monkeypatch.setitem(KINDS, "train-embed", replace(KINDS["train-embed"], run=train))
    stage = {"name": "stage1", "kind": "train-embed", "config": {"model": {"path": "m"},
                                                                   "data": {"train_files": ["p.jsonl"]},
                                                                   "train": {"max_steps": 4, "batch_size": 8}}}
    recipe = write_recipe(tmp_path / "r.yaml", [stage])
    run(recipe, say=quiet([]))
    before = snapshot(tmp_path / "w")
    typo = {**stage, "config": {**stage["config"], "train": {"max_step": 4, "batch_size": 8}}}
    with pytest.raises(InputError, match=r"stage 'stage1': train: unknown key\(s\) \['max_step'\]"):
        run(write_recipe(tmp_path / "typo.yaml", [typo]), say=quiet([]))
    assert snapshot(tmp_path / "w") == before and fake.ran() == ["stage1"]
    assert [r["state"] for r in status(recipe)] == ["done"]


@pytest.mark.parametrize("new_state", ["not yet made", "finished, not yet renamed", "in place"])
def test_a_run_stopped_while_replacing_a_stage_leaves_one_finished_version(tmp_path: Path, fake: FakeStages,
                                                                           new_state: str) -> None:
    """Replacing a finished stage is two renames (STAGE -> STAGE.replaced, STAGE.partial -> STAGE) and a delete;
    a run killed between them leaves the old version aside: `status` reads it there, and the next run puts it
    back (new version not finished) or deletes it (new version finished: renamed in, or already in place)."""
    work = tmp_path / "w"
    old = write_recipe(tmp_path / "r.yaml", [A])
    run(old, say=quiet([]))
    new = write_recipe(tmp_path / "r2.yaml", [{**A, "value": 7}])
    if new_state != "not yet made":
        run(new, say=quiet([]))  # the new version finished: rewind its install to the moment of the kill
        (work / "a").rename(work / "a.new")
        run(old, say=quiet([]))
        (work / "a").rename(work / "a.replaced")
        (work / "a.new").rename(work / ("a" if new_state == "in place" else "a.partial"))
    else:
        (work / "a").rename(work / "a.replaced")
    assert [r["state"] for r in status(old)] == ["changed" if new_state == "in place" else "done"]
    calls = len(fake.calls)
    said: list[str] = []
    records = run(new, say=said.append)
    assert not (work / "a.replaced").exists() and not (work / "a.partial").exists()
    assert sorted(p.name for p in (work / "a").glob("value-*")) == ["value-7.txt"]
    assert len(fake.calls) == calls + (new_state == "not yet made")  # a finished new version is not run again
    assert ("[a] put back as it was: a run was stopped while it replaced it" in said) == (new_state != "in place")
    assert [r.fingerprint for r in records] == [stage_fingerprints(new)["a"]]
    assert [r["state"] for r in status(new)] == ["done"]


def test_a_stage_moved_aside_that_the_runner_did_not_make_is_never_deleted(tmp_path: Path, fake: FakeStages) -> None:
    run(write_recipe(tmp_path / "r.yaml", [A]), say=quiet([]))
    theirs = tmp_path / "w" / "a.replaced"
    theirs.mkdir()
    (theirs / "precious.txt").write_text("someone's")
    with pytest.raises(InputError) as e:
        run(write_recipe(tmp_path / "r.yaml", [{**A, "value": 7}]), say=quiet([]))
    assert str(e.value) == (f"{theirs} exists but holds no stage.json: it was not made by this runner; move it away "
                            "or rename the stage.")
    assert (theirs / "precious.txt").read_text() == "someone's" and fake.ran() == ["a"]


def test_fingerprints_follow_references_only(tmp_path: Path, fake: FakeStages) -> None:
    before = stage_fingerprints(write_recipe(tmp_path / "r.yaml", [A, B, C, D]))
    after = stage_fingerprints(write_recipe(tmp_path / "r.yaml", [A, {**B, "more": ["plain"]}, C, D]))
    assert [before[s] == after[s] for s in "abcd"] == [True, False, True, False]
    assert len(set(before.values())) == 4  # c and a differ in their value only; d in what it refers to


def test_a_changed_seed_reruns_every_stage(tmp_path: Path, fake: FakeStages) -> None:
    run(write_recipe(tmp_path / "r.yaml", [A, C]), say=quiet([]))
    assert [r["state"] for r in status(write_recipe(tmp_path / "r.yaml", [A, C], seed=1))] == ["changed"] * 2


def test_a_changed_evaluation_set_reruns_the_model_stages_and_their_users(tmp_path: Path, fake: FakeStages) -> None:
    stages: list[dict[str, Any]] = [{"name": "m", "kind": "fake-model", "value": 1}, C,
                                    {"name": "u", "kind": "fake", "input": {"from": "m.model"}}]
    run(write_recipe(tmp_path / "r.yaml", stages, evaluate={"dataset": "d1"}), say=quiet([]))
    changed = write_recipe(tmp_path / "r.yaml", stages, evaluate={"dataset": "d2"})
    assert [r["state"] for r in status(changed)] == ["changed", "done", "changed"]
    run(changed, say=quiet([]))
    assert fake.ran() == ["m", "c", "u", "m", "u"]


def test_rerun_forces_a_stage_and_everything_that_uses_it(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A, B, C, D])
    run(recipe, say=quiet([]))
    records = run(recipe, rerun=["a"], say=quiet([]))
    assert fake.ran()[4:] == ["a", "b", "d"]
    assert [r.status for r in records] == ["ran", "ran", "skipped", "ran"]
    run(recipe, rerun=["b", "c"], say=quiet([]))
    assert fake.ran()[7:] == ["b", "c", "d"]


def test_rerun_of_an_unknown_stage_is_refused_before_any_work(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A, B])
    with pytest.raises(InputError) as e:
        run(recipe, rerun=["a", "zz"], say=quiet([]))
    assert str(e.value) == "--rerun zz: the recipe has no such stage (a, b)."
    assert not (tmp_path / "w").exists() and fake.calls == []


# -- held-out metric after model stages -----------------------------------------------------------------------
def test_model_stages_are_measured_before_the_rename(tmp_path: Path, fake: FakeStages) -> None:
    stages = [{"name": "m", "kind": "fake-model"}, {"name": "r", "kind": "fake-model", "model_kind": "reranker"},
              {"name": "plain", "kind": "fake"}]
    said: list[str] = []
    records = run(write_recipe(tmp_path / "r.yaml", stages, evaluate={"dataset": "d"}), say=said.append)
    assert fake.evaluated == [tmp_path / "w" / "m.partial" / "model"]  # not the reranker, not a non-model stage
    assert [r.metric for r in records] == [{"ndcg_at_10": 0.25, "recall_at_100": 0.5, "queries": 3,
                                            "documents": 9}, None, None]  # the run itself is not kept
    assert "[m] held-out nDCG@10 0.2500" in said
    assert json.loads((tmp_path / "w" / "m" / "stage.json").read_text())["metric"]["ndcg_at_10"] == 0.25


def test_a_model_whose_config_names_a_reranker_is_not_measured(tmp_path: Path, fake: FakeStages,
                                                               tiny_reranker_path: Path,
                                                               tiny_embedding_path: Path) -> None:
    """A merge of reranker checkpoints has no `model_kind` setting: its config.json says what it made."""
    def with_config(source: Path) -> Any:
        def make(ctx: StageContext) -> StageResult:
            (ctx.out / "model").mkdir()
            (ctx.out / "model" / "config.json").write_bytes((source / "config.json").read_bytes())
            return StageResult({"model": "model"}, {})
        return make

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(KINDS, "makes-reranker", Kind(("model",), frozenset(), with_config(tiny_reranker_path),
                                                  model_output="model"))
        mp.setitem(KINDS, "makes-embedder", Kind(("model",), frozenset(), with_config(tiny_embedding_path),
                                                  model_output="model"))
        stages = [{"name": "r", "kind": "makes-reranker"}, {"name": "e", "kind": "makes-embedder"}]
        records = run(write_recipe(tmp_path / "r.yaml", stages, evaluate={"dataset": "d"}), say=quiet([]))
    assert fake.evaluated == [tmp_path / "w" / "e.partial" / "model"]
    assert [r.metric is None for r in records] == [True, False]


def test_no_evaluation_set_measures_nothing(tmp_path: Path, fake: FakeStages) -> None:
    run(write_recipe(tmp_path / "r.yaml", [{"name": "m", "kind": "fake-model"}]), say=quiet([]))
    assert fake.evaluated == []


# -- never delete or write over what the runner did not make --------------------------------------------------
def test_check_workdir_accepts_new_empty_and_own_folders(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A])
    check_workdir(recipe)  # does not exist yet
    (tmp_path / "w").mkdir()
    check_workdir(recipe)  # empty
    (tmp_path / "w" / MARKER).write_text("{}")
    (tmp_path / "w" / "x").write_text("")
    check_workdir(recipe)  # holds the marker
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [MARKER, "x"]


def test_a_workdir_of_another_recipe_is_refused_and_its_stages_kept(tmp_path: Path, fake: FakeStages) -> None:
    """Another recipe (another `name:`) pointed at a workdir would replace that recipe's stages of the same
    names, which it did not make: refused in one line, nothing touched; the same name continues the work."""
    run(write_recipe(tmp_path / "first.yaml", [A]), say=quiet([]))
    before = (tmp_path / "w" / "a" / "out.txt").read_text()
    other = write_recipe(tmp_path / "second.yaml", [{**A, "value": 9}], name="other")
    with pytest.raises(InputError) as e:
        run(other, say=quiet([]))
    assert str(e.value).startswith(f"recipe workdir {tmp_path / 'w'} holds the work of recipe 't' "
                                   f"({tmp_path / 'first.yaml'}), not of 'other'") and "\n" not in str(e.value)
    assert (tmp_path / "w" / "a" / "out.txt").read_text() == before and len(fake.calls) == 1
    renamed = write_recipe(tmp_path / "moved.yaml", [{**A, "value": 9}])  # same name, another file: continues
    assert [r.status for r in run(renamed, say=quiet([]))] == ["ran"]


def test_a_second_run_in_a_busy_workdir_is_refused(tmp_path: Path, fake: FakeStages) -> None:
    from qwen_embed.files import OutputBusyError, OutputLock

    recipe = write_recipe(tmp_path / "r.yaml", [A])
    (tmp_path / "w").mkdir()
    with OutputLock(tmp_path / "w"), pytest.raises(OutputBusyError, match="being written by another run"):
        run(recipe, say=quiet([]))
    assert fake.calls == [] and list((tmp_path / "w").iterdir()) == []
    run(recipe, say=quiet([]))
    assert fake.ran() == ["a"]


@pytest.mark.parametrize(("make", "wanted"), [
    (lambda w: w.write_text("mine"), "is a file; set `workdir:` to a folder."),
    (lambda w: (w.mkdir(), (w / "notes.txt").write_text("mine")),
     "exists and holds files that no recipe wrote; choose another `workdir:`"),
])
def test_a_workdir_the_runner_did_not_make_is_refused_untouched(tmp_path: Path, fake: FakeStages, make: Any,
                                                                wanted: str) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A])
    work = tmp_path / "w"
    make(work)
    snapshot = sorted((str(p), p.read_text() if p.is_file() else None) for p in [work, *work.rglob("*")])
    with pytest.raises(InputError) as e:
        run(recipe, say=quiet([]))
    assert str(e.value).startswith(f"recipe workdir {work} ") and wanted in str(e.value)
    assert "\n" not in str(e.value) and fake.calls == []
    assert sorted((str(p), p.read_text() if p.is_file() else None) for p in [work, *work.rglob("*")]) == snapshot


def test_a_workdir_in_a_missing_folder_is_refused(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A], workdir="no/such/w")
    with pytest.raises(InputError, match=re.escape(f"create {tmp_path / 'no' / 'such'} first.")):
        run(recipe, say=quiet([]))
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("record", [None, "not json", '{"name": "a"}', "[1, 2]"])
def test_a_stage_folder_without_a_valid_record_is_never_deleted(tmp_path: Path, fake: FakeStages,
                                                                record: str | None) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A, C])
    run(write_recipe(tmp_path / "r.yaml", [C]), say=quiet([]))  # the work folder is the recipe's own now
    theirs = tmp_path / "w" / "a"
    theirs.mkdir()
    (theirs / "precious.txt").write_text("someone's")
    if record is not None:
        (theirs / "stage.json").write_text(record)
    with pytest.raises(InputError) as e:
        run(recipe, say=quiet([]))
    assert str(e.value) == (f"{theirs} exists but holds no stage.json: it was not made by this runner; move it away "
                            "or rename the stage.")
    assert (theirs / "precious.txt").read_text() == "someone's" and fake.ran() == ["c"]


def test_files_of_others_in_the_work_folder_survive_reruns(tmp_path: Path, fake: FakeStages) -> None:
    run(write_recipe(tmp_path / "r.yaml", [A]), say=quiet([]))
    (tmp_path / "w" / "notes.txt").write_text("mine")
    run(write_recipe(tmp_path / "r.yaml", [{**A, "value": 9}]), rerun=["a"], say=quiet([]))
    assert (tmp_path / "w" / "notes.txt").read_text() == "mine"


# -- status ---------------------------------------------------------------------------------------------------
def test_status_reads_without_writing(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [A, B])
    assert status(recipe) == [{"stage": "a", "kind": "fake", "state": "todo"},
                              {"stage": "b", "kind": "fake", "state": "todo"}]
    assert not (tmp_path / "w").exists()


def test_status_gives_seconds_and_metric_of_done_stages(tmp_path: Path, fake: FakeStages) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", [{"name": "m", "kind": "fake-model"}, C], evaluate={"dataset": "d"})
    records = run(recipe, say=quiet([]))
    rows = status(recipe)
    assert rows == [{"stage": "m", "kind": "fake-model", "state": "done", "seconds": records[0].seconds,
                     "metric": 0.25},
                    {"stage": "c", "kind": "fake", "state": "done", "seconds": records[1].seconds, "metric": None}]


# -- the report -----------------------------------------------------------------------------------------------
def test_report_table_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the plot is optional: without matplotlib, none
    recipe = Recipe("r", Path("/x/r.yaml"), tmp_path, [Stage("w", "pairs", {})],
                    {"dataset": "data/d", "split": "dev", "max_queries": 5, "max_docs": 40})
    records = [
        StageRecord("w", "pairs", "f1", {"train": "train.jsonl"}, {"rows": 3}, 1.34, None, "skipped"),
        StageRecord("s1", "train-embed", "f2", {"model": "run/model", "checkpoints": ["c1", "c2"]},
                    {"tokens": 1234}, 10.0, {"ndcg_at_10": 0.123456}),
        StageRecord("final", "eval", "f3", {"report": "report.json"}, {"ndcg_at_10": 0.5, "rerank_ndcg_at_10": 0.61},
                    2.06),
    ]
    path = write_report(recipe, records)
    assert path == tmp_path / "recipe_report.md"
    assert path.read_text(encoding="utf-8").splitlines() == [
        "# Recipe r",
        "",
        "Recipe file: `/x/r.yaml`",
        f"Work folder: `{tmp_path}`",
        "",
        "Held-out metric: nDCG@10 on `data/d` split `dev`, first 5 queries, corpus cut to 40 documents.",
        "",
        "| stage | kind | this run | seconds | tokens | held-out nDCG@10 | outputs |",
        "|---|---|---|---|---|---|---|",
        f"| w | pairs | skipped | 1.3 |  |  | train: `{tmp_path}/w/train.jsonl` |",
        f"| s1 | train-embed | ran | 10.0 | 1234 | 0.1235 | model: `{tmp_path}/s1/run/model`, checkpoints: 2 paths |",
        f"| final | eval | ran | 2.1 |  | 0.6100 | report: `{tmp_path}/final/report.json` |",
        "",
        "Final evaluation (`final`): retrieval nDCG@10 0.5, reranked 0.61",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe_report.md"]  # no png, no temporary file


def test_report_without_evaluation_set_and_rerank(tmp_path: Path) -> None:
    recipe = Recipe("r", Path("/x/r.yaml"), tmp_path, [Stage("e", "eval", {})])
    lines = write_report(recipe, [StageRecord("e", "eval", "f", {}, {"ndcg_at_10": 0.25}, 0.0)]).read_text()
    assert "Held-out metric" not in lines
    assert "| e | eval | ran | 0.0 |  | 0.2500 |  |\n" in lines
    assert lines.endswith("\nFinal evaluation (`e`): retrieval nDCG@10 0.25\n")
