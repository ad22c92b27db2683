"""File system faults (issue 23.12): a full disk, a file-size limit, a read-only folder, a database deleted
while `index` runs. Each ends in one line and status 2, and leaves no partial output behind.

Faults are injected in process (a file whose writes fail after some bytes, a folder removed between two
batches) or made real in a child process (`RLIMIT_FSIZE`, which makes the kernel refuse writes with
EFBIG). chmod cannot make a folder read-only for root, so that test runs only as another user.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from qwen_embed import files
from qwen_embed.cli import main
from qwen_embed.errors import describe_os_error
from qwen_embed.store.lance import lance_io_error
from tests.threads import subprocess_env

LINES = "".join(f"line {i} about the tides and the moon\n" for i in range(40))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("code", "fix"), [
    (errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "quota"), (errno.EFBIG, "ulimit -f"),
    (errno.EROFS, "read-only"), (errno.EACCES, "permission denied"), (errno.ENOENT, "deleted or moved"),
    (errno.EIO, "input/output error"),
])
def test_each_file_system_refusal_is_one_line_with_the_fix(code: int, fix: str) -> None:
    line = describe_os_error(OSError(code, os.strerror(code), "/data/out.jsonl"))
    assert line is not None and fix in line and "(/data/out.jsonl)" in line and "\n" not in line
    assert describe_os_error(OSError(code, os.strerror(code))) is not None  # a failed write() names no file
    assert "disk is probably full" in str(describe_os_error(OSError("12800 requested and 4968 written")))
    assert describe_os_error(OSError(errno.ECONNREFUSED, "refused")) is None  # not a file system fault: a bug


def test_lances_io_failures_become_the_os_errors_they_are(tmp_path: Path) -> None:
    """The texts Lance 13 raised when a file-size limit cut its writes and when the folder was deleted."""
    seen = {
        "lance error: LanceError(IO): File too large (os error 27), /root/.cargo/registry/src/index.crates.io-1949cf8c"
        "6b5b557f/lance-file-13.0.0/src/writer/structural.rs:258:9": errno.EFBIG,
        "External error: Not found: tmp/h2/db3/documents.lance/data/0011.lance, /root/.cargo/registry/src/index.crate"
        "s.io-1949cf8c6b5b557f/lance-io-13.0.0/src/local.rs:273:40": errno.ENOENT,
        "External error: LanceError(IO): Generic LocalFileSystem error: failed to fill whole buffer, /rustc/2d8144b78"
        "80597b6e6d3dfd63a9a9efae3f533d3/library/core/src/ops/function.rs:250:5": errno.EIO,
    }
    for text, code in seen.items():
        err = lance_io_error(RuntimeError(text), tmp_path)
        assert err is not None and err.errno == code and err.filename == str(tmp_path)
        assert ".rs:" not in str(err)
    assert lance_io_error(RuntimeError("Schema error: no field named chunkk"), tmp_path) is None
    assert lance_io_error(PermissionError(errno.EACCES, "denied", "x"), tmp_path) is None  # already an OSError


def test_native_writers_failures_are_os_errors_and_leave_nothing(tmp_path: Path) -> None:
    """safetensors keeps only the text of its io::Error; torch.save only an enforce failure of its zip writer."""
    from qwen_embed.errors import native_os_error

    text = "Error while serializing: I/O error: No space left on device (os error 28)"
    err = native_os_error(RuntimeError(text), tmp_path / "m")
    assert err is not None and err.errno == errno.ENOSPC and err.filename == str(tmp_path / "m")
    err = native_os_error(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), "x")
    assert err is not None and err.errno == errno.EIO
    assert native_os_error(RuntimeError("shape mismatch"), "x") is None
    assert native_os_error(OSError(errno.ENOSPC, "full"), "x") is None  # already one
    with pytest.raises(OSError, match="No space left on device") as caught, files.atomic_dir(tmp_path / "model") as d:
        (d / "part").write_text("half")
        raise RuntimeError(text)
    assert caught.value.errno == errno.ENOSPC and list(tmp_path.iterdir()) == []


class FullDisk:
    """A file whose writes fail with `code` once `room` bytes were written (what a full disk does)."""

    def __init__(self, real: Any, room: int, code: int) -> None:
        self.real, self.room, self.code = real, room, code

    def write(self, data: Any) -> int:
        self.room -= len(data)
        if self.room < 0:
            raise OSError(self.code, os.strerror(self.code))
        return int(self.real.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.real.close()


@pytest.mark.parametrize(("suffix", "code"), [(".jsonl", errno.ENOSPC), (".npy", errno.ENOSPC),
                                              (".json", errno.EROFS), (".parquet", errno.EDQUOT)])
def test_a_write_failing_midway_is_one_line_and_leaves_nothing(tmp_path: Path, tiny_embedding_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str], suffix: str,
                                                               code: int) -> None:
    (tmp_path / "in.txt").write_text(LINES)
    real_open = open
    monkeypatch.setattr(files, "open", lambda *a, **k: FullDisk(real_open(*a, **k), 4000, code), raising=False)
    out = tmp_path / f"out{suffix}"
    assert main(["embed", str(tmp_path / "in.txt"), "-o", str(out), "--model", str(tiny_embedding_path),
                 "--device", "cpu"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith("qwen-embed embed: error: ") and os.strerror(code) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]  # no output, no temporary sibling


def index_argv(tmp_path: Path, model: Path, *extra: str, size: int = 1) -> list[str]:
    folder = tmp_path / "docs"
    folder.mkdir(exist_ok=True)
    for i in range(6):
        (folder / f"d{i}.txt").write_text(LINES * size)
    return ["index", str(folder), "--db", str(tmp_path / "db"), "--model", str(model), "--device", "cpu", *extra]


def test_a_database_deleted_mid_run_is_one_line(tmp_path: Path, tiny_embedding_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_embed.retrieval.index import Index

    real = Index._embed
    calls = {"n": 0}

    def then_delete(self: Index, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the first batch is committed: another process removes the database
            shutil.rmtree(tmp_path / "db")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Index, "_embed", then_delete)
    assert main(index_argv(tmp_path, tiny_embedding_path, "--batch-docs", "2")) == 2
    line = one_line(capsys.readouterr().err)
    assert calls["n"] == 2 and str(tmp_path / "db") in line and "deleted or moved" in line, line


def test_a_read_only_database_folder_is_one_line(tmp_path: Path, tiny_embedding_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Injected EROFS on the first write into the folder (its writer lock), as a read-only mount gives."""
    import qwen_embed.store.lance as lance_store

    argv = index_argv(tmp_path, tiny_embedding_path)
    assert main(argv) == 0
    (tmp_path / "docs" / "d9.txt").write_text("a new document to write\n")

    def read_only(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(lance_store, "open", read_only, raising=False)
    capsys.readouterr()
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "Read-only file system" in line and ".documents.write.lock" in line and "another folder" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a chmod 0555 folder; the injected EROFS test covers it")
def test_a_chmod_read_only_database_folder_is_one_line(tmp_path: Path, tiny_embedding_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    argv = index_argv(tmp_path, tiny_embedding_path)
    assert main(argv) == 0
    (tmp_path / "docs" / "d9.txt").write_text("a new document to write\n")
    db = tmp_path / "db"
    modes = {p: p.stat().st_mode for p in [db, *db.rglob("*")] if p.is_dir()}
    try:
        for p in modes:
            p.chmod(0o555)
        capsys.readouterr()
        assert main(argv) == 2
        assert "Permission denied" in one_line(capsys.readouterr().err)
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


@pytest.mark.slow
def test_a_real_file_size_limit_is_one_line_for_every_writer(tmp_path: Path, tiny_embedding_path: Path) -> None:
    """RLIMIT_FSIZE in a child: the kernel refuses writes past 20 kB with EFBIG (numpy's writer reports a short
    write without an errno; Lance a RuntimeError naming os error 27)."""
    (tmp_path / "in.txt").write_text(LINES * 3)
    argv = index_argv(tmp_path, tiny_embedding_path, "--batch-docs", "3", size=10)  # 60 kB of text a batch
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        from qwen_embed.cli import main
        model = {str(tiny_embedding_path)!r}
        for out in ("out.jsonl", "out.npy"):
            print(main(["embed", "in.txt", "-o", out, "--model", model, "--device", "cpu"]), flush=True)
        print(main({argv!r}), flush=True)
        import torch
        from safetensors.torch import save_file
        from qwen_embed.files import atomic_dir
        from qwen_embed.train.checkpoints import CheckpointStore
        big = {{"w": torch.zeros(20_000)}}  # 80 kB
        for name, write in [("safetensors", lambda d: save_file(big, str(d / "model.safetensors"))),
                            ("torch.save", lambda d: torch.save(big, d / "state.pt"))]:
            try:
                with atomic_dir(name) as d:
                    write(d)
            except OSError as e:
                print(name, e.errno, e.filename, flush=True)
        try:
            CheckpointStore(__import__("pathlib").Path("ckpts")).save(2, lambda d: None, big)
        except OSError as e:
            print("checkpoint", e.errno, flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=subprocess_env(), capture_output=True,
                          text=True, timeout=240)
    assert proc.stdout.splitlines() == ["2", "2", "2", f"safetensors {errno.EFBIG} safetensors",
                                        f"torch.save {errno.EIO} torch.save", f"checkpoint {errno.EIO}"], \
        proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and "Traceback" not in proc.stderr, proc.stderr
    assert "File too large" in lines[0] and "disk is probably full" in lines[1] and str(tmp_path / "db") in lines[2]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out", "safet", ".safet", ".torch"))]
    assert leftovers == [] and list((tmp_path / "ckpts").iterdir()) == []
