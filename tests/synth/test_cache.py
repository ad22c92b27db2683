"""Tests of `qwen_embed.synth.cache.ResponseCache`: the append-only JSONL cache of paid replies.

Reference: the module docstring and docs/synth.md ("Response cache"): one JSON line
`{"key", "text", "prompt_tokens", "completion_tokens"}` per reply, flushed as it arrives, from several
threads; the key is a SHA-256 of the generator identity (model, sampling) and the prompt, so another model
or temperature misses; a re-run never pays twice; a torn last line (a kill mid-write) is cut off on opening;
failed requests are never cached; a run that got no reply leaves no file. House rules (DESIGN.md): one-line
errors naming the value and the fix; a cache must survive a crash mid-write and keep every reply paid for.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from qwen_embed.errors import InputError
from qwen_embed.synth.cache import CacheClosedError, ResponseCache
from qwen_embed.synth.generators import Completion

IDENTITY: dict[str, Any] = {"backend": "openai", "model": "Qwen/Qwen3-32B", "temperature": 0.7, "max_tokens": 512,
                            "extra_body": {}}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text(encoding="utf-8").splitlines()]


def test_a_reply_is_kept_across_runs(tmp_path: Path) -> None:
    path = tmp_path / "out.cache.jsonl"
    c = ResponseCache(path, IDENTITY)
    assert c.get("prompt") is None and len(c) == 0
    c.put("prompt", Completion('{"Query": "why"}', 120, 7))
    c.close()
    again = ResponseCache(path, dict(IDENTITY))
    got = again.get("prompt")
    assert got is not None and (got.text, got.prompt_tokens, got.completion_tokens, got.cached) == (
        '{"Query": "why"}', 120, 7, True)
    assert got.error is None and not got.refused
    assert len(again) == 1


def test_each_reply_is_one_documented_line_flushed_as_it_arrives(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    c = ResponseCache(path, IDENTITY)
    c.put("p1", Completion("réponse 日本 🙂", 3, 4))
    [row] = lines(path)  # readable before close: flushed at once
    assert set(row) == {"key", "text", "prompt_tokens", "completion_tokens"}
    assert (row["text"], row["prompt_tokens"], row["completion_tokens"]) == ("réponse 日本 🙂", 3, 4)
    assert re.fullmatch(r"[0-9a-f]{64}", row["key"]) and row["key"] == c.key("p1")
    assert ResponseCache(path, IDENTITY).get("p1") is not None  # a second reader sees it too
    c.close()


@pytest.mark.parametrize("change", [{"model": "other"}, {"temperature": 0.0}, {"max_tokens": 256},
                                    {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}}])
def test_another_model_or_sampling_misses(tmp_path: Path, change: dict[str, Any]) -> None:
    path = tmp_path / "c.jsonl"
    c = ResponseCache(path, IDENTITY)
    c.put("prompt", Completion("reply"))
    c.close()
    other = ResponseCache(path, {**IDENTITY, **change})
    assert other.get("prompt") is None and other.key("prompt") != c.key("prompt")
    assert ResponseCache(path, IDENTITY).get("prompt") is not None  # the file is shared safely


def test_keys_differ_by_prompt_and_not_by_dict_order(tmp_path: Path) -> None:
    c = ResponseCache(tmp_path / "c.jsonl", IDENTITY)
    reordered = ResponseCache(tmp_path / "c.jsonl", dict(reversed(list(IDENTITY.items()))))
    assert c.key("a") == reordered.key("a") and c.key("a") != c.key("a ") and c.key("") != c.key(" ")


def test_failed_replies_are_not_cached_and_no_reply_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    c = ResponseCache(path, IDENTITY)
    c.put("p", Completion(None, error="HTTP 500 (gave up after 3 attempts)"))
    c.put("q", Completion(None, error="HTTP 400", refused=True))
    c.close()
    assert not path.exists() and c.get("p") is None and len(c) == 0


def test_an_empty_reply_is_a_reply(tmp_path: Path) -> None:
    c = ResponseCache(tmp_path / "c.jsonl", IDENTITY)
    c.put("p", Completion(""))
    c.close()
    got = ResponseCache(tmp_path / "c.jsonl", IDENTITY).get("p")
    assert got is not None and got.text == ""


@pytest.mark.parametrize("torn", [b'{"key": "abc", "te', b"{", b'{"key": "k", "text": "t"}', b"\xe6\x97"])
def test_a_torn_last_line_is_cut_off_and_appending_goes_on(tmp_path: Path, torn: bytes) -> None:
    path = tmp_path / "c.jsonl"
    c = ResponseCache(path, IDENTITY)
    c.put("one", Completion("1"))
    c.put("two", Completion("2"))
    c.close()
    whole = path.read_bytes()
    with path.open("ab") as f:  # a kill mid-write: the last line has no newline
        f.write(torn)
    c2 = ResponseCache(path, IDENTITY)
    assert len(c2) == 2 and path.read_bytes() == whole
    c2.put("three", Completion("3"))
    c2.close()
    c3 = ResponseCache(path, IDENTITY)
    assert [c3.get(p).text for p in ("one", "two", "three")] == ["1", "2", "3"]  # type: ignore[union-attr]
    assert len(lines(path)) == 3


def test_threads_writing_at_once_leave_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    c = ResponseCache(path, IDENTITY)
    prompts = [f"prompt {i} " + "x" * (i * 37 % 3000) for i in range(400)]  # some lines longer than a buffer
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: c.put(p, Completion(p[::-1], len(p), 1)), prompts))
    c.close()
    assert len(lines(path)) == 400
    again = ResponseCache(path, IDENTITY)
    assert len(again) == 400 and all(again.get(p).text == p[::-1] for p in prompts)  # type: ignore[union-attr]


def test_two_runs_sharing_one_cache_keep_both_runs_replies(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    a, b = ResponseCache(path, IDENTITY), ResponseCache(path, {**IDENTITY, "temperature": 0.0})
    for i in range(20):
        (a if i % 2 else b).put(f"p{i}", Completion(f"r{i}"))
    a.close()
    b.close()
    assert len(ResponseCache(path, IDENTITY)) == 20


def test_the_same_prompt_twice_is_one_entry(tmp_path: Path) -> None:
    c = ResponseCache(tmp_path / "c.jsonl", IDENTITY)
    c.put("p", Completion("first"))
    c.put("p", Completion("second"))
    c.close()
    again = ResponseCache(tmp_path / "c.jsonl", IDENTITY)
    assert len(again) == 1 and again.get("p").text == "second"  # type: ignore[union-attr]


@pytest.mark.parametrize(("where", "says"), [("folder", "is a folder"), ("missing/c.jsonl", "does not exist")])
def test_a_bad_cache_path_is_one_line_with_the_fix(tmp_path: Path, where: str, says: str) -> None:
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=says) as err:
        ResponseCache(tmp_path / where, IDENTITY)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / where) in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_a_broken_line_in_the_middle_loses_no_later_reply(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    killed, other = ResponseCache(path, IDENTITY), ResponseCache(path, IDENTITY)
    killed.put("a", Completion("A"))
    with path.open("ab") as f:
        f.write(b'{"key": "dead", "te')  # the killed run's last line, torn
    for p in ("b", "c", "d"):  # the other run appends on (its first line joins the torn fragment)
        other.put(p, Completion(p.upper()))
    other.close()
    before = path.read_bytes()
    reopened = ResponseCache(path, IDENTITY)
    assert [reopened.get(p) is not None for p in "abcd"] == [True, False, True, True]  # b joined the torn line
    assert reopened.skipped == 1 and len(reopened) == 3
    assert path.read_bytes() == before  # nothing is cut: the broken line is skipped, not deleted
    reopened.put("b", Completion("B again"))
    reopened.close()
    assert [ResponseCache(path, IDENTITY).get(p).text for p in "abcd"] == ["A", "B again", "C", "D"]  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [
    b"not json at all",
    b"\xff\xfe broken utf-8",
    b"[1, 2]",
    b'"a string"',
    b'{"text": "no key"}',
    b'{"key": 3, "text": "key not a string"}',
    b'{"key": "k", "text": null}',
    b'{"key": "k", "text": 42}',
    b'{"key": "k", "text": ["a", "list"]}',
    b'{"key": "k"}',
])
def test_an_unreadable_complete_line_is_skipped_and_counted(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / "c.jsonl"
    c = ResponseCache(path, IDENTITY)
    c.put("one", Completion("1"))
    c.close()
    with path.open("ab") as f:
        f.write(bad + b"\n\n")  # and a blank line, which is not counted
    c2 = ResponseCache(path, IDENTITY)
    c2.put("two", Completion("2", 5, 6))
    c2.close()
    again = ResponseCache(path, IDENTITY)
    assert again.skipped == 1 and len(again) == 2
    assert [(again.get(p).text, again.get(p).prompt_tokens) for p in ("one", "two")] == [  # type: ignore[union-attr]
        ("1", 0), ("2", 5)]
    assert all(isinstance(x.text, str) for x in again.entries.values())


def test_token_counts_that_are_not_whole_numbers_read_as_zero(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    c = ResponseCache(path, IDENTITY)
    key = c.key("p")
    path.write_text(json.dumps({"key": key, "text": "t", "prompt_tokens": "9", "completion_tokens": True}) + "\n",
                    encoding="utf-8")
    got = ResponseCache(path, IDENTITY).get("p")
    assert got is not None and (got.text, got.prompt_tokens, got.completion_tokens) == ("t", 0, 0)


@pytest.mark.parametrize("text", [json.loads('"bad \\ud800 escape"'), json.loads('"\\udfff"'),
                                  "réponse 日本 🙂\n\"x\""])
def test_a_reply_with_a_lone_surrogate_is_kept(tmp_path: Path, text: str) -> None:
    c = ResponseCache(tmp_path / "c.jsonl", IDENTITY)
    c.put("p", Completion(text))
    c.close()
    raw = (tmp_path / "c.jsonl").read_bytes()
    assert raw.isascii() and raw.count(b"\n") == 1  # one line, escaped
    got = ResponseCache(tmp_path / "c.jsonl", IDENTITY).get("p")
    assert got is not None and got.text == text


def test_put_after_close_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    c = ResponseCache(tmp_path / "c.jsonl", IDENTITY)
    c.put("p", Completion("1"))
    c.close()
    with pytest.raises(CacheClosedError, match="after close"):
        c.put("q", Completion("2"))
    assert len(lines(tmp_path / "c.jsonl")) == 1 and c.get("q") is None
