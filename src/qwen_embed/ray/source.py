"""The corpus to embed: JSONL or Parquet, one file or a folder, a local path or any pyarrow filesystem URI.

`open_corpus` checks the input before any model is loaded: the id and text columns exist, the text
column holds strings, every row has an id, no id appears twice and there is at least one row. The ids
(cast to strings: integer ids are accepted) are read once, in one column scan; the texts are read in
streaming batches by the engine (`Corpus.batches` here, `ray.data.read_*` over the same files on Ray),
and each batch is checked for a missing or empty text before it is embedded.

JSONL is read with pyarrow's JSON reader, the text column declared a string so that a number or an
object where a text belongs is an error naming the row, not a silent conversion.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.fs as pfs
import pyarrow.json as pj

from ..errors import InputError

PARQUET_SUFFIXES = (".parquet", ".pq")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
_STRING_TYPES = (pa.string(), pa.large_string(), pa.string_view())


def resolve_input(uri: str) -> tuple[pfs.FileSystem, str]:
    """A local path or a filesystem URI (s3://, gs://, hdfs://, file://) -> (filesystem, path in it)."""
    if "://" in uri:
        try:
            return pfs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as e:
            raise InputError(f"input {uri}: pyarrow cannot open this filesystem URI ({e}).") from None
    return pfs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _input_files(fs: pfs.FileSystem, path: str, uri: str) -> list[str]:
    info = fs.get_file_info(path)
    if info.type == pfs.FileType.NotFound:
        raise InputError(f"input {uri} does not exist; give a .jsonl or .parquet file or a folder of them.")
    if info.type == pfs.FileType.File:
        return [path]
    infos = fs.get_file_info(pfs.FileSelector(path, recursive=True))
    files = sorted(i.path for i in infos if i.type == pfs.FileType.File
                   and not any(part.startswith((".", "_")) for part in i.path[len(path):].split("/")))
    if not files:
        raise InputError(f"input folder {uri} holds no files; give .jsonl or .parquet files.")
    return files


def input_format(files: list[str], uri: str) -> str:
    """'parquet' or 'json' from the files' suffixes; a mix or another suffix is an error."""
    kinds = set()
    for f in files:
        name = f.lower()
        if name.endswith(PARQUET_SUFFIXES):
            kinds.add("parquet")
        elif name.endswith(JSON_SUFFIXES):
            kinds.add("json")
        else:
            raise InputError(f"input file {f} is neither JSONL ({', '.join(JSON_SUFFIXES)}) nor Parquet "
                             f"({', '.join(PARQUET_SUFFIXES)}); rename it or remove it from {uri}.")
    if len(kinds) > 1:
        raise InputError(f"input {uri} mixes JSONL and Parquet files; give one format.")
    return kinds.pop()


JSON_MAX_BLOCK = 1 << 26  # 64 MiB: the largest JSONL row read (pyarrow's default block, 1 MiB, refused longer rows)


def json_block_size(largest_file: int) -> int:
    """JSON blocks as large as the largest file (at least pyarrow's 1 MiB, at most JSON_MAX_BLOCK): pyarrow
    cannot read a row longer than its block (a 1.1 MB row alone in its file was read as a row of nulls)."""
    return min(JSON_MAX_BLOCK, max(1 << 20, largest_file + 1))


def json_parse_options(text_column: str, id_column: str | None = None,
                       id_type: pa.DataType | None = None) -> pj.ParseOptions:
    """JSON parsing with the text column declared a string. With the ids' type (`json_id_type`), the other
    fields are not read at all: a field the job does not use (a `meta` that is a number in one row and a
    string in the next) cannot fail the read. Without it, the other fields are inferred."""
    if id_column is None or id_type is None:
        return pj.ParseOptions(explicit_schema=pa.schema([(text_column, pa.string())]),
                               unexpected_field_behavior="infer")
    return pj.ParseOptions(explicit_schema=pa.schema([(id_column, id_type), (text_column, pa.string())]),
                           unexpected_field_behavior="ignore")


def _first_line(fs: pfs.FileSystem, file: str, limit: int = JSON_MAX_BLOCK) -> bytes:
    """The first non-blank line of a JSONL file (at most `limit` bytes are read)."""
    buf = bytearray()
    with fs.open_input_stream(file) as f:
        while chunk := f.read(1 << 16):
            buf += chunk
            while (nl := buf.find(b"\n")) >= 0:
                line = bytes(buf[:nl]).strip()
                del buf[: nl + 1]
                if line:
                    return line
            if len(buf) > limit:
                break
    return bytes(buf).strip()


def json_id_type(fs: pfs.FileSystem, file: str, id_column: str, text_column: str) -> pa.DataType | None:
    """The type of the ids of a JSONL corpus from its first row: string or int64; None when that row is not an
    object with a string or integer id and a string text (the reader then infers every field and reports what
    it finds)."""
    try:
        row = json.loads(_first_line(fs, file))
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get(text_column), str):
        return None
    value = row.get(id_column)
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, int) and not isinstance(value, bool):
        return pa.int64()
    return None


