"""Real training pairs from data every machine has: Python standard-library functions.

Each pair is (first line of a function's docstring, the function's source code). The source can keep
or drop its docstring (`strip_docstring`): with it dropped the model must match a description to the
signature and body, not copy text. The set is deterministic for a given Python version: a fixed list
of pure-Python modules, functions and methods defined in them, sorted by qualified name; first lines
that occur more than once are dropped (they would make two positives of one query), and the held-out
split is a hash of the qualified name, so it does not move when modules are added.

`write_pairs` writes the training-format JSONL (`{"query", "positive", "task": "code"}`) used by the
learning test, examples/train_tiny.yaml and the GPU learning-curve run.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import json
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..files import write_text_atomic

MODULES = [
    "_pydecimal", "_pyio", "argparse", "ast", "asyncio.base_events", "asyncio.streams", "base64", "bisect",
    "calendar", "cmd", "code", "codecs", "collections", "colorsys", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "difflib", "dis", "email.message", "email.utils", "enum", "filecmp", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip", "heapq", "hmac",
    "html.parser", "http.client", "http.cookiejar", "http.server", "imaplib", "importlib.metadata", "inspect",
    "ipaddress", "json.decoder", "json.encoder", "logging", "logging.handlers", "mailbox", "mimetypes",
    "multiprocessing.pool", "netrc", "ntpath", "numbers", "opcode", "optparse", "os", "pathlib", "pdb",
    "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "posixpath", "pprint", "pydoc",
    "queue", "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors", "shlex", "shutil", "smtplib",
    "socket", "socketserver", "statistics", "string", "subprocess", "sysconfig", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "tracemalloc", "typing",
    "unittest.case", "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zipimport",
]


@dataclass(frozen=True)
class Pair:
    name: str  # qualified name, e.g. "shutil.copyfile"
    query: str  # the docstring's first line
    source: str  # the function's source (dedented)


def _strip_docstring(source: str) -> str:
    """The source without the function's own docstring (by the AST, so quotes of any kind go)."""
    tree = ast.parse(source)
    fn = tree.body[0]
    if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) or not fn.body:
        return source
    first = fn.body[0]
    is_doc = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    if not (is_doc and isinstance(first.value.value, str)):  # type: ignore[attr-defined]
        return source
    lines = source.splitlines(keepends=True)
    assert first.end_lineno is not None
    kept = lines[: first.lineno - 1] + lines[first.end_lineno :]
    return "".join(kept) if len(fn.body) > 1 else "".join(kept) + " " * (first.col_offset) + "pass\n"


def _functions(module: object) -> list[tuple[str, object]]:
    name = getattr(module, "__name__", "")
    out: list[tuple[str, object]] = []
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_"):
            continue
        if inspect.isfunction(obj) and obj.__module__ == name:
            out.append((f"{name}.{obj.__qualname__}", obj))
        elif inspect.isclass(obj) and obj.__module__ == name:
            for m_attr, m in sorted(vars(obj).items()):
                if not m_attr.startswith("_") and inspect.isfunction(m):
                    out.append((f"{name}.{m.__qualname__}", m))
    return out


def collect_pairs(modules: list[str] | None = None, strip_docstring: bool = True, min_len: int = 12,
                  max_len: int = 200) -> list[Pair]:
    """Docstring-first-line / source pairs of the listed modules, deterministic, sorted by name."""
    found: dict[str, Pair] = {}
    for mod_name in modules or MODULES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(mod_name)
        except Exception:  # a module this build lacks
            continue
        for qual, fn in _functions(module):
            doc = inspect.getdoc(fn)
            if not doc:
                continue
            first = doc.strip().splitlines()[0].strip()
            if not min_len <= len(first) <= max_len:
                continue
            try:
                source = textwrap.dedent(inspect.getsource(fn))  # type: ignore[arg-type]
                if strip_docstring:
                    source = _strip_docstring(source)
            except (OSError, TypeError, SyntaxError, IndentationError):
                continue
            found.setdefault(qual, Pair(qual, first, source.rstrip() + "\n"))
    counts: dict[str, int] = {}
    for p in found.values():
        counts[p.query] = counts.get(p.query, 0) + 1
    return sorted((p for p in found.values() if counts[p.query] == 1), key=lambda p: p.name)


def is_held_out(name: str, fraction: float = 0.1) -> bool:
    """A stable pseudo-random split by the qualified name."""
    h = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "little")
    return h % 10_000 < fraction * 10_000


def write_pairs(out_dir: str | Path, *, held_out: float = 0.1, strip_docstring: bool = True,
                max_source_chars: int = 2000) -> tuple[Path, Path, int, int]:
    """Write out_dir/train.jsonl and out_dir/heldout.jsonl; returns the paths and the row counts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = collect_pairs(strip_docstring=strip_docstring)
    train_rows: list[str] = []
    test_rows: list[str] = []
    for p in pairs:
        row = json.dumps({"query": p.query, "positive": p.source[:max_source_chars], "task": "code",
                          "id": p.name})
        (test_rows if is_held_out(p.name, held_out) else train_rows).append(row)
    paths = out / "train.jsonl", out / "heldout.jsonl"
    for path, rows in zip(paths, (train_rows, test_rows), strict=True):
        write_text_atomic(path, "".join(r + "\n" for r in rows))
    return paths[0], paths[1], len(train_rows), len(test_rows)


def train_tokenizer(texts_file: str | Path, out_file: str | Path, vocab_size: int = 2048) -> Path:
    """A byte-level BPE trained on the `query` and `positive` texts of a JSONL file, with Qwen's special
    tokens (so that a tiny model trained from scratch sees short sequences; `make_checkpoint` takes it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ..tiny import SPECIAL_TOKENS

    texts = []
    with Path(texts_file).open(encoding="utf-8-sig") as f:
        for line in f:
            row = json.loads(line)
            texts += [row["query"], row["positive"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    out = Path(out_file)
    tok.save(str(out))
    return out
