"""`qwen_embed.ray.source`: the corpus `embed-corpus` reads, checked before any model is loaded. No Ray.

References: the input written here with the standard library's `json` (JSONL) and pyarrow (Parquet) and
read back through `open_corpus` / `Corpus.batches` (ids as `str(id)` in input order, texts equal); the
contract of docs/scale.md ("Before any model is loaded the input is checked: both columns exist, the text
column holds strings, every row has an id, no id appears twice, there is at least one row. A mistake is
one line") and of the module docstring (a number where a text belongs is an error, not a silent
conversion; hidden and `_` files skipped); pyarrow's own `FileSystem.from_uri` for URIs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pfs
import pyarrow.parquet as pq
import pytest

from qwen_embed.errors import InputError
from qwen_embed.ray.source import (
    Corpus,
    cast_ids,
    check_batch,
    input_format,
    normalize_batch,
    open_corpus,
    resolve_input,
)

Rows = list[dict[str, Any]]
Files = dict[str, Rows | str | pa.Table]  # relative path -> JSONL rows, raw text, or a Parquet table


def write_files(root: Path, files: Files) -> Path:
    """Write each file under `root` (JSONL through `json.dumps`, raw text as is, a table as Parquet)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, pa.Table):
            pq.write_table(content, path)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in content), encoding="utf-8")
    return root


def read_all(corpus: Corpus, batch_rows: int = 3) -> tuple[list[str], list[str]]:
    """Ids and texts of every batch, in order."""
    ids: list[str] = []
    texts: list[str] = []
    for table in corpus.batches(batch_rows):
        assert table.column_names == ["id", "text"] and table.schema.field("id").type == pa.string()
        assert 0 < table.num_rows <= batch_rows
        ids += table.column("id").to_pylist()
        texts += table.column("text").to_pylist()
    return ids, texts


