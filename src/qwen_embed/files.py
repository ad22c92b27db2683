"""Files and jobs: checked, atomic outputs, fingerprints and resumable JSONL, for every command.

One rule set, used by every command that writes or resumes (the CLI, eval, training, mining, merging,
synthetic data, indexing):

- **Check before work.** `check_output_file` / `check_output_dir` run before any model is loaded: the
  parent must be an existing folder we can write to, a file output must not be a folder (and the
  reverse), and something that exists is refused unless the caller passes `overwrite=True`
  (`--overwrite`). `-` (stdout) always passes.
- **Never lose what we did not create.** `atomic_file` writes a temporary sibling and renames it over
  the target only on success. `atomic_dir` builds a folder in a temporary sibling; if the target
  does not exist it is renamed into place, and if it exists (only with `overwrite=True`) each entry
  the command wrote replaces the entry of the same name, one at a time, and nothing else in the
  folder is touched. An output folder that holds one of the command's inputs (`merge-lora -o runs/x`
  with the adapter in `runs/x/adapter`) is therefore safe: the adapter is not one of the names written.
- **No leftovers.** Temporary siblings are named `.{name}.tmp-{pid}-{random}`; a failure removes
  them, and `clean_stale_temps` removes those whose process is gone (a SIGKILL mid-write). A native
  writer's failure inside them (safetensors, torch.save on a full disk) comes out as the OSError it is
  (`errors.native_os_error`), which the CLI prints as one line.
- **Fingerprints** are SHA-256 over canonical JSON (`fingerprint`, `fingerprint_rows` for a stream of
  rows) or over a file's bytes (`file_digest`), so resume keys and cache keys are computed one way
  everywhere.
- **Resumable JSONL** (`ResumableJsonl`): append-only rows keyed by an id, flushed as they come; on
  reopen the ids already written are known (a torn last line from a kill is dropped), a job whose
  fingerprint differs is refused unless overwritten, and `finish` renames the partial file into place.
- **One writer at a time.** A resumable output (`ResumableJsonl`'s partial file, an `embed-corpus`
  folder) is held with `OutputLock` while a run writes it: a second run of the same job started
  meanwhile would skip only the ids the first had written when it looked, and write the rest again;
  it is refused in one line instead (`OutputBusyError`), and can resume once the first is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InputError, native_os_error


class OutputExistsError(InputError):
    """An output file or folder exists and the command was not told to overwrite it."""


class OutputBusyError(InputError):
    """Another run is writing the output this run would write (it holds its `OutputLock`)."""


class OutputLock:
    """An advisory lock (`flock`) on an output file or folder, held while one run writes it.

    Taken without waiting: a second holder, in this process or another, gets an `OutputBusyError` naming
    the output, and nothing is changed. With `wait`, it waits for the holder instead, calling `waiting()`
    first (to say so). The lock belongs to the open file, so it ends with `release()`, the `with` block,
    or the process (a killed run leaves nothing to clean up, and no file is added)."""

    def __init__(self, path: str | os.PathLike[str], *, what: str = "output", wait: bool = False,
                 waiting: Callable[[], object] | None = None) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    raise OutputBusyError(f"{what} {self.path} is being written by another run right now; wait for "
                                          "it to end (a later run resumes from what it wrote), or choose another "
                                          "output.") from None
                if waiting is not None:
                    waiting()
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let another run write the output (closing the file ends the lock); safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


# -- checks, before any work ---------------------------------------------------------------------
def _check_parent(target: Path, what: str) -> None:
    parent = target.parent
    if not parent.exists():
        raise InputError(f"{what} {target}: its folder {parent} does not exist; create it first.")
    if not parent.is_dir():
        raise InputError(f"{what} {target}: {parent} is a file, not a folder; choose a path inside a folder.")
    if not _can_create_in(parent):
        raise InputError(f"{what} {target}: folder {parent} is not writable; choose another path.")


def _can_create_in(folder: Path) -> bool:
    """Whether a file can really be created in `folder` (root ignores mode bits; /proc refuses anyway)."""
    probe = temp_sibling(folder / "qwen-embed-probe")  # a temp name: clean_stale_temps removes one a kill left
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return True


def check_output_file(path: str | os.PathLike[str], *, overwrite: bool = False, what: str = "output",
                      flag: str = "--overwrite") -> Path | None:
    """Check a file output before work starts; None for '-' (standard output).

    Refuses: a folder, a missing or read-only parent, a path through a file, and (unless
    `overwrite`) a file that already exists.
    """
    if os.fspath(path) == "-":
        return None
    target = Path(path)
    if target.is_dir():
        raise InputError(f"{what} {target} is a folder; give a file name.")
    _check_parent(target, what)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"{what} {target} already exists; pass {flag} to replace it, or choose "
                                    f"another name.")
        if not os.access(target, os.W_OK) and not target.is_symlink():
            raise InputError(f"{what} {target} exists and is not writable.")
    return target


def check_output_dir(path: str | os.PathLike[str], *, overwrite: bool = False, what: str = "output folder",
                     flag: str = "--overwrite") -> Path:
    """Check a folder output before work starts: refuses a file, a missing parent, and (unless
    `overwrite`) a folder that exists and is not empty."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(f"{what} {target} is a file, not a folder; choose a folder path.")
    resolved = target.resolve()
    if resolved == Path(resolved.anchor):
        raise InputError(f"{what} {target} is the file system root; choose a folder for the output.")
    _check_parent(resolved, what)
    if target.is_dir():
        if not _can_create_in(target):
            raise InputError(f"{what} {target} is not writable; choose another path.")
        if any(target.iterdir()) and not overwrite:
            raise OutputExistsError(f"{what} {target} exists and is not empty; choose a new folder, or pass "
                                    f"{flag} to replace only the files this command writes there.")
    return target


