"""Read documents to index from files, folders, JSONL and BEIR corpora.

- `.txt` / `.md` / `.markdown` files: one document each; the id is the path relative to the folder
  given (or the file name for a file given directly), `path` is recorded as metadata; a Markdown
  file's first `# ` heading becomes its title.
- `.jsonl` / `.ndjson` (optionally `.gz`): one object per line with `id` (or BEIR's `_id`), `text`,
  optional `title`; other fields are metadata (a BEIR `metadata` object is flattened into fields).
- A folder holding `corpus.jsonl` is a BEIR dataset: its corpus is read, the rest ignored. Any other
  folder is walked recursively (hidden entries skipped) for the file types above; files of other types
  are listed as skipped with the reason. `extensions` chooses the types (e.g. `.txt,.py,.jsonl`: the
  JSONL suffixes are read as JSONL, every other one as a text file); `text_field` / `title_field` name
  the JSONL fields (default `text` / `title`).

A file that cannot be read or is not UTF-8 is skipped and reported, and the run goes on; malformed
JSONL, a missing path, an empty folder and duplicate ids are errors raised before anything is written.
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..jsonl import iter_jsonl, text_lines
from ..tokenizer import document_text

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


@dataclass
class Document:
    """One source document; `text` may be empty when `title` is not."""

    id: str
    text: str
    title: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def embedding_text(self) -> str:
        """Title and text joined by a space (MTEB's document string, `tokenizer.document_text`)."""
        return document_text(self.title, self.text)


@dataclass
class SourceReport:
    """The documents read, and the files or records skipped with the reason."""

    documents: list[Document]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_ids: set[str] = field(default_factory=set)  # ids of skipped text files (kept by --delete-missing)
    complete: bool = True  # False when a JSONL file was skipped: its ids are unknown


class _Skip(Exception):
    """A file to skip, with the reason."""


MAX_FILE_BYTES = 256 << 20  # a source file larger than this is skipped (a 10 MB document is chunked)


def _read_bytes(path: Path) -> bytes:
    """A regular file's bytes, opened without blocking: a FIFO, a device (a link to /dev/zero) or a socket
    is skipped, never read, and a file over MAX_FILE_BYTES is skipped rather than read whole."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise _Skip(f"cannot be read ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _Skip("is not a regular file (a pipe, device or socket); only files are indexed")
        if st.st_size > MAX_FILE_BYTES:
            raise _Skip(f"is {st.st_size:,} bytes, over the limit of {MAX_FILE_BYTES:,}; split it into smaller files")
        try:
            raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise _Skip(f"cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise _Skip(f"grew beyond the limit of {MAX_FILE_BYTES:,} bytes while being read")
    return raw


def _read_text(path: Path) -> str:
    raw = _read_bytes(path)
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise _Skip(f"is not a readable gzip file ({e})") from None
    try:
        return raw.decode("utf-8-sig")  # a byte-order mark is not part of the text
    except UnicodeDecodeError as e:
        raise _Skip(f"is not UTF-8 text (byte {e.start}); convert it to UTF-8") from None


def markdown_title(text: str) -> str:
    """The first `# ` heading of a Markdown text, or ''."""
    for line in text_lines(text):
        if line.startswith("# "):
            return line[2:].strip()
    return ""


def _text_document(path: Path, doc_id: str) -> Document:
    text = _read_text(path)
    title = markdown_title(text) if path.suffix in (".md", ".markdown") else ""
    return Document(doc_id, text, title, {"path": doc_id})


def _flatten(obj: dict[str, Any], skip: Iterable[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in obj.items():
        if key in skip:
            continue
        if key == "metadata" and isinstance(value, dict):
            meta.update(value)
        else:
            meta[key] = value
    return meta


@dataclass(frozen=True)
class SourceSettings:
    """Which files a folder walk reads and which JSONL fields hold the text and the title."""

    extensions: tuple[str, ...] = TEXT_SUFFIXES + JSONL_SUFFIXES
    text_field: str = "text"
    title_field: str = "title"
    follow_links: bool = False  # index files a folder links to outside itself

    @classmethod
    def parse(cls, extensions: str | Sequence[str] | None = None, text_field: str | None = None,
              title_field: str | None = None, follow_links: bool = False) -> SourceSettings:
        """From CLI values: `extensions` as 'txt,md' or '.txt,.md' (None: the defaults)."""
        exts = cls.extensions
        if extensions is not None:
            items = extensions.split(",") if isinstance(extensions, str) else list(extensions)
            exts = tuple("." + e.strip().lower().lstrip(".") for e in items if e.strip().strip("."))
            if not exts:
                raise InputError(f"--extensions {extensions!r} names no file type; give e.g. txt,md,jsonl.")
        return cls(exts, text_field or "text", title_field or "title", follow_links)

    def wants(self, name: str) -> bool:
        return name.lower().endswith(self.extensions)


DEFAULT_SOURCES = SourceSettings()


def read_jsonl(path: Path, settings: SourceSettings = DEFAULT_SOURCES) -> list[Document]:
    """Documents of a JSONL file (see the module docstring); raises _Skip or InputError."""
    tf, hf = settings.text_field, settings.title_field
    docs = []
    for n, obj in iter_jsonl(text_lines(_read_text(path)), str(path)):
        if not isinstance(obj, dict):
            raise InputError(f"{path}: line {n} is not a JSON object.")
        doc_id = obj.get("id", obj.get("_id"))
        if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or doc_id == "":
            raise InputError(f"{path}: line {n} needs an `id` (or `_id`) string or integer.")
        text, title = obj.get(tf, ""), obj.get(hf) or ""
        if not isinstance(text, str) or not isinstance(title, str):
            raise InputError(f"{path}: line {n}: `{tf}` and `{hf}` must be strings (choose the fields with "
                             f"--text-field / --title-field).")
        docs.append(Document(str(doc_id), text, title, _flatten(obj, ("id", "_id", tf, hf))))
    return docs


def _outside(path: Path, root: Path) -> Path | None:
    """Where a link inside the folder points when that is outside the folder (else None)."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    return None if target.is_relative_to(root.resolve()) else target


def _walk(root: Path, settings: SourceSettings, report: SourceReport) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=None):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            target = None if settings.follow_links else _outside(Path(dirpath) / name, root)
            if target is not None:
                report.skipped.append((str(Path(dirpath) / name), f"is a link to {target}, outside {root}; pass "
                                       f"--follow-links to index such files"))
                report.skipped_ids.add((Path(dirpath) / name).relative_to(root).as_posix())
                continue
            if settings.wants(name):
                out.append(Path(dirpath) / name)
            else:
                report.skipped.append((str(Path(dirpath) / name), _unsupported(name, settings)))
                report.skipped_ids.add((Path(dirpath) / name).relative_to(root).as_posix())
    return out