def one_line_error(fn: Callable[[], object], *needles: str) -> str:
    """Run `fn`, expect an InputError of one line that holds every needle -> its message."""
    with pytest.raises(InputError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# -- where the input is --------------------------------------------------------------------------------
def test_resolve_local_path_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    fs, path = resolve_input("corpus.jsonl")
    assert isinstance(fs, pfs.LocalFileSystem) and path == str(tmp_path / "corpus.jsonl")
    assert resolve_input("~/c.jsonl")[1] == str(tmp_path / "home" / "c.jsonl")


def test_resolve_uri_as_pyarrow_does(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/c.jsonl"
    fs, path = resolve_input(uri)
    ref_fs, ref_path = pfs.FileSystem.from_uri(uri)
    assert type(fs) is type(ref_fs) and path == ref_path == f"{tmp_path}/c.jsonl"


def test_unknown_uri_scheme_is_one_line() -> None:
    one_line_error(lambda: resolve_input("nosuchscheme://bucket/x"), "nosuchscheme://bucket/x", "URI")


@pytest.mark.parametrize(("names", "want"), [
    (["a.parquet", "b.pq", "C.PARQUET"], "parquet"),
    (["a.jsonl", "b.json", "c.ndjson", "D.JSONL"], "json"),
])
def test_input_format_from_suffixes(names: list[str], want: str) -> None:
    assert input_format(names, "in") == want


@pytest.mark.parametrize(("names", "needles"), [
    (["a.jsonl", "b.parquet"], ("mixes JSONL and Parquet",)),
    (["a.jsonl", "notes.txt"], ("notes.txt", ".jsonl", ".parquet", "rename it or remove it")),
    (["corpus.jsonl.gz"], ("corpus.jsonl.gz",)),
])
def test_input_format_refusals(names: list[str], needles: tuple[str, ...]) -> None:
    one_line_error(lambda: input_format(names, "in"), *needles)


# -- what is read: equal to what was written -----------------------------------------------------------
ROWS = [{"id": "d0", "text": "alpha beta"}, {"id": "é☃𝄞", "text": "naïve 日本語 😀"},
        {"id": "d2", "text": "  padded  "}, {"id": "d3", "text": "x" * 5000}, {"id": "d4", "text": "tab\tand\nline"}]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_one_file_read_back_in_order(tmp_path: Path, fmt: str) -> None:
    if fmt == "jsonl":
        src = write_files(tmp_path, {"c.jsonl": ROWS}) / "c.jsonl"
    else:
        src = write_files(tmp_path, {"c.parquet": pa.Table.from_pylist(ROWS)}) / "c.parquet"
    corpus = open_corpus(str(src))
    assert corpus.format == ("json" if fmt == "jsonl" else "parquet") and corpus.files == [str(src)]
    assert len(corpus) == len(ROWS) and corpus.ids.to_pylist() == [r["id"] for r in ROWS]
    assert read_all(corpus) == ([r["id"] for r in ROWS], [r["text"] for r in ROWS])


def test_one_row(tmp_path: Path) -> None:
    corpus = open_corpus(str(write_files(tmp_path, {"c.jsonl": [{"id": 7, "text": "only"}]}) / "c.jsonl"))
    assert len(corpus) == 1 and read_all(corpus, 1) == (["7"], ["only"])


def test_folder_sorted_recursive_hidden_and_underscore_skipped(tmp_path: Path) -> None:
    rows = [[{"id": f"{k}{i}", "text": f"t {k} {i}"} for i in range(2)] for k in "abc"]
    root = write_files(tmp_path / "in", {
        "b.jsonl": rows[1], "a.jsonl": rows[0], "sub/c.ndjson": rows[2],
        ".hidden.jsonl": [{"id": "h", "text": "hidden"}], "_SUCCESS": "", "sub/_tmp/x.jsonl": "not json",
        ".git/y.txt": "not a corpus", "empty.jsonl": ""})
    corpus = open_corpus(str(root))
    # every file outside hidden/_ paths is listed (sorted); the empty JSONL file holds no rows and is left out
    assert corpus.files == [str(root / "a.jsonl"), str(root / "b.jsonl"), str(root / "sub" / "c.ndjson")]
    want = [r for part in rows for r in part]
    assert read_all(corpus) == ([r["id"] for r in want], [r["text"] for r in want])


def test_hidden_input_folder_itself_is_read(tmp_path: Path) -> None:
    root = write_files(tmp_path / ".cache" / "_in", {"a.jsonl": ROWS[:2]})
    assert len(open_corpus(str(root))) == 2


@pytest.mark.parametrize("typ", [pa.int8(), pa.int32(), pa.int64(), pa.uint64()])
def test_integer_ids_become_their_decimal_strings(tmp_path: Path, typ: pa.DataType) -> None:
    lo, hi = (0, 2**64 - 1) if typ == pa.uint64() else (-(2 ** (typ.bit_width - 1)), 2 ** (typ.bit_width - 1) - 1)
    values = [lo, 0 if lo else 1, hi]
    table = pa.table({"doc": pa.array(values, typ), "body": ["a", "b", "c"]})
    corpus = open_corpus(str(write_files(tmp_path, {"c.parquet": table}) / "c.parquet"), id_column="doc",
                         text_column="body")
    assert corpus.ids.to_pylist() == [str(v) for v in values] and corpus.ids.type == pa.string()
    assert read_all(corpus)[0] == [str(v) for v in values]


def test_large_string_columns_accepted(tmp_path: Path) -> None:
    table = pa.table({"id": pa.array(["a", "b"], pa.large_string()), "text": pa.array(["x", "y"], pa.large_string())})
    corpus = open_corpus(str(write_files(tmp_path, {"c.parquet": table}) / "c.parquet"))
    assert read_all(corpus) == (["a", "b"], ["x", "y"])


def test_dictionary_encoded_columns_are_read_as_their_values(tmp_path: Path) -> None:
    """pandas' `category` columns (and some Parquet writers) store dictionary-encoded strings or integers:
    their values are the ids and texts, as pyarrow's `dictionary_decode` gives them."""
    ids, texts = pa.array(["a", "b", "c"]).dictionary_encode(), pa.array(["x", "y", "x"]).dictionary_encode()
    root = write_files(tmp_path / "s", {"1.parquet": pa.table({"id": ids, "text": texts}),
                                        "2.parquet": pa.table({"id": ids, "text": texts})[:1]})
    assert pq.read_schema(root / "1.parquet").field("text").type == pa.dictionary(pa.int32(), pa.string())
    with pytest.raises(InputError, match="'a' appears 2 times"):  # the ids are compared as their values
        open_corpus(str(root))
    (root / "2.parquet").unlink()
    corpus = open_corpus(str(root))
    assert corpus.ids.to_pylist() == ids.dictionary_decode().to_pylist() and corpus.ids.type == pa.string()
    assert read_all(corpus) == (["a", "b", "c"], texts.dictionary_decode().to_pylist())
    numbers = write_files(tmp_path / "n", {"n.parquet": pa.table({"id": pa.array([7, 8]).dictionary_encode(),
                                                                  "text": ["p", "q"]})})
    assert read_all(open_corpus(str(numbers))) == (["7", "8"], ["p", "q"])
    one_line_error(lambda: open_corpus(str(write_files(tmp_path / "bad", {"b.parquet": pa.table(
        {"id": ["a"], "text": pa.array([1.5]).dictionary_encode()})}))), "holds double values")


def test_other_fields_and_crlf_and_bom(tmp_path: Path) -> None:
    """Extra fields are data, not options: they are left out. CRLF line ends and a UTF-8 BOM are JSONL."""
    src = tmp_path / "c.jsonl"
    src.write_bytes("\ufeff".encode() + b'{"id": "a", "text": "x", "extra": {"k": 1}}\r\n'
                    b'{"id": "b", "text": "y", "n": 2}\r\n')
    assert read_all(open_corpus(str(src))) == (["a", "b"], ["x", "y"])


def test_batches_respect_batch_rows_across_files(tmp_path: Path) -> None:
    tables = {f"p{k}.parquet": pa.table({"id": [f"{k}-{i}" for i in range(n)], "text": ["t"] * n})
              for k, n in enumerate([5, 1, 7])}
    corpus = open_corpus(str(write_files(tmp_path / "in", tables)))
    ids, _ = read_all(corpus, batch_rows=2)
    assert ids == corpus.ids.to_pylist() and len(ids) == 13 == len(set(ids))


# -- refusals, before work: one line each --------------------------------------------------------------
REFUSALS: list[tuple[str, Files, dict[str, str], tuple[str, ...]]] = [
    ("no id column", {"c.jsonl": [{"doc": "a", "text": "x"}]}, {}, ("'id'", "doc, text", "--id-column")),
    ("no text column", {"c.jsonl": [{"id": "a", "body": "x"}]}, {}, ("'text'", "id, body", "--text-column")),
    ("renamed column absent", {"c.parquet": pa.table({"id": ["a"], "text": ["x"]})}, {"text_column": "body"},
     ("'body'", "--text-column")),
    ("number text", {"c.jsonl": [{"id": "a", "text": 5}]}, {}, ("'text'", "int64", "not strings")),
    ("number text later", {"c.jsonl": [{"id": "a", "text": "x"}, {"id": "b", "text": 5}]}, {}, ("text",)),
    ("object text", {"c.jsonl": [{"id": "a", "text": {"k": 1}}]}, {}, ("struct", "not strings")),
    ("parquet number text", {"c.parquet": pa.table({"id": ["a"], "text": [1.5]})}, {}, ("double", "not strings")),
    ("float ids", {"c.jsonl": [{"id": 1.5, "text": "x"}]}, {}, ("'id'", "double", "strings or integers")),
    ("bool ids", {"c.jsonl": [{"id": True, "text": "x"}]}, {}, ("'id'", "bool", "strings or integers")),
    ("list ids", {"c.jsonl": [{"id": [1], "text": "x"}]}, {}, ("'id'", "list", "strings or integers")),
    ("missing id", {"c.jsonl": [{"id": "a", "text": "x"}, {"text": "y"}]}, {}, ("row 1", "'id'")),
    ("null id", {"c.jsonl": [{"id": None, "text": "y"}, {"id": "b", "text": "x"}]}, {}, ("row 0", "'id'")),
    ("null parquet id, 2nd file", {"a.parquet": pa.table({"id": ["a"], "text": ["x"]}),
                                   "b.parquet": pa.table({"id": [None, "c"], "text": ["y", "z"]})}, {}, ("row 1",)),
    ("duplicate id", {"c.jsonl": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}, {"id": "a", "text": "z"}]},
     {}, ("'a'", "2 times", "unique")),
    ("duplicate int id", {"c.jsonl": [{"id": 3, "text": "x"}] * 3}, {}, ("'3'", "3 times")),
    ("duplicate across files", {"a.jsonl": [{"id": "a", "text": "x"}], "b.jsonl": [{"id": "a", "text": "y"}]}, {},
     ("'a'", "2 times")),
    ("null text", {"c.jsonl": [{"id": "a", "text": "x"}, {"id": "b", "text": None}]}, {}, ("'b'", "no text")),
    ("empty text", {"c.jsonl": [{"id": "a", "text": ""}, {"id": "b", "text": "y"}]}, {}, ("'a'", "no text")),
    ("missing text", {"c.jsonl": [{"id": "a", "text": "x"}, {"id": "b"}]}, {}, ("'b'", "no text")),
    ("empty jsonl", {"c.jsonl": ""}, {}, ("no rows",)),
    ("empty jsonl folder", {"a.jsonl": "", "b.json": ""}, {}, ("no rows",)),
    ("empty parquet", {"c.parquet": pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())})},
     {}, ("no rows",)),
    ("only hidden files", {".a.jsonl": [{"id": "a", "text": "x"}], "_b.jsonl": [{"id": "b", "text": "y"}]}, {},
     ("holds no files",)),
    ("other suffix", {"c.csv": "id,text\na,x\n"}, {}, ("c.csv", "neither JSONL")),
    ("mixed formats", {"a.jsonl": [{"id": "a", "text": "x"}], "b.parquet": pa.table({"id": ["b"], "text": ["y"]})},
     {}, ("mixes",)),
    ("not json", {"c.jsonl": "this is not json\n"}, {}, ("cannot be read",)),
    ("torn parquet", {"c.parquet": "PAR1 torn"}, {}, ("cannot be read",)),
]


