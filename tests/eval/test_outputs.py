"""Tests of `qwen_embed.eval.outputs`: the evaluation output folder, checked before work and kept free of
stale files.

Reference: the module docstring and docs/eval.md ("Files"): the folder is checked before anything
loads; one with the record that holds only an evaluation's files (the fixed names, `run.dim<D>.trec`, the
cache, the rerank's resumable files, temporary siblings, or names the record lists) is reused; anything else
is refused in one line unless `overwrite`; a folder without the record is used only while empty, whatever
the names of its files (never adopted); a run claims the folder (writes the record) before its first file;
after a run only the files the same command recorded last time and did not write now are removed, never a
file another command still records, never the record, never anything outside the folder; the record
`qwen-embed-outputs.json` is `{command: [names]}`, written atomically (no temporary file left).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.eval.outputs import (
    OWN_PATTERNS,
    RECORD,
    RERANK_SCORES,
    claim_output_dir,
    prepare_output_dir,
    read_record,
    record_outputs,
    remove_if_empty,
)
from qwen_embed.files import OutputExistsError, ResumableJsonl, resumable_files, temp_sibling


def touch(folder: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(name)
        out.append(p)
    return out


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# -- prepare_output_dir ------------------------------------------------------------------------------
def test_the_default_folder_is_created_with_its_parents(tmp_path: Path) -> None:
    default = tmp_path / "eval-results" / "scifact" / "tiny"
    assert prepare_output_dir(None, default) == default
    assert default.is_dir() and listing(tmp_path) == ["eval-results", "eval-results/scifact",
                                                      "eval-results/scifact/tiny"]


def test_a_default_that_is_a_file_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    default = tmp_path / "results"
    default.write_text("mine")
    with pytest.raises(InputError) as err:
        prepare_output_dir(None, default)
    msg = str(err.value)
    assert "\n" not in msg and str(default) in msg and "--output-dir" in msg
    assert default.read_text() == "mine"


def test_a_new_output_dir_is_created_inside_an_existing_folder(tmp_path: Path) -> None:
    assert prepare_output_dir(str(tmp_path / "new"), tmp_path / "unused") == tmp_path / "new"
    assert listing(tmp_path) == ["new"]  # the default is not made when --output-dir is given


@pytest.mark.parametrize(("target", "says"), [
    ("missing/out", "does not exist"),
    ("a-file", "is a file"),
    ("a-file/out", "is a file"),
])
def test_a_bad_output_dir_is_refused_in_one_line_before_any_work(tmp_path: Path, target: str, says: str) -> None:
    (tmp_path / "a-file").write_text("x")
    before = listing(tmp_path)
    with pytest.raises(InputError, match=says) as err:
        prepare_output_dir(str(tmp_path / target), tmp_path / "unused")
    assert "\n" not in str(err.value) and str(tmp_path / target) in str(err.value)
    assert listing(tmp_path) == before


EVALUATION_NAMES = [
    ["run.trec", "scores.json", "summary.md"],
    ["run.dim64.trec", "run.dim1024.trec", "ndcg_vs_dim.png", "cache/corpus-0123/00000.npy"],
    ["rerank.trec", "rerank_scores.json", "rerank_summary.md", "rerank_delta.png", "rerank.partial.jsonl"],
    ["rerank.partial.jsonl.partial", "rerank.partial.jsonl.partial.meta.json"],  # an interrupted rerank
    [".scores.json.tmp-123-0123abcd"],
]


@pytest.mark.parametrize("names", EVALUATION_NAMES)
def test_a_folder_of_evaluation_files_is_reused_as_it_is(tmp_path: Path, names: list[str]) -> None:
    """Changed (issue: resume and data loss): only with the record; before, the record was not needed, and the
    rerank's resumable files (`.partial`, `.partial.meta.json`) were refused."""
    out = tmp_path / "out"
    touch(out, *names, RECORD)
    before = listing(out)
    assert prepare_output_dir(str(out), tmp_path / "unused") == out
    assert listing(out) == before


