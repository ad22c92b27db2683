"""Inputs and outputs of the text commands (`embed`, `rerank`, `search --queries`), one rule set.

Inputs: a text file (one record per line) or JSON Lines (one object per line, the text in a field,
the id in `id` or BEIR's `_id`); `-` is standard input. The reader is chosen by `fmt`: "lines",
"jsonl", or "auto" (`.jsonl` / `.ndjson` are JSONL, `.txt` is lines even when a line starts with `{`,
anything else is JSONL when its first non-blank line starts with `{`).

Row i of every output is line i of the input. A blank line is an error naming it, unless
`skip_empty`: then it is dropped and every output carries the input line of each row (`index`), so
the mapping is written, never implied.

Vector outputs, by the name's suffix: `.jsonl` (and `-`, standard output) one object per row
`{"index", "id"?, "text"?, "embedding"}`; `.json` one JSON list of those objects; `.npy` the float32
matrix plus `NAME.ids.jsonl` beside it (`{"index", "id"?}` per row); `.parquet` columns `index`,
`id`, `vector` (list of float32) and optionally `text` (needs pyarrow, the `store` extra). Every output
is checked before any work starts and written atomically (`qwen_embed.files`).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from .errors import InputError, QwenEmbedError
from .files import atomic_file, check_output_file
from .jsonl import text_lines

Format = Literal["auto", "lines", "jsonl"]
FORMATS = ("auto", "lines", "jsonl")
VECTOR_SUFFIXES = (".jsonl", ".json", ".npy", ".parquet")
RUN_SUFFIXES = (".jsonl", ".trec", ".run")
ID_FIELDS = ("id", "_id")
DEFAULT_RUN_NAME = "qwen-embed"  # the last column of a TREC run, when not given


@dataclass(frozen=True)
class Record:
    """One input row: its input line (0-based), its id when the input gave one, its text, the raw object."""

    index: int
    id: str | None
    text: str
    raw: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """Its id in the outputs: its own, else its input line."""
        return self.id if self.id is not None else str(self.index)


def read_text_file(path: str) -> str:
    """A UTF-8 text file or '-' for standard input, with user-facing errors."""
    if path == "-":
        return sys.stdin.read()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"input {path} does not exist or is not a file.")
    try:
        return p.read_text(encoding="utf-8-sig")  # a byte-order mark is not part of the first line
    except UnicodeDecodeError as e:
        raise InputError(f"input {path} is not UTF-8 text (byte {e.start}); convert it first.") from None
    except OSError as e:
        raise InputError(f"input {path} cannot be read ({e.strerror}).") from None


@functools.cache
def _strict_loader() -> type:
    """yaml.SafeLoader that refuses a key written twice in one mapping (made once, on first use: `yaml` is
    imported only by the commands that read YAML)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:  # the keys as written: those a merge (`<<: *base`) brings may repeat
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    mark = key_node.start_mark
                    raise ValueError(f"key {key!r} is written twice (line {mark.line + 1}, column "
                                     f"{mark.column + 1}); keep one")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return Loader


def parse_yaml(text: str) -> Any:
    """Safe YAML; a syntax error or a key written twice in one mapping raises ValueError in one line that
    gives the problem with its line and column (PyYAML's own message spans several lines, and it keeps
    the last of two equal keys without a word)."""
    import yaml

    try:
        return yaml.load(text, Loader=_strict_loader())  # a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as e:
        parts = [f"{text_} at line {mark.line + 1}, column {mark.column + 1}" if mark else text_
                 for text_, mark in ((e.context, e.context_mark), (e.problem, e.problem_mark)) if text_]
        raise ValueError("; ".join(parts)) from None
    except yaml.YAMLError as e:
        raise ValueError(" ".join(str(e).split())) from None