@pytest.mark.parametrize(("files", "kwargs", "needles"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_bad_input_refused_in_one_line(tmp_path: Path, files: Files, kwargs: dict[str, str],
                                       needles: tuple[str, ...]) -> None:
    """Each mistake is found by `open_corpus` (JSONL: every row; Parquet: ids) before any batch is read."""
    root = write_files(tmp_path / "in", files)
    target = root / next(iter(files)) if len(files) == 1 and not next(iter(files)).startswith((".", "_")) else root
    one_line_error(lambda: open_corpus(str(target), **kwargs), *needles)


def test_missing_input_is_one_line(tmp_path: Path) -> None:
    one_line_error(lambda: open_corpus(str(tmp_path / "absent")), "absent", "does not exist")


def test_parquet_null_text_found_by_the_batch_check(tmp_path: Path) -> None:
    """Parquet texts are read in streaming batches (module docstring): a null text is found there, naming it."""
    table = pa.table({"id": ["a", "b", "c"], "text": ["x", None, "z"]})
    corpus = open_corpus(str(write_files(tmp_path, {"c.parquet": table}) / "c.parquet"))
    one_line_error(lambda: read_all(corpus), "'b'", "no text")


# -- the batch helpers the Ray stage calls ---------------------------------------------------------------
@pytest.mark.parametrize(("texts", "bad"), [
    (["x", None], "'1'"), (["", "y"], "'0'"), ([" ", "y", ""], "'2'"),
])
def test_check_batch_names_the_first_row_without_text(texts: list[str | None], bad: str) -> None:
    table = pa.table({"id": [str(i) for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    one_line_error(lambda: check_batch(table), bad, "no text")


def test_check_batch_passes_good_rows_unchanged() -> None:
    table = pa.table({"id": ["a", "b"], "text": [" ", "日本"]})
    assert check_batch(table).equals(table)


def test_check_batch_refuses_non_strings() -> None:
    one_line_error(lambda: check_batch(pa.table({"id": ["a"], "text": [3]})), "int64", "not strings")


def test_normalize_batch_renames_and_casts() -> None:
    table = pa.table({"body": ["x", "y"], "doc": pa.array([10, -2], pa.int16()), "other": [1, 2]})
    out = normalize_batch(table, "doc", "body")
    assert out.column_names == ["id", "text"] and out.to_pydict() == {"id": ["10", "-2"], "text": ["x", "y"]}


@pytest.mark.parametrize("typ", [pa.float64(), pa.bool_(), pa.binary(), pa.timestamp("s")])
def test_cast_ids_refuses_other_types(typ: pa.DataType) -> None:
    column = pa.array([None], typ)
    one_line_error(lambda: cast_ids(column, "doc"), "'doc'", str(typ), "strings or integers")


# -- bugs found ------------------------------------------------------------------------------------------
BIG = 3_000_000  # characters: one row larger than two of pyarrow's default JSON blocks (1 MiB)


@pytest.mark.parametrize("rows", [
    [{"id": "big", "text": "x" * 1_100_000}],  # read as one row of nulls: "row 0 has no 'id'"
    [{"id": "big", "text": "x" * BIG}],
    [{"id": "big", "text": "x" * BIG}, {"id": "small", "text": "y"}],
    [{"id": "small", "text": "y"}, {"id": "big", "text": "x" * BIG}],
], ids=["alone-1.1MB", "alone", "first", "second"])
def test_jsonl_row_larger_than_a_block(tmp_path: Path, rows: Rows) -> None:
    corpus = open_corpus(str(write_files(tmp_path, {"c.jsonl": rows}) / "c.jsonl"))
    ids, texts = read_all(corpus)
    assert ids == [r["id"] for r in rows] and list(map(len, texts)) == [len(r["text"]) for r in rows]


@pytest.mark.parametrize("second", [
    pa.table({"id": ["c", "d"], "text": [5, 6]}),
    pa.table({"id": ["c", "d"], "body": ["y", "z"]}),
], ids=["number-text", "no-text-column"])
def test_every_parquet_file_checked_before_work(tmp_path: Path, second: pa.Table) -> None:
    root = write_files(tmp_path / "in", {"a.parquet": pa.table({"id": ["a", "b"], "text": ["x", "y"]}),
                                         "b.parquet": second})
    one_line_error(lambda: open_corpus(str(root)), "text", "b.parquet")


@pytest.mark.parametrize("name", ["c.jsonl", "c.parquet"])
def test_id_column_same_as_text_column(tmp_path: Path, name: str) -> None:
    rows = [{"id": "a", "text": "x"}]
    src = write_files(tmp_path, {name: pa.Table.from_pylist(rows) if name.endswith("parquet") else rows}) / name

    def run() -> None:
        read_all(open_corpus(str(src), id_column="text", text_column="text"))

    with pytest.raises(InputError, match=r"^--id-column and --text-column are both 'text'; the id and the text are "
                                         r"two columns \(name the text's with --text-column\)\.$"):
        run()


@pytest.mark.parametrize("files", [
    {"c.jsonl": [{"id": 1, "text": "x"}, {"id": "b", "text": "y"}]},
    {"a.jsonl": [{"id": 1, "text": "x"}], "b.jsonl": [{"id": "b", "text": "y"}]},
    {"a.parquet": pa.table({"id": [1], "text": ["x"]}), "b.parquet": pa.table({"id": ["b"], "text": ["y"]})},
], ids=["jsonl-one-file", "jsonl-two-files", "parquet-two-files"])
def test_mixed_int_and_string_ids(tmp_path: Path, files: Files) -> None:
    """Ids are 'strings or integers' (docs/scale.md): either the mix is read as strings, or the refusal names
    the id column and not the text column."""
    root = write_files(tmp_path / "in", files)
    try:
        corpus = open_corpus(str(root))
    except InputError as e:
        assert "'id'" in str(e) and "text column must hold strings" not in str(e), str(e)
    else:
        assert corpus.ids.to_pylist() == ["1", "b"]


def test_blank_jsonl_file_is_skipped_like_an_empty_one(tmp_path: Path) -> None:
    root = write_files(tmp_path / "in", {"a.jsonl": "\n", "b.jsonl": [{"id": "b", "text": "y"}]})
    assert read_all(open_corpus(str(root))) == (["b"], ["y"])


def test_source_files_untouched(tmp_path: Path) -> None:
    """Reading never changes the input (no cache, no sidecar file)."""
    root = write_files(tmp_path / "in", {"a.jsonl": ROWS})
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*")}
    read_all(open_corpus(str(root)))
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*")} == before
    assert sorted(os.listdir(root)) == ["a.jsonl"]


@pytest.mark.parametrize("first_id", ["a", 7])
def test_jsonl_fields_the_job_does_not_use_are_not_parsed(tmp_path: Path, first_id: str | int) -> None:
    """A field other than the id and the text whose type changes from row to row (a number, then a string,
    then an object) does not concern the job: the corpus is read, by both `open_corpus` and `batches`."""
    second = "b" if isinstance(first_id, str) else 8
    rows = [{"id": first_id, "text": "x", "meta": 1}, {"id": second, "text": "y", "meta": "one"},
            {"meta": {"k": [1]}, "text": "z", "id": "c" if isinstance(first_id, str) else 9}]
    corpus = open_corpus(str(write_files(tmp_path, {"c.jsonl": rows}) / "c.jsonl"))
    want = [str(r["id"]) for r in rows]
    assert corpus.ids.to_pylist() == want
    assert read_all(corpus, batch_rows=2) == (want, ["x", "y", "z"])
