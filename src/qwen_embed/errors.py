"""One small exception hierarchy.

Every error a user can cause derives from `QwenEmbedError`; its message says the value, the limit and
the fix. The CLI prints such an error as one line and exits non-zero; anything else is a bug, except a
file system refusal (an OSError: disk full, read-only, permissions), which `describe_os_error` turns
into one line too.
"""

from __future__ import annotations

import errno
import numbers
import os
import re
from typing import TypeGuard


class QwenEmbedError(Exception):
    """Base class of every error qwen-embed raises on purpose.

    `param` names the argument the error concerns (e.g. "dim"), so that an outer layer (the HTTP
    server, the CLI) can point at its own spelling of that argument without editing the message."""

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self.param = param


class InputError(QwenEmbedError, ValueError):
    """Bad user input: empty list, empty or non-string text, dim out of range, unknown template..."""


class ConfigError(QwenEmbedError):
    """config.json missing, unreadable, or of an unsupported architecture."""


class WeightsError(QwenEmbedError):
    """Weights missing, truncated or not matching the model (missing / unexpected keys, shapes)."""


class ModelNotFoundError(QwenEmbedError):
    """A hub id that cannot be resolved (offline, unknown id) or a path that does not exist."""


class TokenizerError(QwenEmbedError):
    """tokenizer.json missing or lacking a token the model needs (end token, "yes"/"no")."""


class ModelOutputError(QwenEmbedError):
    """The model produced non-finite values (NaN / inf): broken weights or config, never a vector to keep."""


# What str.splitlines breaks at: a message printed as one line shows them as escapes (a path may hold one).
_LINE_BREAKS = {ord(c): c.encode("unicode_escape").decode("ascii")
                for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def one_line(message: str) -> str:
    """`message` with each line break written as its escape (`\\n`), so that it prints as one line whatever
    the values it quotes hold (a file name with a newline in it)."""
    return message.translate(_LINE_BREAKS)


def whole_number(value: object, low: int | None = None) -> int | None:
    """The one rule for a count given by a user: a whole number of any integer type (Python's int, numpy's
    `np.int64(2)` read from an array or a shape), never a bool (True is not a count) nor a float (2.0), and
    with `low` at least `low`. Returns it as the Python int it is, or None when it is not one (the caller
    words the message)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    n = int(value)
    return n if low is None or n >= low else None


def is_whole(value: object, low: int | None = None) -> TypeGuard[int]:
    """True when `value` is a Python int (not a bool) and, with `low`, at least `low`. Strict about the type,
    for callers that keep the value as given; a count from the user goes through `whole_number`, which also
    takes numpy's integers and returns the int."""
    return isinstance(value, int) and whole_number(value, low) is not None


# -- file system refusals as one line --------------------------------------------------------------------
_OS_FIXES = {
    errno.ENOSPC: "the disk is full; free space or write to another disk",
    errno.EDQUOT: "the disk quota is used up; free space or write to another disk",
    errno.EFBIG: "the file grew past the file-size limit (`ulimit -f`) or what the file system holds; raise the "
                 "limit or write to another disk",
    errno.EROFS: "the file system is read-only; write to another folder",
    errno.EACCES: "permission denied; choose a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write to, or fix its permissions",
    errno.ENOENT: "no such file or folder (deleted or moved while the command ran?); check the path and run again",
    errno.EIO: "an input/output error (a full or failing disk, a file-size limit, a network file system); check "
               "the disk and run again",
    errno.EMFILE: "too many open files; raise `ulimit -n`",
}
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")  # numpy's tofile on a full disk: no errno
_NATIVE_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust's io::Error prints (safetensors, Lance)
_TORCH_WRITER = "inline_container.cc"  # torch.save's zip writer: a failed write, its errno lost


def native_os_error(e: BaseException, path: str | os.PathLike[str]) -> OSError | None:
    """The OSError behind a native writer's failure, naming `path`: safetensors and Lance keep only its text
    (`File too large (os error 27)`), torch.save only `[enforce fail at inline_container.cc ...]` (taken
    as EIO). None when `e` is none of these (an OSError already, or another error)."""
    if isinstance(e, OSError) or not isinstance(e, Exception):
        return None
    text = str(e)
    m = _NATIVE_OS_ERROR.search(text)
    if m is not None:
        code = int(m.group(1))
        return OSError(code, os.strerror(code), os.fspath(path))
    if isinstance(e, RuntimeError) and _TORCH_WRITER in text:
        return OSError(errno.EIO, "torch.save could not write its file", os.fspath(path))
    return None


def describe_os_error(e: OSError) -> str | None:
    """One line for a file system refusal (disk full, file too large, read-only, permissions, a path gone):
    what happened, the path when known, and the fix; None for an OSError that is not one (a bug: re-raise)."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno in _OS_FIXES:
        return f"{e.strerror or os.strerror(e.errno)}{where}: {_OS_FIXES[e.errno]}."
    if e.errno is None and _SHORT_WRITE.match(str(e)):
        return f"a write stopped short ({e}){where}: the disk is probably full; free space or write to another disk."
    if e.filename is not None:
        return f"{e.strerror or e}{where}; choose another path or free the resource."
    return None
