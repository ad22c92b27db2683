"""Training data: row parsing, streaming, single-task batches, templates, determinism and rank slices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_embed.checkpoint import Checkpoint
from qwen_embed.embedder import DEFAULT_INSTRUCTION
from qwen_embed.errors import InputError
from qwen_embed.train.data import BatchStream, Collator, iter_examples, load_eval_set, parse_row
from qwen_embed.train.losses import text_key

from .conftest import make_rows, write_jsonl


def test_parse_row_forms_and_errors() -> None:
    ex = parse_row({"query": "q", "positives": ["a", "b"], "negatives": ["n"], "instruction": "I", "task": "t"}, "x")
    assert (ex.positives, ex.negatives, ex.instruction, ex.task) == (["a", "b"], ["n"], "I", "t")
    assert parse_row({"query": "q", "positive": "a"}, "x").task == "default"
    with pytest.raises(InputError, match=r"f\.jsonl:3: needs 'positive'"):
        parse_row({"query": "q"}, "f.jsonl:3")
    with pytest.raises(InputError, match="non-empty string field 'query'"):
        parse_row({"query": "", "positive": "a"}, "f:1")
    with pytest.raises(InputError, match="no non-empty positive"):
        parse_row({"query": "q", "positive": "  "}, "f:1")


def test_stream_reads_lazily(tmp_path: Path) -> None:
    """A broken line at the end is reached only after the first batches: the file is streamed, not loaded."""
    path = write_jsonl(tmp_path / "t.jsonl", make_rows(40))
    with path.open("a") as f:
        f.write("{not json\n")
    stream = iter(BatchStream([path], 4, shuffle_buffer=1))
    assert [len(next(stream).examples) for _ in range(3)] == [4, 4, 4]
    with pytest.raises(InputError, match=r"t.jsonl:41: not valid JSON"):
        for _ in range(20):
            next(stream)


def test_every_batch_is_one_task_and_resume_replays(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", make_rows(60, tasks=("a", "b", "c")))
    stream = BatchStream([path], 5, seed=3, shuffle_buffer=16)
    batches = [b for _, b in zip(range(30), stream, strict=False)]
    assert all(len({ex.task for ex in b.examples}) == 1 for b in batches)
    assert {b.task for b in batches} == {"a", "b", "c"}
    assert [b.index for b in batches] == list(range(30))  # epochs continue the numbering
    later = next(stream.batches(17))
    assert later.index == 17 and later.examples == batches[17].examples
    again = [b.examples for _, b in zip(range(5), BatchStream([path], 5, seed=3, shuffle_buffer=16), strict=False)]
    assert again == [b.examples for b in batches[:5]]
    other = [b.examples for _, b in zip(range(5), BatchStream([path], 5, seed=4, shuffle_buffer=16), strict=False)]
    assert other != again


def test_too_few_rows_for_a_batch(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", make_rows(3))
    with pytest.raises(InputError, match="fewer than batch_size=4"):
        next(iter(BatchStream([path], 4)))


def test_collator_templates_negatives_and_rank_slices(small_embedding_path: Path, tmp_path: Path) -> None:
    tok = Checkpoint.load(small_embedding_path, "cpu", "float32", want_head=False).tokenizer
    rows = make_rows(8, negatives=3)
    rows[2]["instruction"] = "Find code"
    rows[5]["negatives"] = ["only one"]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    raw = next(iter(BatchStream([path], 8, shuffle_buffer=1)))
    collate = Collator(tok, 64, 64, num_negatives=2, default_instruction=DEFAULT_INSTRUCTION)
    whole = collate(raw)
    assert whole.num_negatives == 1  # min(2, fewest negatives in the batch)
    assert tok.decode(whole.queries[0][:-1]) == f"Instruct: {DEFAULT_INSTRUCTION}\nQuery:{rows[0]['query']}"
    assert tok.decode(whole.queries[2][:-1]) == f"Instruct: Find code\nQuery:{rows[2]['query']}"
    assert tok.decode(whole.positives[0][:-1]) == rows[0]["positive"]  # documents: no template
    assert all(s[-1] == tok.eos_id for s in whole.sequences)
    assert tok.decode(whole.negatives[5][:-1]) == "only one"
    assert whole.pos_keys[3].item() == text_key(str(rows[3]["positive"]))
    halves = [collate(raw, r, 2) for r in range(2)]
    assert [h.offset for h in halves] == [0, 4]
    assert halves[0].queries + halves[1].queries == whole.queries
    assert halves[0].negatives + halves[1].negatives == whole.negatives
    assert halves[1].pos_keys_all.tolist() == whole.pos_keys.tolist()
    with pytest.raises(InputError, match="does not divide over 3"):
        collate(raw, 0, 3)
    assert collate(raw).negatives == whole.negatives  # sampling is a function of (seed, batch index)


def test_eval_set_corpus_and_relevance(tmp_path: Path) -> None:
    rows = [{"query": "q1", "positive": "d1", "negatives": ["d2"]},
            {"query": "q2", "positives": ["d2", "d3"]}]
    path = tmp_path / "e.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ev = load_eval_set(path, default_instruction=None)
    assert ev.queries == ["q1", "q2"] and ev.corpus == ["d1", "d2", "d3"]
    assert ev.relevant == [{0}, {1, 2}]
    assert len(list(iter_examples([path]))) == 2