# -- temporary siblings --------------------------------------------------------------------------
_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>\.[^.]*)?$")


def temp_sibling(target: Path, suffix: str = "") -> Path:
    """A fresh hidden name beside `target` that records our pid (see clean_stale_temps)."""
    return target.parent / f".{target.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_path(path: Path) -> None:
    """Remove a file, link or folder that we created (never follows a link into a folder)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def clean_stale_temps(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove temporary siblings left in `folder` by processes that died (optionally only for `name`)."""
    removed: list[Path] = []
    base = Path(folder)
    if not base.is_dir():
        return removed
    for entry in base.iterdir():
        m = _TEMP.match(entry.name)
        if not m or (name is not None and m["name"] != name) or _pid_alive(int(m["pid"])):
            continue
        remove_path(entry)
        removed.append(entry)
    return removed


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- atomic outputs ------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", *, overwrite: bool = True) -> Iterator[IO[Any]]:
    """Write to a temporary sibling of `path` and rename it into place only on success.

    `overwrite=False` refuses an existing target (checked again at the rename, so a file that
    appeared meanwhile is not lost).
    """
    target = Path(path)
    check_output_file(target, overwrite=overwrite)
    tmp = temp_sibling(target)
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if not overwrite and (target.exists() or target.is_symlink()):
            raise OutputExistsError(f"output {target} appeared while it was being written; it was left as it is.")
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _raise_native(e, target)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> Path:
    """Write a whole text file atomically."""
    with atomic_file(path, overwrite=overwrite) as f:
        f.write(text)
    return Path(path)


