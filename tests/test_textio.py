"""textio's YAML reader against PyYAML's safe loader: the same data for every valid file, and one-line
errors where PyYAML gives several lines (syntax) or nothing at all (a key written twice). The text
inputs and vector outputs are tested through the commands: tests/test_cli_io.py, tests/test_cli_outputs.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from qwen_embed.errors import ConfigError, InputError
from qwen_embed.textio import (
    check_run_output,
    check_trec_ids,
    parse_yaml,
    read_records,
    read_yaml,
    write_answers,
)

VALID = [
    "",
    "a: 1\n",
    "a: ~\nb: [1, 2.5, true, null, 'x']\nc: {d: {e: f}}\n",
    "- a\n- a\n- {k: 1}\n- {k: 1}\n",  # equal items in a list and equal keys in different mappings are fine
    "base: &b {x: 1, y: 2}\nd:\n  <<: *b\n  x: 3\n",  # a merge brings keys that the mapping then overrides
    "base: &b {x: 1}\nd: {<<: [*b, {y: 2}], z: 3}\n",
    "? complex key\n: value\n1: one\n'1': one as text\n",  # 1 and '1' are different keys
    "stages: [{name: a, kind: init}]\nseed: 7\n",
    "text: |\n  line one\n  line two\n",
]


@pytest.mark.parametrize("text", VALID)
def test_valid_yaml_is_what_safe_load_gives(text: str) -> None:
    assert parse_yaml(text) == yaml.safe_load(text)


@pytest.mark.parametrize(("text", "message"), [
    ("a: 1\na: 2\n", "key 'a' is written twice (line 2, column 1); keep one"),
    ("a:\n  b: 1\n  c: 2\n  b: 3\n", "key 'b' is written twice (line 4, column 3); keep one"),
    ("- {k: 1, k: 1}\n", "key 'k' is written twice (line 1, column 10); keep one"),
    ("1: x\n1: y\n", "key 1 is written twice (line 2, column 1); keep one"),
    ("{1: x, 1.0: y}", "key 1.0 is written twice (line 1, column 8); keep one"),  # equal once read, as in Python
    ("base: &b {x: 1}\nd: {<<: *b, z: 1, z: 2}\n", "key 'z' is written twice (line 2, column 19); keep one"),
    ("stages: [a, b\nseed: 1\n",
     "while parsing a flow sequence at line 1, column 9; expected ',' or ']', but got ':' at line 2, column 5"),
    ("a: b: c\n", "mapping values are not allowed here at line 1, column 5"),
    ("\tx: 1\n", "while scanning for the next token; found character '\\t' that cannot start any token at line 1, "
                 "column 1"),
    ("x: !!python/object/apply:os.system [ls]\n",
     "could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system' at line 1, "
     "column 4"),
    ("? [1]\n: 2\n", "while constructing a mapping at line 1, column 1; found unhashable key at line 1, column 3"),
])
def test_errors_are_one_line_with_line_and_column(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_yaml(text)
    assert str(e.value) == message


def test_read_yaml_names_what_and_the_path_with_the_callers_error(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("a: 1\nb: [2\n")
    with pytest.raises(ConfigError) as e:
        read_yaml(path, "config file", ConfigError)
    assert str(e.value) == (f"config file {path} is not valid YAML: while parsing a flow sequence at line 2, column 4; "
                            "expected ',' or ']', but got '<stream end>' at line 3, column 1.")
    for bad, message in ((tmp_path / "none.yaml", "does not exist or is not a file."),
                         (tmp_path, "does not exist or is not a file.")):
        with pytest.raises(InputError, match="^recipe .* " + message.replace(".", r"\.") + "$"):
            read_yaml(bad, "recipe")
    path.write_bytes(b"a: \xe9\n")
    with pytest.raises(InputError, match=r"is not UTF-8 text \(byte 3\); convert it first\.$"):
        read_yaml(path, "recipe")
    path.write_text("a: [1, 2]\n")
    assert read_yaml(path, "recipe") == {"a": [1, 2]}


def test_rows_are_physical_lines_whatever_unicode_line_breaks_the_texts_hold(tmp_path: Path) -> None:
    lines = tmp_path / "in.txt"
    lines.write_bytes("one\x0ctwo\r\nthree\u2028four\nfive\u0085\n".encode())
    assert [(r.index, r.text) for r in read_records(str(lines))] == [
        (0, "one\x0ctwo"), (1, "three\u2028four"), (2, "five\u0085")]
    jsonl = tmp_path / "in.jsonl"  # a raw U+2028 inside a JSON string is valid JSON
    jsonl.write_bytes('{"id": "a", "text": "x\u2028y"}\n{"id": "b", "text": "z"}\n'.encode())
    assert [(r.key, r.text) for r in read_records(str(jsonl))] == [("a", "x\u2028y"), ("b", "z")]


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path: Path) -> None:
    for name, body, first in (("in.txt", "hello\nhello\n", "hello"), ("in.jsonl", '{"id": 1, "text": "hi"}\n', "hi"),
                              ("in.dat", '{"text": "hi"}\n', "hi")):
        p = tmp_path / name
        p.write_bytes(b"\xef\xbb\xbf" + body.encode())
        assert read_records(str(p))[0].text == first
    (tmp_path / "c.yaml").write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert read_yaml(tmp_path / "c.yaml", "config") == {"a": 1}


@pytest.mark.parametrize("value", ["1.5", "true", "[7]", '{"x": 1}', "false"])
def test_an_id_that_is_not_a_string_or_an_integer_is_refused_not_dropped(tmp_path: Path, value: str) -> None:
    p = tmp_path / "in.jsonl"
    p.write_text(f'{{"text": "ok", "id": "a"}}\n{{"text": "b", "id": {value}}}\n')
    with pytest.raises(InputError, match=r"in.jsonl: line 2: `id` must be a string or an integer, got "):
        read_records(str(p))
    p.write_text('{"text": "ok", "_id": 7}\n{"text": "b", "id": null}\n')  # null: no id (the input line then)
    assert [r.key for r in read_records(str(p))] == ["7", "1"]


def test_trec_outputs_refuse_ids_and_run_names_that_would_break_their_columns(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--run-name 'my run' must be one word"):
        check_run_output(str(tmp_path / "r.jsonl"), "my run")
    assert check_run_output(str(tmp_path / "r.trec"), "mine") == "trec"
    for bad in ("q 1", "q\t1", "", "a\u3000b"):
        with pytest.raises(InputError, match="holds whitespace, which a TREC run cannot hold"):
            check_trec_ids(["ok", bad], "query id")
    answers = [{"query_id": "q1", "hits": [{"id": "d 2", "score": 0.5}]}]
    with pytest.raises(InputError, match="document id 'd 2'"):
        write_answers(str(tmp_path / "r.trec"), answers, "trec", "hits", "mine")
    assert not (tmp_path / "r.trec").exists()  # nothing half-written
    write_answers(str(tmp_path / "r.jsonl"), answers, "jsonl", "hits", "mine")  # JSONL holds any id
    assert (tmp_path / "r.jsonl").read_text().count("d 2") == 1