def _arrow_error(uri: str, e: Exception, id_column: str, text_column: str) -> InputError:
    """pyarrow's first line, with what the columns must hold (a mix of id types fails here as well as a text
    that is not a string)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return InputError(f"input {uri} cannot be read: {first}; fix the file (the ids in {id_column!r} must be all "
                      f"strings or all integers, the texts in {text_column!r} strings).")


@dataclass
class Corpus:
    """A checked input: its files, format, columns and ids (strings, unique, in input order)."""

    uri: str
    fs: pfs.FileSystem
    files: list[str]
    format: str
    id_column: str
    text_column: str
    ids: pa.Array
    json_block: int = 1 << 20  # `json_block_size` of the files, found once by `open_corpus`
    json_id_type: pa.DataType | None = None  # `json_id_type` of the first file, found once by `open_corpus`

    @property
    def json_read_options(self) -> pj.ReadOptions:
        return pj.ReadOptions(block_size=self.json_block)

    @property
    def json_parse_options(self) -> pj.ParseOptions:
        return json_parse_options(self.text_column, self.id_column, self.json_id_type)

    @property
    def dataset(self) -> pds.Dataset:
        fmt: Any = "parquet" if self.format == "parquet" else pds.JsonFileFormat(
            parse_options=self.json_parse_options, read_options=self.json_read_options)
        return pds.dataset(self.files, filesystem=self.fs, format=fmt)

    def __len__(self) -> int:
        return len(self.ids)

    def scan(self, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The input's `columns` in record batches (JSONL with its ids' type: read file by file with pyarrow's
        JSON reader, since its dataset scanner infers, and fails on, every field whatever the columns asked)."""
        if self.format != "json" or self.json_id_type is None:
            yield from self.dataset.scanner(columns=columns, batch_size=batch_rows).to_batches()
            return
        for file in self.files:
            with self.fs.open_input_stream(file) as stream:
                for batch in pj.open_json(stream, read_options=self.json_read_options,
                                          parse_options=self.json_parse_options):
                    for start in range(0, batch.num_rows, batch_rows):
                        yield batch.slice(start, batch_rows).select(columns)

    def batches(self, batch_rows: int) -> Iterator[pa.Table]:
        """Tables of at most `batch_rows` rows (a JSON block's rows for JSONL) with string columns `id` and
        `text`, checked."""
        try:
            for batch in self.scan([self.id_column, self.text_column], batch_rows):
                if batch.num_rows:
                    yield check_batch(normalize_batch(pa.Table.from_batches([batch]), self.id_column,
                                                      self.text_column))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise _arrow_error(self.uri, e, self.id_column, self.text_column) from None