def json_text(obj: Any, **options: Any) -> str:
    """`json.dumps` with the text as it is (ensure_ascii=False), unless it holds a lone surrogate (what a JSON
    escape such as \\ud800 decodes to), which UTF-8 cannot hold: then with ASCII escapes, which read back
    exactly."""
    text = json.dumps(obj, ensure_ascii=False, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, **options)
    return text


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, overwrite: bool = True,
                      indent: int | None = 2) -> Path:
    """Write a JSON document atomically (UTF-8, a final newline)."""
    return write_text_atomic(path, json_text(obj, indent=indent) + "\n", overwrite=overwrite)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], *, overwrite: bool = False,
               as_a_set: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Build a folder output in a temporary sibling (yielded) and move it into place on success.

    A new target is renamed into place whole. An existing target is only touched with `overwrite`
    (checked here as well as by `check_output_dir`): then each top-level entry written replaces the
    entry of the same name, and every other entry of the folder is left as it was, except the entries
    that `as_a_set(name)` says are written as a set (a checkpoint's weight files: one file or shards and
    their index): those not written this time are removed once the new ones are in place, so the folder
    never holds two sets.
    """
    target = check_output_dir(path, overwrite=overwrite)
    resolved = target.resolve()
    clean_stale_temps(resolved.parent, resolved.name)
    tmp = temp_sibling(resolved)
    tmp.mkdir()
    try:
        yield tmp
        _place_dir(tmp, resolved, overwrite=overwrite, as_a_set=as_a_set)
    except BaseException as e:
        remove_path(tmp)
        _raise_native(e, target)
        raise


def _raise_native(e: BaseException, target: Path) -> None:
    """A native writer's failure (safetensors, torch.save) inside an atomic output, re-raised as its OSError."""
    err = native_os_error(e, target)
    if err is not None:
        raise err from e


def _place_dir(tmp: Path, target: Path, *, overwrite: bool, as_a_set: Callable[[str], bool] | None) -> None:
    try:
        os.rename(tmp, target)  # fails when target exists (and is not an empty folder)
        _fsync_dir(target.parent)
        return
    except OSError:
        if not target.is_dir():
            raise
    if any(target.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {target} appeared while it was being written; it was left as "
                                f"it is and nothing was written.")
    written = sorted(tmp.iterdir())
    for entry in written:
        dest = target / entry.name
        old = None
        if dest.exists() or dest.is_symlink():
            old = temp_sibling(dest)
            os.rename(dest, old)
        os.rename(entry, dest)
        if old is not None:
            remove_path(old)
    if as_a_set is not None:
        names = {e.name for e in written}
        for stale in sorted(e for e in target.iterdir() if as_a_set(e.name) and e.name not in names):
            remove_path(stale)
    _fsync_dir(target)
    tmp.rmdir()


# -- fingerprints --------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    return repr(obj)