@pytest.mark.parametrize("names", EVALUATION_NAMES[:4])
@pytest.mark.parametrize("arg", [True, False])
def test_a_folder_without_the_record_is_never_adopted(tmp_path: Path, names: list[str], arg: bool) -> None:
    """Data loss before: a user's scores.json / summary.md (run.trec, cache/...) in a folder no evaluation
    recorded were taken for an earlier run's and overwritten without --overwrite."""
    out = tmp_path / "eval-results" / "x"
    touch(out, *names)
    before = {p: p.read_text() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(OutputExistsError) as err:
        prepare_output_dir(str(out) if arg else None, out)
    msg = str(err.value)
    top = sorted({n.split("/")[0] for n in names})
    assert "\n" not in msg and str(out) in msg and RECORD in msg and "--output-dir" in msg and "--overwrite" in msg
    assert f"({', '.join(top[:3])}" in msg and "would be replaced" in msg
    assert prepare_output_dir(str(out) if arg else None, out, overwrite=True) == out  # the user asked
    assert {p: p.read_text() for p in out.rglob("*") if p.is_file()} == before  # nothing touched either way


def test_a_folder_holding_only_temporary_siblings_is_used_without_the_record(tmp_path: Path) -> None:
    """What a run killed while writing its record (or probing the folder) leaves: not the user's, no refusal."""
    out = tmp_path / "out"
    out.mkdir()
    temp_sibling(out / RECORD).write_text("{")
    assert prepare_output_dir(str(out), tmp_path / "unused") == out


def test_names_the_record_lists_count_as_the_evaluations(tmp_path: Path) -> None:
    out = tmp_path / "out"
    touch(out, "custom-plot.svg")
    (out / RECORD).write_text(json.dumps({"eval retrieval": ["custom-plot.svg"]}))
    assert prepare_output_dir(str(out), tmp_path / "unused") == out


@pytest.mark.parametrize(("names", "shown", "shown_with_record"), [
    (["notes.txt"], "(notes.txt)", "(notes.txt)"),
    (["run.trec", "b.txt", "a.txt", "c.txt"], "(a.txt, b.txt, c.txt and 1 more)", "(a.txt, b.txt, c.txt)"),
    (["d", "c", "b", "a", "run.trec"], "(a, b, c and 2 more)", "(a, b, c and 1 more)"),
    ([".DS_Store"], "(.DS_Store)", "(.DS_Store)"),
    (["run.trec.bak"], "(run.trec.bak)", "(run.trec.bak)"),
])
@pytest.mark.parametrize("arg", [True, False])
@pytest.mark.parametrize("record", [True, False])
def test_a_folder_holding_other_files_is_refused_unless_overwrite(tmp_path: Path, names: list[str], shown: str,
                                                                  shown_with_record: str, arg: bool,
                                                                  record: bool) -> None:
    """Changed (issue: data loss): without the record every file counts as the user's (run.trec too), and the
    list says how many it leaves out (was `, ...`)."""
    out = tmp_path / "eval-results" / "x"
    touch(out, *names, *([RECORD] if record else []))
    shown = shown_with_record if record else shown
    before = listing(out)
    with pytest.raises(OutputExistsError) as err:
        prepare_output_dir(str(out) if arg else None, out)
    msg = str(err.value)
    assert "\n" not in msg and str(out) in msg and shown in msg
    assert "--output-dir" in msg and "--overwrite" in msg
    assert prepare_output_dir(str(out) if arg else None, out, overwrite=True) == out
    assert listing(out) == before  # accepted, nothing touched


# -- read_record -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    (None, {}),
    ('{"eval retrieval": ["run.trec", "scores.json"]}', {"eval retrieval": ["run.trec", "scores.json"]}),
    ('{"a": ["x"], "b": "not a list", "c": null}', {"a": ["x"]}),
    ('["run.trec"]', {}),
    ('{"a": ["x"', {}),
    ("\xff\xfe", {}),
])
def test_read_record(tmp_path: Path, text: str | None, expected: dict[str, list[str]]) -> None:
    if text is not None:
        (tmp_path / RECORD).write_text(text, encoding="latin-1")
    assert read_record(tmp_path) == expected