def decoded(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A dictionary-encoded column (pandas' `category`, some Parquet writers) as its plain values."""
    typ = column.type
    return pc.cast(column, typ.value_type) if pa.types.is_dictionary(typ) else column


def normalize_batch(table: pa.Table, id_column: str, text_column: str) -> pa.Table:
    """Columns renamed to `id` and `text`, the ids cast to strings (dictionary-encoded columns decoded)."""
    ids = cast_ids(table.column(id_column), id_column)
    return pa.table({"id": ids, "text": decoded(table.column(text_column))})


def cast_ids(column: pa.ChunkedArray | pa.Array, id_column: str) -> pa.ChunkedArray | pa.Array:
    """Ids as strings: string or integer columns (plain or dictionary-encoded) are accepted, anything else is
    an error."""
    column = decoded(column)
    typ = column.type
    if typ in _STRING_TYPES:
        return column.cast(pa.string())
    if pa.types.is_integer(typ):
        return pc.cast(column, pa.string())
    raise InputError(f"id column {id_column!r} holds {typ} values; ids must be strings or integers.")


def check_batch(table: pa.Table) -> pa.Table:
    """Refuse a row without a text or with an empty one, naming its id."""
    text = table.column("text")
    if text.type not in _STRING_TYPES:
        raise InputError(f"the text column holds {text.type} values, not strings; convert them to strings.")
    bad = pc.or_kleene(pc.is_null(text), pc.equal(pc.utf8_length(text), 0))
    if pc.any(bad).as_py():
        first = pc.index(bad, True).as_py()
        raise InputError(f"row with id {table.column('id')[first].as_py()!r} has no text (missing, null or empty); "
                         "every row needs a non-empty text.")
    return table


def _blank(fs: Any, file: str, size: int, probe: int = 1 << 16) -> bool:
    """Whether a small JSONL file (of `size` bytes) holds nothing but whitespace (a larger one is read by
    pyarrow as it is)."""
    if size > probe:
        return False
    with fs.open_input_stream(file) as f:
        return not bytes(f.read()).strip()


def check_schema(schema: pa.Schema, where: str, id_column: str, text_column: str) -> None:
    """The input (or one of its files, `where`) has both columns, the text as strings."""
    for col, flag in ((id_column, "--id-column"), (text_column, "--text-column")):
        if col not in schema.names:
            raise InputError(f"input {where} has no column {col!r} (columns: {', '.join(schema.names) or 'none'}); "
                             f"name the right one with {flag}.")
    typ = schema.field(text_column).type
    typ = typ.value_type if pa.types.is_dictionary(typ) else typ
    if typ not in _STRING_TYPES and not pa.types.is_null(typ):
        raise InputError(f"text column {text_column!r} of {where} holds {typ} values, not strings; convert them.")


def _parquet_schema(fs: pfs.FileSystem, file: str) -> pa.Schema:
    """One Parquet file's own schema (its footer only)."""
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(file, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"input file {file} cannot be read as Parquet ({e}).") from None


def open_corpus(uri: str, *, id_column: str = "id", text_column: str = "text") -> Corpus:
    """Find and check the input (see the module docstring) -> a `Corpus`."""
    if id_column == text_column:
        raise InputError(f"--id-column and --text-column are both {id_column!r}; the id and the text are two columns "
                         "(name the text's with --text-column).")
    fs, path = resolve_input(uri)
    files = _input_files(fs, path, uri)
    fmt = input_format(files, uri)
    json_block, id_type = 1 << 20, None
    if fmt == "json":  # an empty (or blank) JSONL file holds no rows (pyarrow cannot read a schema from it)
        sizes = {f: i.size or 0 for f, i in zip(files, fs.get_file_info(files), strict=True)}
        files = [f for f in files if sizes[f] and not _blank(fs, f, sizes[f])]
        if not files:
            raise InputError(f"input {uri} holds no rows; nothing to embed.")
        json_block = json_block_size(max(sizes[f] for f in files))
        id_type = json_id_type(fs, files[0], id_column, text_column)
    try:
        file_format: Any = fmt if fmt == "parquet" else pds.JsonFileFormat(
            read_options=pj.ReadOptions(block_size=json_block))
        inferred = (pa.schema([(id_column, id_type), (text_column, pa.string())]) if id_type is not None
                    else pds.dataset(files, filesystem=fs, format=file_format).schema)  # schema of the first file
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as e:
        raise _arrow_error(uri, e, id_column, text_column) from None
    check_schema(inferred, uri, id_column, text_column)
    if fmt == "parquet":  # every file's own schema, not just the first one's (later ones were cast or failed mid-run)
        for f in files[1:]:
            check_schema(_parquet_schema(fs, f), f"file {f}", id_column, text_column)
    corpus = Corpus(uri, fs, files, fmt, id_column, text_column, pa.array([], pa.string()), json_block, id_type)
    # JSONL: read the texts too, so that a non-string text anywhere is found now, not mid-run.
    columns = [id_column] if fmt == "parquet" else [id_column, text_column]
    try:
        table = (corpus.dataset.to_table(columns=columns) if id_type is None
                 else pa.Table.from_batches(list(corpus.scan(columns, 1 << 16)), schema=inferred))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise _arrow_error(uri, e, id_column, text_column) from None
    if table.num_rows == 0:
        raise InputError(f"input {uri} holds no rows; nothing to embed.")
    ids = cast_ids(table.column(id_column), id_column).combine_chunks()
    if ids.null_count:
        raise InputError(f"input {uri}: row {pc.index(pc.is_null(ids), True).as_py()} has no {id_column!r}; every "
                         "row needs an id.")
    if fmt == "json":
        check_batch(pa.table({"id": ids, "text": table.column(text_column)}))
    if pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dup = counts.filter(pc.greater(counts.field("counts"), 1))[0]
        raise InputError(f"input {uri}: id {dup['values'].as_py()!r} appears {dup['counts'].as_py()} times; ids "
                         "must be unique (they key the output and resuming).")
    corpus.ids = ids
    return corpus