def read_yaml(path: str | os.PathLike[str], what: str, error: type[QwenEmbedError] = InputError) -> Any:
    """A UTF-8 YAML file parsed by `parse_yaml`, every failure one `error` naming `what` and the path."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} {p} does not exist or is not a file.")
    try:
        return parse_yaml(p.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise error(f"{what} {p} is not UTF-8 text (byte {e.start}); convert it first.") from None
    except OSError as e:
        raise error(f"{what} {p} cannot be read ({e.strerror}).") from None
    except ValueError as e:
        raise error(f"{what} {p} is not valid YAML: {e}.") from None


def _is_jsonl(path: str, lines: Sequence[str], fmt: str) -> bool:
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}.")
    if fmt != "auto":
        return fmt == "jsonl"
    low = path.lower()
    if low.endswith((".jsonl", ".ndjson")):
        return True
    if low.endswith((".txt", ".text", ".md")):
        return False
    first = next((ln for ln in lines if ln.strip()), "")
    return first.lstrip().startswith("{")


def record_id(obj: dict[str, Any], where: str) -> str | None:
    """The id of a JSONL object: `id`, else BEIR's `_id`, else None; an id that is not a string or an integer
    (a float, a boolean, a list, ...) is an InputError naming `where`, never dropped."""
    for key in ID_FIELDS:
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InputError(f"{where}: `{key}` must be a string or an integer, got {value!r}.")
        return str(value)
    return None


def read_records(path: str, *, field: str = "text", fmt: str = "auto", skip_empty: bool = False,
                 fields: Sequence[str] = ()) -> list[Record]:
    """Records of a text or JSONL input; row i is line i (see the module docstring).

    `fields`: other accepted names of the text field, tried after `field` (e.g. `query` for queries).
    """
    lines = text_lines(read_text_file(path))
    jsonl = _is_jsonl(path, lines, fmt)
    names = [field, *[f for f in fields if f != field]]
    out: list[Record] = []
    for i, line in enumerate(lines):
        if not line.strip():
            if skip_empty:
                continue
            raise InputError(f"{path}: line {i + 1} is blank; every line is one input (row {i} of the output). "
                             f"Remove it, or pass --skip-empty to drop blank lines (the outputs then record "
                             f"each row's input line).")
        if not jsonl:
            out.append(Record(i, None, line))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            hint = " (a text file? pass --format lines)" if fmt == "auto" else ""
            raise InputError(f"{path}:{i + 1}: not valid JSON ({e.msg}){hint}; fix or remove that line.") from None
        text = next((obj[n] for n in names if isinstance(obj, dict) and isinstance(obj.get(n), str)), None)
        if text is None or not isinstance(obj, dict):
            raise InputError(f"{path}: line {i + 1} needs a string field {' or '.join(map(repr, names))} "
                             f"(choose another with --field).")
        if not text.strip():
            if skip_empty:
                continue
            raise InputError(f"{path}: line {i + 1} has an empty {field!r}; fill it, or pass --skip-empty.")
        out.append(Record(i, record_id(obj, f"{path}: line {i + 1}"), text, obj))
    if not out:
        raise InputError(f"input {path} holds no text.")
    ids = [r.id for r in out if r.id is not None]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise InputError(f"{path}: id {dup!r} occurs more than once; ids must be unique.")
    return out


# -- vector outputs --------------------------------------------------------------------------------------
def ids_path(out: Path) -> Path:
    """The ids file written beside a `.npy` output."""
    return out.with_name(out.name.removesuffix(".npy") + ".ids.jsonl")


def check_vector_output(path: str, *, overwrite: bool = False) -> list[Path]:
    """Check a vector output (and its ids file) before any work; returns the files it will write."""
    if path == "-":
        return []
    if not path.lower().endswith(VECTOR_SUFFIXES):
        raise InputError(f"output {path} must end in {', '.join(VECTOR_SUFFIXES)} (or be '-' for JSONL on "
                         f"standard output).")
    target = check_output_file(path, overwrite=overwrite)
    assert target is not None
    files = [target]
    if path.lower().endswith(".npy"):
        side = check_output_file(ids_path(target), overwrite=overwrite, what="ids file")
        assert side is not None
        files.append(side)
    if path.lower().endswith(".parquet"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise InputError("Parquet output needs pyarrow: pip install 'qwen-embed[store]', or write .npy or "
                             ".jsonl.") from None
    return files


def _row(r: Record, with_text: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"index": r.index}
    if r.id is not None:
        row["id"] = r.id
    if with_text:
        row["text"] = r.text
    return row


def write_vectors(path: str, records: Sequence[Record], vectors: Any, *, with_text: bool = False,
                  overwrite: bool = False) -> list[str]:
    """Write vectors [n, d] of `records` to `path` in the format its suffix names; returns the files written."""
    import numpy as np

    vecs = np.asarray(vectors)
    if not np.issubdtype(vecs.dtype, np.integer):  # quantized codes keep their integer type
        vecs = vecs.astype(np.float32 if vecs.dtype != np.float16 else np.float16)
    assert len(vecs) == len(records), "one vector per record"
    low = path.lower()
    if path == "-":
        _jsonl_rows(sys.stdout, records, vecs, with_text)
        return ["-"]
    if low.endswith(".npy"):
        with atomic_file(path, "wb", overwrite=overwrite) as f:
            np.save(f, vecs)
        side = ids_path(Path(path))
        with atomic_file(side, overwrite=overwrite) as f:
            for r in records:
                f.write(json.dumps(_row(r, False), ensure_ascii=False) + "\n")
        return [path, str(side)]
    if low.endswith(".parquet"):
        _write_parquet(path, records, vecs, with_text, overwrite)
        return [path]
    with atomic_file(path, overwrite=overwrite) as f:
        if low.endswith(".json"):
            rows = [{**_row(r, with_text), "embedding": v.tolist()} for r, v in zip(records, vecs, strict=True)]
            json.dump(rows, f, ensure_ascii=False)
            f.write("\n")
        else:
            _jsonl_rows(f, records, vecs, with_text)
    return [path]


def _jsonl_rows(f: IO[str], records: Sequence[Record], vecs: Any, with_text: bool) -> None:
    for r, v in zip(records, vecs, strict=True):
        f.write(json.dumps({**_row(r, with_text), "embedding": v.tolist()}, ensure_ascii=False) + "\n")


def _write_parquet(path: str, records: Sequence[Record], vecs: Any, with_text: bool, overwrite: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = int(vecs.shape[1])
    flat = pa.array(vecs.reshape(-1))
    columns: dict[str, Any] = {
        "index": pa.array([r.index for r in records], type=pa.int64()),
        "id": pa.array([r.key for r in records], type=pa.string()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
    }
    if with_text:
        columns["text"] = pa.array([r.text for r in records], type=pa.string())
    with atomic_file(path, "wb", overwrite=overwrite) as f:
        pq.write_table(pa.table(columns), f)


# -- truncation report -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Truncation:
    """How many inputs were longer than the token limit, and the longest one."""

    count: int
    longest_tokens: int
    longest_index: int
    limit: int

    def message(self, what: str = "inputs") -> str | None:
        """One line for the user, or None when nothing was cut."""
        if not self.count:
            return None
        return (f"{self.count} {what} longer than --max-length {self.limit} tokens were truncated (longest: "
                f"row {self.longest_index}, {self.longest_tokens} tokens); raise --max-length to keep more.")


def truncation(lengths: Sequence[int], limit: int) -> Truncation:
    """Count the lengths over `limit` and find the longest."""
    if not lengths:
        return Truncation(0, 0, -1, limit)
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    return Truncation(sum(n > limit for n in lengths), lengths[longest], longest, limit)


# -- many-query outputs (search / rerank --queries) ------------------------------------------------------
def check_run_output(path: str, run_name: str, *, overwrite: bool = False) -> str:
    """Check a many-query output and its run name before work; returns its format: 'jsonl' or 'trec'."""
    check_run_name(run_name, "--run-name")
    if path == "-":
        return "jsonl"
    low = path.lower()
    if not low.endswith(RUN_SUFFIXES):
        raise InputError(f"output {path} must end in .jsonl (one line per query) or .trec / .run (a TREC run), or "
                         f"be '-' for JSONL on standard output.")
    check_output_file(path, overwrite=overwrite)
    return "jsonl" if low.endswith(".jsonl") else "trec"


def one_word(text: str) -> bool:
    """Whether `text` can be one field of a TREC file (a run name, a query or document id): TREC files split
    their fields at whitespace, so it must be non-empty and hold none."""
    return bool(text) and not any(c.isspace() for c in text)


def check_run_name(name: str, what: str = "run name") -> str:
    """A run name is one word (`one_word`); checked before any work."""
    if not one_word(name):
        fix = "_".join(name.split()) or DEFAULT_RUN_NAME
        raise InputError(f"{what} {name!r} must be one word, without spaces and not empty (TREC runs split their "
                         f"fields at whitespace); use e.g. {fix!r}.")
    return name


def check_trec_ids(ids: Iterable[str], what: str) -> None:
    """Refuse ids a TREC run cannot hold (`one_word`): call before work."""
    for value in ids:
        if not one_word(value):
            raise InputError(f"{what} {value!r} is empty or holds whitespace, which a TREC run cannot hold (its "
                             f"fields are split at whitespace); write .jsonl instead, or change the id.")


def _doc_id(hit: dict[str, Any]) -> str:
    return str(hit.get("id", hit.get("index")))


def write_answers(path: str, answers: list[dict[str, Any]], kind: str, key: str, run_name: str, *,
                  overwrite: bool = False) -> None:
    """Many-query answers as JSONL (one line per query) or a TREC run (`qid Q0 docid rank score name`)."""
    def lines(f: IO[str]) -> None:
        for a in answers:
            if kind == "jsonl":
                f.write(json.dumps(a, ensure_ascii=False) + "\n")
                continue
            for rank, hit in enumerate(a[key], 1):
                f.write(f"{a['query_id']} Q0 {_doc_id(hit)} {rank} {hit['score']!r} {run_name}\n")

    if kind == "trec":  # the callers check the ids before work; this keeps a bad line out of the file
        check_trec_ids((a["query_id"] for a in answers), "query id")
        check_trec_ids((_doc_id(hit) for a in answers for hit in a[key]), "document id")
    if path == "-":
        lines(sys.stdout)
    else:
        with atomic_file(path, overwrite=overwrite) as f:
            lines(f)
