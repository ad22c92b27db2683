"""`qwen_embed.errors`: the exception hierarchy and file system refusals as one line.

References: the standard library's `errno` codes and `os.strerror` texts (and real OSErrors the OS raises
here: a missing file, a folder opened as a file), and the contract in the module docstring and DESIGN.md
(House style 8, 10): every error a user can cause derives from `QwenEmbedError` and carries the parameter
it concerns; a file system refusal becomes one line giving what happened, the path and the fix, and an
OSError that is not such a refusal gives None (a bug: re-raised). `native_os_error` recovers the errno that
Rust writers (safetensors, Lance: "... (os error N)") and torch.save ("inline_container.cc") keep only in
their text.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import errors
from qwen_embed.errors import (
    ConfigError,
    InputError,
    ModelNotFoundError,
    ModelOutputError,
    QwenEmbedError,
    TokenizerError,
    WeightsError,
    describe_os_error,
    native_os_error,
)
from qwen_embed.files import OutputExistsError

USER_ERRORS = [InputError, ConfigError, WeightsError, ModelNotFoundError, TokenizerError, ModelOutputError,
               OutputExistsError]


# -- the hierarchy ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", USER_ERRORS)
def test_every_user_error_is_a_qwen_embed_error_with_param(cls: type[QwenEmbedError]) -> None:
    e = cls("dim=5000 is above the model's 1024; pass a smaller dim.", param="dim")
    assert isinstance(e, QwenEmbedError) and isinstance(e, Exception)
    assert e.param == "dim" and str(e) == "dim=5000 is above the model's 1024; pass a smaller dim."
    assert cls("x").param is None
    with pytest.raises(QwenEmbedError):
        raise e


def test_input_errors_are_value_errors() -> None:
    """Code that catches ValueError (a bad argument) also catches an InputError, and its subclasses."""
    assert issubclass(InputError, ValueError) and issubclass(OutputExistsError, InputError)
    assert not issubclass(ConfigError, ValueError)


def test_param_is_keyword_only_and_args_kept() -> None:
    e = InputError("a", "b", param="texts")
    assert e.args == ("a", "b") and e.param == "texts"
    with pytest.raises(TypeError):
        InputError("a", param="x", other=1)  # type: ignore[call-arg]


# -- file system refusals -----------------------------------------------------------------------------------
TABLE = [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.EIO,
         errno.EMFILE]


@pytest.mark.parametrize("code", TABLE, ids=[errno.errorcode[c] for c in TABLE])
@pytest.mark.parametrize("filename", ["/data/out/part.parquet", None])
def test_known_refusal_is_one_line_with_strerror_path_and_fix(code: int, filename: str | None) -> None:
    e = OSError(code, os.strerror(code), filename)
    line = describe_os_error(e)
    assert line is not None and "\n" not in line and line.endswith(".")
    what, _, fix = line.partition(": ")
    assert what == os.strerror(code) + (f" ({filename})" if filename else "")
    assert fix and ";" in fix  # what happened; what to do


@pytest.mark.parametrize("code", TABLE, ids=[errno.errorcode[c] for c in TABLE])
def test_missing_strerror_taken_from_the_os(code: int) -> None:
    line = describe_os_error(OSError(code, "", "/x"))
    assert line is not None and line.startswith(f"{os.strerror(code)} (/x): ")


def test_real_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "f.txt"
    with pytest.raises(OSError) as info:
        path.open("w")
    assert info.value.errno == errno.ENOENT
    line = describe_os_error(info.value)
    assert line is not None and line.startswith(f"{os.strerror(errno.ENOENT)} ({path}): ") and "\n" not in line


def test_real_error_outside_the_table_with_a_path(tmp_path: Path) -> None:
    """A folder opened as a file (EISDIR): no fix of its own, still one line naming the path."""
    with pytest.raises(OSError) as info:
        tmp_path.open("w")
    assert info.value.errno == errno.EISDIR
    assert describe_os_error(info.value) == (f"{os.strerror(errno.EISDIR)} ({tmp_path}); choose another path or "
                                             "free the resource.")


@pytest.mark.parametrize("text", ["4096 requested and 0 written", "1 requested and 0 written"])
def test_numpy_short_write_is_a_full_disk(text: str) -> None:
    line = describe_os_error(OSError(text))
    assert line == f"a write stopped short ({text}): the disk is probably full; free space or write to another disk."


FULL = Path("/dev/full")  # Linux: every write fails with ENOSPC


@pytest.mark.skipif(not FULL.exists(), reason="/dev/full (a device that is always full) is Linux-only")
def test_real_full_disk_from_numpy_and_from_python() -> None:
    """The OS as reference: numpy's tofile on a full device raises an errno-less text (items, not bytes), a Python
    write ENOSPC."""
    with pytest.raises(OSError) as numpy_info:
        np.zeros(10_000).tofile(FULL)
    line = describe_os_error(numpy_info.value)
    assert line is not None and line.startswith("a write stopped short (10000 requested and 0 written)")
    with pytest.raises(OSError) as py_info, FULL.open("wb") as f:
        f.write(b"x" * 10_000)
        f.flush()
    assert py_info.value.errno == errno.ENOSPC
    assert describe_os_error(py_info.value) == (f"{os.strerror(errno.ENOSPC)}: the disk is full; free space or "
                                                "write to another disk.")


@pytest.mark.parametrize("e", [
    OSError("something else"),
    OSError("4096 requested and 0 written, then more"),
    ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET)),
    OSError(errno.EINVAL, os.strerror(errno.EINVAL)),
    OSError(),
], ids=["text", "not-short-write", "econnreset", "einval-no-path", "bare"])
def test_other_os_errors_are_bugs(e: OSError) -> None:
    assert describe_os_error(e) is None


# -- native writers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.EFBIG, errno.ENOSPC, errno.EACCES, errno.EROFS])
@pytest.mark.parametrize("kind", [RuntimeError, ValueError, Exception])
def test_native_os_error_from_rust_text(code: int, kind: type[Exception]) -> None:
    e = kind(f"Error while serializing: IoError({os.strerror(code)} (os error {code}))")
    got = native_os_error(e, Path("/out/model.safetensors"))
    assert isinstance(got, OSError)
    assert (got.errno, got.strerror, got.filename) == (code, os.strerror(code), "/out/model.safetensors")
    line = describe_os_error(got)
    assert line is not None and line.startswith(f"{os.strerror(code)} (/out/model.safetensors): ")


def test_native_os_error_first_code_wins() -> None:
    got = native_os_error(RuntimeError("(os error 28) then (os error 13)"), "/p")
    assert got is not None and got.errno == errno.ENOSPC


def test_native_os_error_from_torch_save() -> None:
    e = RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 64 vs 0")
    got = native_os_error(e, "/out/ckpt.pt")
    assert got is not None and (got.errno, got.filename) == (errno.EIO, "/out/ckpt.pt")
    line = describe_os_error(got)
    assert line is not None and line.startswith("torch.save could not write its file (/out/ckpt.pt): ")


@pytest.mark.parametrize("e", [
    OSError(errno.ENOSPC, "No space left on device"),  # already an OSError: nothing to recover
    ValueError("inline_container.cc mentioned in a ValueError"),  # only torch.save's RuntimeError means EIO
    RuntimeError("no code here"),
    RuntimeError("os error 28 without parentheses"),
    KeyboardInterrupt(),
    SystemExit(1),
], ids=["oserror", "valueerror-torch-text", "no-code", "no-parens", "keyboardinterrupt", "systemexit"])
def test_native_os_error_none_for_other_errors(e: BaseException) -> None:
    assert native_os_error(e, "/p") is None


def test_every_fix_in_the_table_is_one_sentence() -> None:
    """The table itself: one entry per errno above, each fix one line without a final period (added once)."""
    assert sorted(errors._OS_FIXES) == sorted(TABLE)
    for code, fix in errors._OS_FIXES.items():
        assert fix and "\n" not in fix and not fix.endswith("."), (errno.errorcode[code], fix)


@pytest.mark.parametrize(("value", "low", "whole"), [
    (0, None, True), (-3, None, True), (3, 1, True), (1, 1, True), (0, 1, False), (2**70, 1, True),
    (True, None, False), (False, 0, False),  # a bool is not a count
    (1.0, None, False), ("3", None, False), (None, None, False), (3.5, 1, False),
])
def test_is_whole_is_an_int_not_a_bool_at_least_low(value: object, low: int | None, whole: bool) -> None:
    from qwen_embed.errors import is_whole

    assert is_whole(value, low) is whole


def test_one_line_escapes_every_line_break_that_splitlines_knows() -> None:
    from qwen_embed.errors import one_line

    breaks = [chr(c) for c in range(0x3000) if len(f"a{chr(c)}b".splitlines()) == 2]  # the reference: str.splitlines
    for c in breaks:
        text = f"file a{c}b.txt does not exist"
        out = one_line(text)
        assert len(out.splitlines()) == 1 and out.isprintable(), repr(out)
        assert out.encode("ascii", "backslashreplace").decode("unicode_escape") == text  # nothing lost
    assert one_line("caf\u00e9 \t tab") == "caf\u00e9 \t tab"  # other characters as they are


@pytest.mark.parametrize(("value", "low", "want"), [
    (3, 1, 3), (np.int64(2), 1, 2), (np.uint8(7), None, 7), (np.int32(0), 1, None),  # numpy's integers count
    (True, None, None), (np.bool_(True), None, None), (2.0, None, None), (np.float64(2), None, None),
    ("2", None, None), (None, None, None),
])
def test_whole_number_is_the_one_count_rule_and_gives_a_python_int(value: object, low: int | None,
                                                                   want: int | None) -> None:
    from qwen_embed.errors import whole_number

    got = whole_number(value, low)
    assert got == want and (got is None or type(got) is int)