def fingerprint(*parts: Any) -> str:
    """SHA-256 (hex) of the parts as canonical JSON: dataclasses, dicts, lists and paths allowed."""
    payload = json.dumps(_jsonable(list(parts)), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()  # a lone surrogate hashes too


def fingerprint_rows(rows: Iterable[Any]) -> str:
    """SHA-256 (hex) of many rows, each as canonical JSON on its own line, hashed as they stream by (for a
    corpus too large to hold as one JSON document); pass the result to `fingerprint` with the settings."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(_jsonable(row), sort_keys=True, separators=(",", ":"),
                            ensure_ascii=False).encode("utf-8", "surrogatepass"))
        h.update(b"\n")
    return h.hexdigest()


def file_digest(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# -- resumable JSONL -----------------------------------------------------------------------------
def recover_jsonl(path: str | os.PathLike[str], accept: Callable[[Any], object] | None = None) -> list[Any]:
    """The rows of an append-only JSONL file up to its first torn or unreadable line, which a kill
    mid-write leaves; the file is cut back to those rows. `accept(row)` may raise ValueError / KeyError /
    TypeError to count a parsed row as unreadable too; its results are returned in place of the rows."""
    rows: list[Any] = []
    good = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.endswith(b"\n"):
                break  # torn by a kill mid-write
            try:
                row = json.loads(raw)
                rows.append(accept(row) if accept is not None else row)
            except (ValueError, KeyError, TypeError):
                break
            good += len(raw)
    with open(path, "r+b") as f:
        f.truncate(good)
    return rows


def resumable_files(name: str) -> tuple[str, str, str]:
    """The names a `ResumableJsonl` at `name` writes: `name` once finished, `name.partial` (the rows) and
    `name.partial.meta.json` (the job's fingerprint) while it runs."""
    return name, f"{name}.partial", f"{name}.partial.meta.json"


class ResumableJsonl:
    """Append-only JSONL rows keyed by `key`, resumable after a crash, renamed into place at the end.

    Rows go to `PATH.partial` (flushed per `write`) with a sidecar `PATH.partial.meta.json` holding the
    job fingerprint. Reopening the same job reads the ids already written (a torn last line is cut
    off) so the caller skips them; another job's partial file is refused unless `overwrite`.
    `finish()` renames the partial file to PATH. A finished PATH is refused unless `overwrite`.

        with ResumableJsonl(out, key="id", job=fingerprint(settings)) as w:
            for row in rows:
                if row["id"] not in w.done:
                    w.write(row)
            w.finish()
    """

    def __init__(self, path: str | os.PathLike[str], *, key: str = "id", job: str = "",
                 overwrite: bool = False) -> None:
        self.path = Path(path)
        check_output_file(self.path, overwrite=overwrite)
        self.key = key
        _, partial, meta = resumable_files(self.path.name)
        self.partial, self.meta = self.path.with_name(partial), self.path.with_name(meta)
        self.done: set[Any] = set()
        self.resumed = 0
        existed = self.partial.exists()
        if existed and (old := self._read_meta()) != job and not overwrite:
            raise OutputExistsError(f"{self.partial} belongs to a run with other settings (fingerprint "
                                    f"{str(old)[:12]} != {job[:12]}); pass --overwrite to start again, or "
                                    f"re-run with the same settings to resume.")
        self._lock: OutputLock | None = None
        self._f: IO[str] | None = open(self.partial, "a", encoding="utf-8")  # noqa: SIM115
        try:
            self._lock = OutputLock(self.partial, what=f"output {self.path} (its partial file)")
            if not overwrite and self.path.exists():  # another run finished it since the check above
                check_output_file(self.path)
            if existed and self._read_meta() == job:
                self._recover()
            else:  # a new run, or another run's rows (only with overwrite): start the file again
                self._f.truncate(0)
                write_json_atomic(self.meta, {"job": job})
        except BaseException:
            self.close()
            if not existed and self.partial.exists() and self.partial.stat().st_size == 0:
                self.partial.unlink()  # the empty file this call made; another run's is never removed
            raise

    def _read_meta(self) -> str | None:
        try:
            value = json.loads(self.meta.read_text(encoding="utf-8")).get("job")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    def _recover(self) -> None:
        for row in recover_jsonl(self.partial):
            self.done.add(row.get(self.key) if isinstance(row, dict) else None)
        self.resumed = len(self.done)

    def rows(self) -> Iterator[dict[str, Any]]:
        """The rows written so far (those of an earlier run first, when resumed)."""
        if self._f is not None:
            self._f.flush()
        with open(self.partial, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                if isinstance(row, dict):
                    yield row

    def __enter__(self) -> ResumableJsonl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (a dict holding `key`) and flush it."""
        assert self._f is not None, "write after finish/close"
        self._f.write(json_text(row) + "\n")
        self._f.flush()
        self.done.add(row.get(self.key))

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows, flushing once."""
        assert self._f is not None, "write after finish/close"
        for row in rows:
            self._f.write(json_text(row) + "\n")
            self.done.add(row.get(self.key))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        """Close the partial file (the job stays resumable) and let another run write it."""
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._lock is not None:
            self._lock.release()

    def finish(self) -> Path:
        """Close and rename the partial file into place (then another run may write PATH's partial file)."""
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
        try:  # the lock is held until the finished file is in place
            os.replace(self.partial, self.path)
            self.meta.unlink(missing_ok=True)
            _fsync_dir(self.path.parent)
        finally:
            self.close()
        return self.path
