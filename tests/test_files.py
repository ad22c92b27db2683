"""qwen_embed.files: checked outputs, atomic files and folders, fingerprints, resumable JSONL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.files import (
    OutputBusyError,
    OutputExistsError,
    OutputLock,
    ResumableJsonl,
    atomic_dir,
    atomic_file,
    check_output_dir,
    check_output_file,
    clean_stale_temps,
    file_digest,
    fingerprint,
    fingerprint_rows,
)
from tests.threads import subprocess_env


def test_check_output_file(tmp_path: Path) -> None:
    assert check_output_file("-") is None
    assert check_output_file(tmp_path / "new.npy") == tmp_path / "new.npy"
    with pytest.raises(InputError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        check_output_file(tmp_path / "missing" / "x.npy")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_file(tmp_path / "f.txt" / "x.npy")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output_file(tmp_path / "f.txt")
    assert check_output_file(tmp_path / "f.txt", overwrite=True) == tmp_path / "f.txt"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_check_output_file_read_only(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(InputError, match="not writable"):
        check_output_file(ro / "x")


def test_check_output_file_proc() -> None:
    with pytest.raises(InputError):
        check_output_file("/proc/x.npy")


def test_atomic_file_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write("new")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_file(target) as f:
        f.write("new")
    assert target.read_text() == "new"
    with pytest.raises(OutputExistsError):
        atomic_file(target, overwrite=False).__enter__()


def test_check_output_dir(tmp_path: Path) -> None:
    assert check_output_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("a")
    with pytest.raises(OutputExistsError, match="not empty"):
        check_output_dir(tmp_path / "full")
    check_output_dir(tmp_path / "full", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(InputError, match="root"):
        check_output_dir("/", overwrite=True)


def test_atomic_dir_new_and_overwrite_keeps_other_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "model.bin").write_text("v1")
    assert (out / "model.bin").read_text() == "v1"
    (out / "user.txt").write_text("keep me")
    (out / "sub").mkdir()
    (out / "sub" / "x").write_text("x")
    with pytest.raises(OutputExistsError):
        atomic_dir(out).__enter__()
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "model.bin").write_text("v2")
    assert (out / "model.bin").read_text() == "v2"
    assert (out / "user.txt").read_text() == "keep me" and (out / "sub" / "x").read_text() == "x"
    with pytest.raises(RuntimeError), atomic_dir(out, overwrite=True) as tmp:
        (tmp / "model.bin").write_text("v3")
        raise RuntimeError("fail")
    assert (out / "model.bin").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_dir_replaces_a_set_of_entries_whole(tmp_path: Path) -> None:
    """Entries written as a set (a checkpoint's weights: one file, or shards and their index) are replaced
    whole: those of the old set that the new output does not write are removed; nothing else is."""
    from qwen_embed.hub import is_weight_file

    out = tmp_path / "out"
    out.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "config.json", "notes.txt", "model-final.safetensors"):
        (out / name).write_text("old")
    with atomic_dir(out, overwrite=True, as_a_set=is_weight_file) as tmp:
        (tmp / "model.safetensors").write_text("new")
        (tmp / "config.json").write_text("new")
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "model.safetensors": "new", "config.json": "new", "notes.txt": "old", "model-final.safetensors": "old"}
    with atomic_dir(out, overwrite=True, as_a_set=is_weight_file) as tmp:  # and back to shards
        for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                     "model.safetensors.index.json"):
            (tmp / name).write_text("newer")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model-final.safetensors", "model.safetensors.index.json", "notes.txt"]


@pytest.mark.parametrize(("name", "weights"), [
    ("model.safetensors", True), ("model-00001-of-00003.safetensors", True), ("model.safetensors.index.json", True),
    ("pytorch_model.bin", True), ("pytorch_model-00002-of-00002.bin", True), ("pytorch_model.bin.index.json", True),
    ("model-1-of-2.safetensors", False), ("adapter_model.safetensors", False), ("model.safetensors.bak", False),
    ("config.json", False), ("tokenizer.json", False), ("merge_report.json", False)])
def test_is_weight_file_knows_transformers_names(name: str, weights: bool) -> None:
    from qwen_embed.hub import is_weight_file

    assert is_weight_file(name) is weights


def test_stale_temps_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          env=subprocess_env())
    pid = int(dead.stdout)
    stale = tmp_path / f".out.tmp-{pid}-0123abcd"
    stale.mkdir()
    live = tmp_path / f".out.tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    assert clean_stale_temps(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


def test_fingerprints(tmp_path: Path) -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
    p = tmp_path / "x"
    p.write_bytes(b"abc")
    assert file_digest(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_fingerprint_rows_is_sha256_of_canonical_json_lines() -> None:
    import hashlib

    rows = [{"b": 1, "a": "é"}, ["x", 2]]
    want = hashlib.sha256('{"a":"é","b":1}\n["x",2]\n'.encode()).hexdigest()
    assert fingerprint_rows(iter(rows)) == want
    assert fingerprint_rows([("a", "b")]) != fingerprint_rows([("ab", "")])  # rows are kept apart


def test_resumable_jsonl_rows_reads_back_what_was_written(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    w = ResumableJsonl(out, key="qid", job="j")
    w.write_many([{"qid": "q1", "s": 1.5}, {"qid": "q2", "s": 2.5}])
    w.close()
    again = ResumableJsonl(out, key="qid", job="j")
    assert list(again.rows()) == [{"qid": "q1", "s": 1.5}, {"qid": "q2", "s": 2.5}]
    again.write({"qid": "q3", "s": 0.0})
    assert [r["qid"] for r in again.rows()] == ["q1", "q2", "q3"]  # flushed before reading
    again.close()


def test_a_lone_surrogate_is_written_read_back_and_fingerprinted(tmp_path: Path) -> None:
    """What a JSON escape such as \\ud800 decodes to cannot be UTF-8: rows holding one are written with ASCII
    escapes (json reads them back exactly), other rows as text; fingerprints take it too."""
    import json

    from qwen_embed.files import json_text, write_json_atomic

    odd = {"qid": "q1", "text": "caf\u00e9 \ud800 end"}
    out = tmp_path / "rows.jsonl"
    with ResumableJsonl(out, key="qid", job="j") as w:
        w.write(odd)
        w.write_many([{"qid": "q2", "text": "caf\u00e9"}])
        w.finish()
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0].isascii() and "café" in lines[1]  # escapes only where needed
    assert [json.loads(ln) for ln in lines] == [odd, {"qid": "q2", "text": "café"}]
    assert json.loads(json_text(odd)) == odd and json_text({"a": "é"}) == '{"a": "é"}'
    write_json_atomic(tmp_path / "doc.json", odd)
    assert json.loads((tmp_path / "doc.json").read_text(encoding="utf-8")) == odd
    assert fingerprint(odd) != fingerprint({"qid": "q1", "text": "caf\u00e9 \ud801 end"})
    assert fingerprint_rows([odd]) == fingerprint_rows([dict(odd)])
    assert fingerprint({"a": "é"}) == fingerprint({"a": "é"})


def test_resumable_jsonl_resume_after_torn_line(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    w = ResumableJsonl(out, job="j1")
    w.write({"id": "a", "v": 1})
    w.write({"id": "b", "v": 2})
    w.close()
    with open(out.with_name("rows.jsonl.partial"), "a") as f:
        f.write('{"id": "c", "v"')  # a kill mid-write
    w = ResumableJsonl(out, job="j1")
    assert w.done == {"a", "b"} and w.resumed == 2
    w.write({"id": "c", "v": 3})
    w.finish()
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]
    with pytest.raises(OutputExistsError):
        ResumableJsonl(out, job="j1")


def test_resumable_jsonl_refuses_other_job(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    w = ResumableJsonl(out, job="j1")
    w.write({"id": "a"})
    w.close()
    with pytest.raises(OutputExistsError, match="other settings"):
        ResumableJsonl(out, job="j2")
    w = ResumableJsonl(out, job="j2", overwrite=True)
    assert w.done == set()
    w.close()


def test_resumable_jsonl_is_written_by_one_run_at_a_time(tmp_path: Path) -> None:
    """A second run of the job while the first writes would skip only the ids written when it looked and
    write the others twice: it is refused in one line, changing nothing, even with overwrite; after the first
    closes, a run resumes; after it finishes, the finished file is refused as usual."""
    out = tmp_path / "rows.jsonl"
    first = ResumableJsonl(out, job="j")
    first.write({"id": "a"})
    for overwrite in (False, True):
        with pytest.raises(OutputBusyError) as refused:
            ResumableJsonl(out, job="j", overwrite=overwrite)
        assert len(str(refused.value).splitlines()) == 1 and str(out) in str(refused.value)
    first.write({"id": "b"})  # the first run goes on, its rows intact
    first.close()
    second = ResumableJsonl(out, job="j")
    assert second.done == {"a", "b"}
    second.write({"id": "c"})
    second.finish()
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a", "b", "c"]
    with pytest.raises(OutputExistsError):
        ResumableJsonl(out, job="j")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]  # no lock file, no partial left


def test_output_lock_is_a_plain_flock_that_ends_with_its_process(tmp_path: Path) -> None:
    """Another process's flock (here a bare Python's) refuses a run; killed, it leaves nothing behind."""
    target = tmp_path / "out"
    target.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()",
                               str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError, match="being written by another run"):
            OutputLock(target, what="output folder")
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(target) as lock:
        assert lock.held
        with pytest.raises(OutputBusyError):  # a second holder in this process too
            OutputLock(target)
    assert not lock.held
    OutputLock(target).release()
    assert os.listdir(target) == []


def test_output_lock_with_wait_says_so_then_waits_for_the_holder(tmp_path: Path) -> None:
    """`wait=True` (a table's writer lock): a second holder calls `waiting()` once, then gets the lock as
    soon as the first lets go, not before."""
    import threading
    import time

    target = tmp_path / "out"
    target.mkdir()
    first = OutputLock(target)
    said: list[str] = []
    got = threading.Event()

    def second() -> None:
        with OutputLock(target, wait=True, waiting=lambda: said.append("waiting")):
            got.set()

    thread = threading.Thread(target=second)
    thread.start()
    deadline = time.monotonic() + 30
    while not said and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert said == ["waiting"] and not got.is_set()  # told, and still waiting
    first.release()
    thread.join(30)
    assert got.is_set() and said == ["waiting"]
    with OutputLock(target, wait=True, waiting=lambda: said.append("again")):  # free: no waiting
        pass
    assert said == ["waiting"] and os.listdir(target) == []


def test_a_writability_probe_left_by_a_killed_process_is_cleaned_up(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Output checks create and remove a probe file; a process killed in between leaves it, and the next
    run's clean_stale_temps must recognise it as a dead process's temporary file."""
    import qwen_embed.files as files

    with monkeypatch.context() as m:
        m.setattr(files.os, "getpid", lambda: 4_194_304 + 12_345)  # above Linux's pid_max: never alive
        m.setattr(files.os, "unlink", lambda path: None)  # killed before the probe was removed
        files.check_output_file(tmp_path / "out.jsonl")
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert len(left) == 1
    assert files.clean_stale_temps(tmp_path) == left
    assert not any(tmp_path.iterdir())
