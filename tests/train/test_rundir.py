"""A training run's output folder (train/rundir.py): new, resumed, finished or refused, before any model loads.

References: the module docstring's contract (which settings define a run: all but train.max_steps,
progress, log_every, save_every, keep_checkpoints, eval.every; the four outcomes and when each applies),
the checkpoint layout of docs/train.md (`checkpoints/step-N/` with `state.pt`; a folder without it is not
a checkpoint), hand-made folders, and the project's file rules: a refusal is one line with the value and
the fix, nothing is written or removed before the decision, `--overwrite` removes only a run's own
entries, and a run folder that resumes is left as it is. No model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qwen_embed.errors import ConfigError, InputError
from qwen_embed.files import OutputExistsError
from qwen_embed.train.config import TrainConfig
from qwen_embed.train.rundir import (
    MERGE_RECORD,
    RunState,
    check_run_dir,
    discard_empty_run,
    kept_at_end,
    last_checkpoint_step,
    merge_fingerprint,
    run_fingerprint,
)

RUN_FILES = ["checkpoints", "train_log.jsonl", "model", "adapter", "merged", "learning_curve.png", "run.json"]


def config(out: Path, **changes: Any) -> TrainConfig:
    """A config with `section.key=value` changes (keys spelled `section__key`)."""
    raw: dict[str, dict[str, Any]] = {"train": {"output_dir": str(out), "max_steps": 20}, "optim": {"lr": 1e-3}}
    for name, value in changes.items():
        section, key = name.split("__")
        raw.setdefault(section, {})[key] = value
    return TrainConfig.from_dict(raw)


def checkpoint(out: Path, step: int) -> None:
    folder = out / "checkpoints" / f"step-{step:08d}"
    (folder / "model").mkdir(parents=True)
    (folder / "state.pt").write_bytes(b"state")


def started(out: Path, cfg: TrainConfig, *, steps: tuple[int, ...] = (), model: bool = False) -> None:
    """What a run of `cfg` leaves: run.json, its log, checkpoints, and the final model when it finished."""
    assert check_run_dir(cfg).kind == "new"
    (out / "train_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    for s in steps:
        checkpoint(out, s)
    if model:
        (out / "model").mkdir()
        (out / "model" / "config.json").write_text("{}")


def snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


# -- the fingerprint ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("change", [
    {"train__max_steps": 400}, {"train__progress": True}, {"train__log_every": 3}, {"train__save_every": 7},
    {"train__keep_checkpoints": 9}, {"eval__every": 11}, {"train__resume": False},
    {"merge__method": "linear", "merge__checkpoints": "last-2"}, {"merge__evaluate": False},
])
def test_how_long_and_how_reported_are_not_the_run(tmp_path: Path, change: dict[str, Any]) -> None:
    assert run_fingerprint(config(tmp_path / "a", **change)) == run_fingerprint(config(tmp_path / "a"))


@pytest.mark.parametrize("change", [
    {"optim__lr": 2e-3}, {"train__seed": 1}, {"train__batch_size": 8}, {"model__path": "other"},
    {"data__train_files": ["x.jsonl"]}, {"lora__enabled": True}, {"rerank__loss": "bce"}, {"eval__file": "e.jsonl"},
])
def test_settings_that_define_the_run_change_it(tmp_path: Path, change: dict[str, Any]) -> None:
    fp = run_fingerprint(config(tmp_path / "a", **change))
    assert fp != run_fingerprint(config(tmp_path / "a")) and len(fp) == 64 and int(fp, 16) >= 0


def test_the_fingerprint_does_not_depend_on_the_folder(tmp_path: Path) -> None:
    """A run folder that was moved still resumes."""
    assert run_fingerprint(config(tmp_path / "a")) == run_fingerprint(config(tmp_path / "elsewhere" / "b"))


# -- checkpoints -------------------------------------------------------------------------------------------
def test_last_checkpoint_step_counts_only_complete_checkpoints(tmp_path: Path) -> None:
    assert last_checkpoint_step(tmp_path) == 0
    checkpoint(tmp_path, 10)
    (tmp_path / "checkpoints" / "step-20").mkdir()
    (tmp_path / "checkpoints" / "step-20" / "state.pt").write_bytes(b"s")  # an unpadded name is a step too
    (tmp_path / "checkpoints" / "step-00000030" / "model").mkdir(parents=True)  # killed before its state.pt
    (tmp_path / "checkpoints" / ".step-00000040.tmp-123-abcdef12").mkdir()  # a temporary sibling being written
    (tmp_path / "checkpoints" / ".step-00000040.tmp-123-abcdef12" / "state.pt").write_bytes(b"s")
    (tmp_path / "checkpoints" / "step-50").write_text("a file")
    (tmp_path / "checkpoints" / "step-x").mkdir()
    assert last_checkpoint_step(tmp_path) == 20


# -- the four outcomes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("exists", [False, True])
def test_a_missing_or_empty_folder_is_a_new_run(tmp_path: Path, exists: bool) -> None:
    out = tmp_path / "runs" / "deep" / "x"
    if exists:
        out.mkdir(parents=True)
    cfg = config(out)
    state = check_run_dir(cfg)
    assert state == RunState("new", out) and state.message(20) is None
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]
    assert json.loads((out / "run.json").read_text()) == {"settings": run_fingerprint(cfg)}


def test_the_same_run_resumes_from_its_newest_checkpoint_untouched(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(5, 10))
    before = snapshot(out)
    state = check_run_dir(config(out, train__save_every=5, train__log_every=1))  # reporting changed: same run
    assert (state.kind, state.step, state.note) == ("resume", 10, "") and state.message(20) is None
    assert snapshot(out) == before


def test_a_run_without_its_record_resumes_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(10,))
    (out / "run.json").unlink()
    state = check_run_dir(config(out))
    assert (state.kind, state.step) == ("resume", 10)
    assert state.message(20) == "run.json missing: assuming the same settings"


def test_a_finished_run_is_reported_with_how_to_continue(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(10, 20), model=True)
    before = snapshot(out)
    state = check_run_dir(config(out))
    assert (state.kind, state.step) == ("finished", 20)
    msg = state.message(20)
    assert msg is not None and "\n" not in msg
    assert f"{out} already finished its 20 steps (at step 20)" in msg and "--set train.max_steps=40" in msg
    assert snapshot(out) == before


@pytest.mark.parametrize(("max_steps", "model", "kind"), [(40, True, "resume"), (20, False, "resume")])
def test_a_longer_run_or_a_missing_final_model_resumes(tmp_path: Path, max_steps: int, model: bool,
                                                       kind: str) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(20,), model=model)
    state = check_run_dir(config(out, train__max_steps=max_steps))
    assert (state.kind, state.step) == (kind, 20)


def test_a_start_that_saved_no_checkpoint_starts_again(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started(out, config(out))
    (out / ".train_log.jsonl.tmp-1-abcdef12").write_text("x")  # a temporary file of that start
    assert check_run_dir(config(out)).kind == "new"
    assert not (out / "train_log.jsonl").exists()


@pytest.mark.parametrize(("change", "says"), [
    ({"optim__lr": 5e-4}, "a run with other settings"),
    ({"train__resume": False}, "a run that cannot be resumed (train.resume is off)"),
])
def test_another_run_is_refused_in_one_line_and_left_as_it_is(tmp_path: Path, change: dict[str, Any],
                                                              says: str) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(10,))
    before = snapshot(out)
    with pytest.raises(OutputExistsError) as e:
        check_run_dir(config(out, **change))
    msg = one_line(e)
    assert f"train.output_dir {out} holds {says}" in msg and "--overwrite" in msg and "--set train.output_dir" in msg
    # what --overwrite would replace, every entry of a run's own (the merge's folder included)
    assert ("replacing only a run's own files: checkpoints/, train_log.jsonl, model/, adapter/, merged/, "
            "learning_curve.png, run.json)") in msg
    assert snapshot(out) == before


def test_files_a_run_does_not_write_are_refused_and_named(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(10,))
    (out / "README.md").write_text("mine")
    with pytest.raises(OutputExistsError) as e:
        check_run_dir(config(out))
    assert "files a training run does not write (README.md)" in one_line(e)


def test_overwrite_removes_only_a_runs_own_entries(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(10,), model=True)
    for name in ("adapter", "merged"):
        (out / name).mkdir()
    (out / "learning_curve.png").write_bytes(b"png")
    (out / ".model.tmp-99-0123abcd").mkdir()
    (out / "README.md").write_text("mine")
    (out / "data").mkdir()
    (out / "data" / "rows.jsonl").write_text("{}\n")
    cfg = config(out, optim__lr=5e-4)
    assert check_run_dir(cfg, overwrite=True) == RunState("new", out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "data", "run.json"]
    assert (out / "README.md").read_text() == "mine" and (out / "data" / "rows.jsonl").read_text() == "{}\n"
    assert json.loads((out / "run.json").read_text()) == {"settings": run_fingerprint(cfg)}


def test_overwrite_starts_an_unfinished_run_over_instead_of_resuming_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(10,))
    assert check_run_dir(config(out)).kind == "resume"
    assert check_run_dir(config(out), overwrite=True) == RunState("new", out)
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_a_run_without_its_run_json_is_resumed_from_its_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(10,))
    (out / "run.json").unlink()
    state = check_run_dir(config(out))
    assert (state.kind, state.step) == ("resume", 10) and "run.json missing" in state.note


def test_overwrite_starts_a_finished_run_over_as_its_message_says(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(10, 20), model=True)
    message = check_run_dir(config(out)).message(20)
    assert message is not None and "pass --overwrite" in message
    assert check_run_dir(config(out), overwrite=True).kind == "new"
    assert not (out / "checkpoints").exists() and not (out / "model").exists()


@pytest.mark.parametrize("entry", ["model/config.json", "run.json"])
def test_a_folder_with_no_sign_of_a_run_is_not_taken_for_one(tmp_path: Path, entry: str) -> None:
    out = tmp_path / "mine"
    (out / entry).parent.mkdir(parents=True, exist_ok=True)
    (out / entry).write_text('{"name": "my own file"}')
    before = snapshot(out)
    with pytest.raises(OutputExistsError) as e:
        check_run_dir(config(out))
    assert "entries named like a run's" in one_line(e) and "--overwrite" in str(e.value)
    assert snapshot(out) == before


# -- the end-of-run merge (merge section) -----------------------------------------------------------------------
LINEAR = {"merge__method": "linear", "merge__checkpoints": [10, 20]}


def test_a_finished_run_without_its_merge_resumes_to_write_it(tmp_path: Path) -> None:
    """A merge that failed (or was added, or changed, after the run) is written by rerunning, not refused as
    another run or reported finished without it; a merge of these settings makes the run finished."""
    out = tmp_path / "run"
    started(out, config(out), steps=(10, 20), model=True)  # a run without a merge
    state = check_run_dir(config(out, **LINEAR))
    assert (state.kind, state.step) == ("resume", 20)
    (out / "merged").mkdir()
    (out / "merged" / MERGE_RECORD).write_text(json.dumps({"settings": merge_fingerprint(config(out, **LINEAR))}))
    assert check_run_dir(config(out, **LINEAR)).kind == "finished"
    other = config(out, merge__method="linear", merge__checkpoints="last-2")
    assert check_run_dir(other).kind == "resume"  # merged/ holds the merge of other settings
    assert check_run_dir(config(out)).kind == "finished"  # no merge asked for


def test_a_run_recorded_with_its_merge_section_by_an_earlier_version_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(10,))
    (out / "run.json").write_text(json.dumps({"settings": run_fingerprint(config(out), with_merge=True)}))
    assert check_run_dir(config(out)).kind == "resume"


@pytest.mark.parametrize(("existing", "step", "max_steps", "save_every", "keep", "kept"), [
    ((), 0, 6, 2, 2, [4, 6]), ((), 0, 7, 2, 2, [6, 7]), ((), 0, 6, 0, 3, [6]), ((), 0, 5, 1, 3, [3, 4, 5]),
    ((4, 5), 5, 6, 2, 2, [5, 6]),  # continued from a run of 5 steps
    ((2, 4, 5), 5, 5, 2, 2, [2, 4, 5]),  # finished: nothing is saved, so nothing is deleted
])
def test_kept_at_end_is_what_the_checkpoint_store_leaves(tmp_path: Path, existing: tuple[int, ...], step: int,
                                                         max_steps: int, save_every: int, keep: int,
                                                         kept: list[int]) -> None:
    cfg = config(tmp_path, train__max_steps=max_steps, train__save_every=save_every, train__keep_checkpoints=keep)
    assert kept_at_end(cfg, list(existing), step) == kept


@pytest.mark.parametrize(("checkpoints", "says"), [
    ([2, 6], "names step 2, which train.keep_checkpoints=2 deletes before the merge (the run holds steps 4, 6 at "
             "its end); name those, or set train.keep_checkpoints=3."),
    ([3, 6], "names step 3, which the run never saves (it saves every train.save_every=2 steps and at "
             "train.max_steps=6); the run holds steps 4, 6 at its end: name those, or choose a train.save_every "
             "that divides 3."),
    (["step-00000004", 8], "names step 8, which the run never saves"),
])
def test_a_merge_of_checkpoints_the_run_will_not_hold_is_refused_before_anything_is_written(
        tmp_path: Path, checkpoints: list[int | str], says: str) -> None:
    out = tmp_path / "run"
    cfg = config(out, train__max_steps=6, train__save_every=2, merge__method="linear", merge__checkpoints=checkpoints)
    with pytest.raises(ConfigError) as e:
        check_run_dir(cfg)
    assert f"merge.checkpoints {says}" in one_line(e)
    assert not out.exists()
    fine = config(out, train__max_steps=6, train__save_every=2, merge__method="linear",
                  merge__checkpoints=["step-00000004", 6, str(tmp_path / "elsewhere")])
    assert check_run_dir(fine).kind == "new"


def test_a_merge_of_more_newest_checkpoints_than_the_run_saves_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = config(out, train__max_steps=6, train__save_every=0, train__keep_checkpoints=3, merge__method="linear",
                 merge__checkpoints="last-3")
    with pytest.raises(ConfigError) as e:
        check_run_dir(cfg)
    assert "merge.checkpoints=last-3 needs 3 checkpoints, but the run holds steps 6 at its end" in one_line(e)
    assert not out.exists()


def test_a_continued_run_may_merge_the_checkpoints_it_holds(tmp_path: Path) -> None:
    """Which checkpoints a continued run holds depends on its folder: the step-5 end of the first run stays."""
    out = tmp_path / "run"
    started(out, config(out), steps=(4, 5))
    cfg = config(out, train__max_steps=6, train__save_every=2, merge__method="linear", merge__checkpoints=[5, 6])
    assert check_run_dir(cfg).kind == "resume"
    with pytest.raises(ConfigError) as e:
        check_run_dir(config(out, train__max_steps=6, train__save_every=2, merge__method="linear",
                             merge__checkpoints=[4, 6]))
    assert "names step 4, which train.keep_checkpoints=2 deletes" in one_line(e)


# -- folders that cannot be used -------------------------------------------------------------------------------
def test_a_file_as_output_dir_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("a file")
    with pytest.raises(InputError) as e:
        check_run_dir(config(tmp_path / "run"))
    assert "is a file, not a folder" in one_line(e) and str(tmp_path / "run") in str(e.value)
    assert (tmp_path / "run").read_text() == "a file"


def test_a_parent_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file")
    out = tmp_path / "blocker" / "runs" / "x"
    with pytest.raises(InputError) as e:
        check_run_dir(config(out))
    msg = one_line(e)
    assert f"train.output_dir {out}" in msg and "cannot be created" in msg and "choose another path" in msg


def test_only_rank_zero_writes_or_removes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    started(out, config(out), steps=(10,))
    before = snapshot(out)
    monkeypatch.setenv("RANK", "1")
    assert check_run_dir(config(out, optim__lr=5e-4), overwrite=True).kind == "new"
    assert snapshot(out) == before
    assert check_run_dir(config(tmp_path / "fresh")).kind == "new" and not (tmp_path / "fresh").exists()


# -- a run that failed before writing anything ------------------------------------------------------------------
@pytest.mark.parametrize(("created", "left"), [(True, None), (False, [])])
def test_discard_empty_run_removes_only_its_record(tmp_path: Path, created: bool, left: list[str] | None) -> None:
    out = tmp_path / "run"
    check_run_dir(config(out))
    discard_empty_run(out, created=created)
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == left


def test_discard_empty_run_leaves_a_folder_with_anything_else(tmp_path: Path) -> None:
    out = tmp_path / "run"
    check_run_dir(config(out))
    (out / "train_log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    before = snapshot(out)
    discard_empty_run(out, created=True)
    assert snapshot(out) == before
    discard_empty_run(tmp_path / "absent", created=True)  # nothing there: nothing to do