def _unsupported(name: str, settings: SourceSettings) -> str:
    suffix = Path(name).suffix or "(no suffix)"
    return (f"file type {suffix} is not indexed (reading {', '.join(settings.extensions)}); add it with "
            f"--extensions")


def _beir_corpus(folder: Path) -> Path | None:
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_file(path: Path, doc_id: str, report: SourceReport, settings: SourceSettings) -> None:
    try:
        if path.name.lower().endswith(JSONL_SUFFIXES):
            report.documents += read_jsonl(path, settings)
        else:
            report.documents.append(_text_document(path, doc_id))
    except _Skip as e:
        report.skipped.append((str(path), str(e)))
        if path.name.lower().endswith(JSONL_SUFFIXES):
            report.complete = False
        else:
            report.skipped_ids.add(doc_id)


def read_sources(sources: Sequence[str | os.PathLike[str]],
                 settings: SourceSettings = DEFAULT_SOURCES) -> SourceReport:
    """Read every document of `sources` (files and folders); see the module docstring."""
    if not sources:
        raise InputError("no SOURCE given; pass files or folders to index.")
    report = SourceReport([])
    for src in sources:
        path = Path(src).expanduser()
        if not path.exists():
            raise InputError(f"source {path} does not exist.")
        if path.is_dir():
            corpus = _beir_corpus(path)
            if corpus is not None:
                _read_file(corpus, "", report, settings)
                continue
            files = _walk(path, settings, report)
            if not files:
                kinds = (".txt, .md or .jsonl" if settings.extensions == DEFAULT_SOURCES.extensions else
                         ", ".join(settings.extensions))
                raise InputError(f"folder {path} holds no {kinds} files; nothing to index (choose the file types "
                                 f"with --extensions).")
            for f in files:
                _read_file(f, f.relative_to(path).as_posix(), report, settings)
        elif settings.wants(path.name):
            _read_file(path, path.name, report, settings)
        else:
            kinds = (".txt, .md, .jsonl" if settings.extensions == DEFAULT_SOURCES.extensions else
                     ", ".join(settings.extensions))
            raise InputError(f"source {path} is not a {kinds} file or a folder (choose the file types with "
                             f"--extensions).")
    docs = []
    seen: set[str] = set()
    for d in report.documents:
        if d.id in seen:
            raise InputError(f"document id {d.id!r} occurs twice in the sources; ids must be unique.")
        seen.add(d.id)
        if d.embedding_text():
            docs.append(d)
        else:
            report.skipped.append((d.id, "empty document (no text and no title)"))
    report.documents = docs
    return report