# -- record_outputs ----------------------------------------------------------------------------------
def test_a_rerun_removes_only_what_the_same_command_wrote_last_time(tmp_path: Path) -> None:
    first = touch(tmp_path, "run.dim64.trec", "run.dim128.trec", "ndcg_vs_dim.png", "scores.json")
    assert record_outputs(tmp_path, "eval retrieval", first) == []
    touch(tmp_path, "rerank.trec", "notes.txt")
    assert record_outputs(tmp_path, "eval rerank", [tmp_path / "rerank.trec"]) == []
    removed = record_outputs(tmp_path, "eval retrieval", [tmp_path / "run.dim64.trec", tmp_path / "scores.json"])
    assert sorted(removed) == [tmp_path / "ndcg_vs_dim.png", tmp_path / "run.dim128.trec"]
    assert listing(tmp_path) == sorted([RECORD, "notes.txt", "rerank.trec", "run.dim64.trec", "scores.json"])
    assert json.loads((tmp_path / RECORD).read_text()) == {"eval retrieval": ["run.dim64.trec", "scores.json"],
                                                          "eval rerank": ["rerank.trec"]}


def test_a_file_another_command_still_records_is_kept(tmp_path: Path) -> None:
    shared = touch(tmp_path, "summary.md")
    record_outputs(tmp_path, "a", shared)
    record_outputs(tmp_path, "b", shared)
    assert record_outputs(tmp_path, "a", []) == []
    assert (tmp_path / "summary.md").exists()
    assert read_record(tmp_path) == {"a": [], "b": ["summary.md"]}


def test_the_record_itself_and_files_already_gone_are_never_removed(tmp_path: Path) -> None:
    (tmp_path / RECORD).write_text(json.dumps({"a": [RECORD, "gone.trec"]}))
    assert record_outputs(tmp_path, "a", []) == []
    assert read_record(tmp_path) == {"a": []}


def test_a_stale_link_is_removed_without_following_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside, "keep.txt")
    out = tmp_path / "out"
    out.mkdir()
    (out / "cache").symlink_to(outside, target_is_directory=True)
    record_outputs(out, "a", [out / "cache"])
    assert record_outputs(out, "a", []) == [out / "cache"]
    assert not (out / "cache").is_symlink() and (outside / "keep.txt").read_text() == "keep.txt"


def test_a_stale_folder_is_removed_whole(tmp_path: Path) -> None:
    touch(tmp_path, "cache/a.npy", "cache/sub/b.npy")
    record_outputs(tmp_path, "a", [tmp_path / "cache"])
    assert record_outputs(tmp_path, "a", []) == [tmp_path / "cache"]
    assert listing(tmp_path) == [RECORD]


def test_the_record_is_written_whole_with_no_temporary_file_left(tmp_path: Path) -> None:
    (tmp_path / RECORD).write_text('{"torn": ["x"')  # a record cut short is replaced, not appended to
    record_outputs(tmp_path, "eval retrieval", [tmp_path / "z.trec", tmp_path / "a.json", tmp_path / "a.json"])
    assert listing(tmp_path) == [RECORD]
    assert json.loads((tmp_path / RECORD).read_text(encoding="utf-8")) == {"eval retrieval": ["a.json", "z.trec"]}


@pytest.mark.parametrize("entry", ["../victim.txt", "ABSOLUTE", "sub/../../victim.txt", ".."])
def test_a_record_entry_naming_a_path_outside_the_folder_never_removes_it(tmp_path: Path, entry: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("user data")
    out = tmp_path / "out"
    out.mkdir()
    name = str(victim) if entry == "ABSOLUTE" else entry
    (out / RECORD).write_text(json.dumps({"eval retrieval": [name]}))
    record_outputs(out, "eval retrieval", [])
    assert victim.read_text() == "user data"


def test_the_folders_a_failed_run_made_are_removed_while_empty(tmp_path: Path) -> None:
    made: list[Path] = []
    out = prepare_output_dir(None, tmp_path / "a" / "b" / "c", made=made)
    assert made == [tmp_path / "a", tmp_path / "a" / "b", out]
    remove_if_empty(made)
    assert listing(tmp_path) == []
    made = []
    out = prepare_output_dir(None, tmp_path / "a" / "b" / "c", made=made)
    (tmp_path / "a" / "b" / "theirs.txt").write_text("x")  # written meanwhile: b and a stay, c goes
    remove_if_empty(made)
    assert not out.exists() and (tmp_path / "a" / "b" / "theirs.txt").read_text() == "x"
    made = []
    kept = prepare_output_dir(str(tmp_path / "given"), tmp_path / "unused", made=made)
    (kept / "cache").mkdir()  # a run that stopped after writing: resumable, kept
    remove_if_empty(made)
    assert (kept / "cache").is_dir()
    existing = tmp_path / "existing"
    existing.mkdir()
    made = []
    prepare_output_dir(str(existing), tmp_path / "unused", made=made)
    assert made == []  # a folder it did not make is never its to remove


# -- resuming in the same folder (issue: an interrupted `eval rerank` was refused there) ------------------
def test_the_names_of_the_resumable_files_are_the_ones_the_writer_uses(tmp_path: Path) -> None:
    """Every file `ResumableJsonl` leaves, at every stage (open, rows written, closed by an interruption,
    finished), is one `resumable_files` names and `OWN_PATTERNS` covers."""
    target = tmp_path / RERANK_SCORES
    seen: set[str] = set()
    w = ResumableJsonl(target, key="qid", job="j", overwrite=True)
    seen |= {p.name for p in tmp_path.iterdir()}
    w.write_many([{"qid": "q1", "scores": {"d1": 1.0}}])
    seen |= {p.name for p in tmp_path.iterdir()}
    w.close()  # an interrupted run
    seen |= {p.name for p in tmp_path.iterdir()}
    w = ResumableJsonl(target, key="qid", job="j", overwrite=True)
    assert w.done == {"q1"}  # resumed
    w.finish()
    seen |= {p.name for p in tmp_path.iterdir()}
    assert seen == set(resumable_files(RERANK_SCORES))
    assert set(resumable_files(RERANK_SCORES)) <= set(OWN_PATTERNS)


def test_the_files_an_interrupted_rerank_leaves_are_resumed_without_overwrite(tmp_path: Path) -> None:
    out = prepare_output_dir(str(tmp_path / "out"), tmp_path / "unused")
    claim_output_dir(out, "rerank")  # the run claims the folder before its first file
    w = ResumableJsonl(out / RERANK_SCORES, key="qid", job="j", overwrite=True)
    w.write_many([{"qid": "q1", "scores": {"d1": 1.0}}])
    w.close()
    temp_sibling(out / (RERANK_SCORES + ".partial.meta.json")).write_text("{")  # killed mid-write
    assert len(listing(out)) == 4
    assert prepare_output_dir(str(out), tmp_path / "unused") == out  # no --overwrite needed
    assert read_record(out) == {"rerank": []}


def test_the_claim_is_written_once_and_keeps_what_the_record_holds(tmp_path: Path) -> None:
    claim_output_dir(tmp_path, "retrieval")
    assert json.loads((tmp_path / RECORD).read_text()) == {"retrieval": []}
    record_outputs(tmp_path, "retrieval", touch(tmp_path, "run.trec"))
    claim_output_dir(tmp_path, "rerank")
    claim_output_dir(tmp_path, "retrieval")
    assert read_record(tmp_path) == {"retrieval": ["run.trec"]}  # an earlier run's list stays for its stale check


def test_a_failed_run_removes_its_claim_with_the_folder_but_keeps_a_resumable_one(tmp_path: Path) -> None:
    made: list[Path] = []
    out = prepare_output_dir(None, tmp_path / "a" / "out", made=made)
    claim_output_dir(out, "retrieval")  # then the model failed: nothing written but the claim
    remove_if_empty(made)
    assert listing(tmp_path) == []
    made = []
    out = prepare_output_dir(None, tmp_path / "a" / "out", made=made)
    claim_output_dir(out, "retrieval")
    touch(out, "cache/corpus-0123/00000.npy")  # interrupted after a shard: kept, and resumed later
    remove_if_empty(made)
    assert listing(out) == ["cache", "cache/corpus-0123", "cache/corpus-0123/00000.npy", RECORD]
    assert prepare_output_dir(None, out) == out
    given = tmp_path / "given"
    given.mkdir()
    (given / RECORD).write_text('{"retrieval": []}')
    remove_if_empty([])  # a folder it did not make keeps even an empty record
    assert listing(given) == [RECORD]
