"""Reranker training data (train/rerank_data.py): rows -> yes/no groups -> token ids, and the held-out set.

References: the token ids are checked against the Qwen3-Reranker model card's input, written out here as
strings (system prefix, `<Instruct>: ...\\n<Query>: ...\\n<Document>: ...`, chat suffix; only the document
cut) and encoded with `tokenizers` on the real Qwen tokenizer (fixture `real_tokenizer_path`); groups,
labels, counts and rank slices against hand-worked values and the module / docs/train.md contract
("one yes per positive, each with min(negatives_per_positive, negatives) no's", "batch i sampled from
(seed, i)"); errors against the house rule: one line naming the file:line, the value and the fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from qwen_embed.errors import InputError
from qwen_embed.reranker import RerankInputs
from qwen_embed.tokenizer import QwenTokenizer
from qwen_embed.train.data import Example, RawBatch
from qwen_embed.train.rerank_data import RerankCollator, load_rerank_eval_set, parse_rerank_row

# The model card's strings, written out (not imported from templates.py).
REF_PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
              'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
REF_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
REF_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
MAX_LENGTH = 200


@pytest.fixture(scope="module")
def ref_tok(real_tokenizer_path: Path) -> Tokenizer:
    """The reference tokenizer: its own instance, not the one the code under test holds."""
    return Tokenizer.from_file(str(real_tokenizer_path))


@pytest.fixture(scope="module")
def inputs(real_tokenizer_path: Path) -> RerankInputs:
    return RerankInputs(QwenTokenizer(Tokenizer.from_file(str(real_tokenizer_path))), "card", MAX_LENGTH)


def ref_ids(tok: Tokenizer, query: str, doc: str, instruction: str = REF_DEFAULT_INSTRUCTION,
            max_length: int = MAX_LENGTH) -> list[int]:
    """The model card: prefix + tokenizer(body, max_length=max_length - prefix - suffix) + suffix."""

    def enc(s: str) -> list[int]:
        return list(tok.encode(s, add_special_tokens=False).ids)

    prefix, suffix = enc(REF_PREFIX), enc(REF_SUFFIX)
    body = enc(f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}")
    return prefix + body[: max_length - len(prefix) - len(suffix)] + suffix


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


def groups_of(batch: Any) -> list[tuple[list[list[int]], list[int]]]:
    out, i = [], 0
    for size in batch.group_sizes:
        out.append((batch.sequences[i : i + size], batch.labels[i : i + size].tolist()))
        i += size
    return out


# -- collating: ids against the model card --------------------------------------------------------------------
@pytest.mark.parametrize(("query", "positives", "negatives"), [
    ("what is alpha", ["alpha is the first letter", "alpha: a Greek letter"], ["beta", "gamma ray", "delta wing"]),
    ("qu'est-ce que 東京 🗼?", ["東京タワーは電波塔です 📡"], ["Zürich — ciudad", "ß ∑ ∞"]),
])
def test_groups_are_yes_then_sampled_nos_with_model_card_ids(ref_tok: Tokenizer, inputs: RerankInputs, query: str,
                                                            positives: list[str], negatives: list[str]) -> None:
    """Each positive is a group: its "yes" first, then min(k, #negatives) distinct "no"s from the row."""
    k = 2
    ex = Example(query, positives, negatives, instruction="Find the definition", task="t")
    batch = RerankCollator(inputs, negatives_per_positive=k)(RawBatch(7, "t", [ex]))
    ref = {d: ref_ids(ref_tok, query, d, "Find the definition") for d in positives + negatives}
    doc_of = {tuple(v): d for d, v in ref.items()}
    groups = groups_of(batch)
    assert len(groups) == len(positives) and batch.group_sizes == [1 + k] * len(positives)
    for (seqs, labels), pos in zip(groups, positives, strict=True):
        assert labels == [1] + [0] * k
        assert seqs[0] == ref[pos]
        docs = [doc_of[tuple(s)] for s in seqs[1:]]  # KeyError: an id sequence of no document of the row
        assert len(set(docs)) == k and set(docs) <= set(negatives)
    assert batch.count == len(positives) * (1 + k) and batch.offset == 0 and batch.index == 7 and batch.task == "t"
    assert batch.num_tokens == sum(map(len, batch.sequences))


def test_pointwise_rows_and_short_rows(ref_tok: Tokenizer, inputs: RerankInputs) -> None:
    """Hand-worked: a row with 1 negative (k=3) -> [yes, no]; a row without -> [yes]; pointwise no -> [no]."""
    rows = [Example("q one", ["p one"], ["n one"]), Example("q two", ["p two"]),
            Example("q three", [], ["d three"]), Example("q four", ["d four"])]
    batch = RerankCollator(inputs, negatives_per_positive=3)(RawBatch(0, "default", rows))
    assert batch.group_sizes == [2, 1, 1, 1]
    assert batch.labels.tolist() == [1, 0, 1, 0, 1] and batch.count == 5
    assert batch.sequences == [ref_ids(ref_tok, "q one", "p one"), ref_ids(ref_tok, "q one", "n one"),
                               ref_ids(ref_tok, "q two", "p two"), ref_ids(ref_tok, "q three", "d three"),
                               ref_ids(ref_tok, "q four", "d four")]


@pytest.mark.parametrize(("row_instruction", "default", "expected"), [
    ("Row's own", "Collator default", "Row's own"),
    (None, "Collator default", "Collator default"),
    (None, None, REF_DEFAULT_INSTRUCTION),
])
def test_instruction_precedence(ref_tok: Tokenizer, inputs: RerankInputs, row_instruction: str | None,
                                default: str | None, expected: str) -> None:
    ex = Example("q", ["doc"], instruction=row_instruction)
    batch = RerankCollator(inputs, default_instruction=default)(RawBatch(0, "a", [ex]))
    assert batch.sequences == [ref_ids(ref_tok, "q", "doc", expected)]


def test_only_the_document_is_cut_and_the_suffix_kept(ref_tok: Tokenizer, inputs: RerankInputs) -> None:
    doc = " ".join(f"word{i}" for i in range(400))
    batch = RerankCollator(inputs)(RawBatch(0, "a", [Example("short query", [doc])]))
    (seq,) = batch.sequences
    assert len(seq) == MAX_LENGTH and seq == ref_ids(ref_tok, "short query", doc)
    assert seq[-len(ref_tok.encode(REF_SUFFIX, add_special_tokens=False).ids):] == \
        ref_tok.encode(REF_SUFFIX, add_special_tokens=False).ids


def test_a_query_too_long_for_max_length_is_one_line(inputs: RerankInputs) -> None:
    with pytest.raises(InputError) as e:
        RerankCollator(inputs)(RawBatch(0, "a", [Example("long " * 300, ["doc"])]))
    msg = one_line(e)
    assert f"max_length={MAX_LENGTH}" in msg and "raise max_length" in msg


# -- determinism and rank slices ----------------------------------------------------------------------------
def _rows(n: int) -> list[Example]:
    return [Example(f"query {i}", [f"pos {i}"], [f"neg {i} {j}" for j in range(5)]) for i in range(n)]


def test_sampling_is_a_function_of_seed_and_batch_index(inputs: RerankInputs) -> None:
    """Batch i's sampling is the same whatever came before it (a resumed run sees the same examples)."""
    rows = _rows(4)
    collate = RerankCollator(inputs, negatives_per_positive=2, seed=1)
    first = [collate(RawBatch(i, "a", rows)).sequences for i in range(6)]
    fresh = RerankCollator(inputs, negatives_per_positive=2, seed=1)
    assert [fresh(RawBatch(i, "a", rows)).sequences for i in reversed(range(6))] == first[::-1]
    other_seed = RerankCollator(inputs, negatives_per_positive=2, seed=2)
    assert [other_seed(RawBatch(i, "a", rows)).sequences for i in range(6)] != first
    assert len({str(s) for s in first}) > 1  # the batch index changes the draw


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_slices_concatenate_to_the_single_process_batch(inputs: RerankInputs, world_size: int) -> None:
    rows = _rows(4)
    collate = RerankCollator(inputs, negatives_per_positive=2, seed=3)
    whole = collate(RawBatch(5, "a", rows))
    parts = [collate(RawBatch(5, "a", rows), rank, world_size) for rank in range(world_size)]
    assert [s for p in parts for s in p.sequences] == whole.sequences
    assert [lab for p in parts for lab in p.labels.tolist()] == whole.labels.tolist()
    assert [g for p in parts for g in p.group_sizes] == whole.group_sizes
    assert [p.offset for p in parts] == [r * 4 // world_size for r in range(world_size)]
    assert {p.count for p in parts} == {whole.count} == {12}  # the global count on every rank: 4 rows x (1 + 2)


def test_a_batch_that_does_not_divide_over_ranks_is_one_line(inputs: RerankInputs) -> None:
    with pytest.raises(InputError) as e:
        RerankCollator(inputs)(RawBatch(0, "a", _rows(4)), 0, 3)
    msg = one_line(e)
    assert "batch_size=4" in msg and "3 processes" in msg and "multiple" in msg


def test_listwise_counts_groups(inputs: RerankInputs) -> None:
    rows = [Example("q1", ["a", "b"], ["n1", "n2", "n3"]), Example("q2", ["c"], ["n4"])]
    batch = RerankCollator(inputs, negatives_per_positive=2, listwise=True)(RawBatch(0, "a", rows))
    assert batch.group_sizes == [3, 3, 2] and batch.count == 3  # loss terms: one per group


@pytest.mark.parametrize("row", [Example("no negatives", ["p"]), Example("pointwise no", [], ["d"]),
                                 Example("pointwise yes", ["d"])])
def test_listwise_refuses_a_row_without_a_positive_and_a_negative(inputs: RerankInputs, row: Example) -> None:
    rows = [Example("fine", ["p"], ["n"]), row]
    with pytest.raises(InputError) as e:
        RerankCollator(inputs, listwise=True)(RawBatch(0, "a", rows))
    msg = one_line(e)
    assert repr(row.query) in msg and "sft or bce" in msg


def test_a_negative_equal_to_the_positive_is_not_a_no(inputs: RerankInputs) -> None:
    rows = [Example("q", ["the same text"], ["the same text", "other"])]
    batch = RerankCollator(inputs, negatives_per_positive=2)(RawBatch(0, "a", rows))
    (seqs, labels), = groups_of(batch)
    yes = {tuple(s) for s, lab in zip(seqs, labels, strict=True) if lab == 1}
    assert not any(tuple(s) in yes for s, lab in zip(seqs, labels, strict=True) if lab == 0)


# -- parsing rows ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("obj", "expected"), [
    ({"query": "q", "document": "d", "label": 1}, Example("q", ["d"], [], None, "default")),
    ({"query": "q", "document": "d", "label": 0, "instruction": "I", "task": "t"}, Example("q", [], ["d"], "I", "t")),
    ({"query": "q", "document": "d", "label": 1, "instruction": ""}, Example("q", ["d"], [], None, "default")),
    ({"query": "q", "positives": ["a", " ", "b"], "negatives": "n"}, Example("q", ["a", "b"], ["n"], None, "default")),
    ({"query": "ünï 東京", "positive": "🗼", "task": "x"}, Example("ünï 東京", ["🗼"], [], None, "x")),
])
def test_parse_rows(obj: dict[str, Any], expected: Example) -> None:
    assert parse_rerank_row(obj, "f.jsonl:1") == expected


@pytest.mark.parametrize(("obj", "says"), [
    ([1, 2], "must be a JSON object, got list"),
    ("text", "must be a JSON object, got str"),
    ({"query": "q"}, "has neither"),
    ({"document": "d", "label": 1}, "'query'"),
    ({"query": "  ", "document": "d", "label": 1}, "'query'"),
    ({"query": 3, "document": "d", "label": 1}, "'query'"),
    ({"query": "q", "document": " ", "label": 1}, "'document'"),
    ({"query": "q", "document": ["d"], "label": 1}, "'document'"),
    ({"query": "q", "label": 1}, "'document'"),
    ({"query": "q", "document": "d"}, "'label' must be 0 or 1, got None"),
    ({"query": "q", "document": "d", "label": 2}, "got 2"),
    ({"query": "q", "document": "d", "label": True}, "got True"),
    ({"query": "q", "document": "d", "label": "1"}, "got '1'"),
    ({"query": "q", "document": "d", "label": math.nan}, "got nan"),
    ({"query": "q", "document": "d", "label": 1, "instruction": 5}, "'instruction' must be a string"),
    ({"query": "q", "positive": ""}, "no non-empty positive"),
    ({"query": "q", "positive": "p", "negatives": [1]}, "negatives must be a string or a list of strings"),
])
def test_bad_rows_are_one_line_naming_the_line(obj: Any, says: str) -> None:
    with pytest.raises(InputError) as e:
        parse_rerank_row(obj, "data/f.jsonl:7")
    msg = one_line(e)
    assert msg.startswith("data/f.jsonl:7: ") and says in msg


@pytest.mark.parametrize("obj", [
    {"query": "q", "positive": "p", "negative": ["n1", "n2"]},
    {"query": "q", "document": "d", "label": 1, "negatives": ["n1", "n2"]},
    {"query": "q", "positive": "p", "document": "d", "label": 0},
])
def test_unknown_or_foreign_fields_are_an_error(obj: dict[str, Any]) -> None:
    with pytest.raises(InputError) as e:
        parse_rerank_row(obj, "f.jsonl:2")
    msg = one_line(e)
    assert msg.startswith("f.jsonl:2: unknown field ") and "put other data under 'meta'" in msg


def test_a_typo_is_named_with_the_field_meant() -> None:
    with pytest.raises(InputError) as e:
        parse_rerank_row({"query": "q", "positive": "p", "negative": ["n"]}, "f.jsonl:2")
    assert one_line(e).startswith("f.jsonl:2: unknown field 'negative'; did you mean 'negatives'? a training row has ")


@pytest.mark.parametrize("obj", [
    {"query": "q", "positive": "p", "id": "r1", "meta": {"persona": "x", "difficulty": "hard"}},  # what synth writes
    {"query": "q", "document": "d", "label": 0, "id": 7, "meta": None},
])
def test_id_and_meta_are_kept_not_read(obj: dict[str, Any]) -> None:
    ex = parse_rerank_row(obj, "f.jsonl:1")
    assert ex.query == "q" and (ex.positives or ex.negatives)


def test_positive_and_positives_together_are_ambiguous() -> None:
    with pytest.raises(InputError, match="has both 'positive' and 'positives'; keep one"):
        parse_rerank_row({"query": "q", "positive": "p", "positives": ["p2"]}, "f.jsonl:3")


@pytest.mark.parametrize("task", [3, ["a"], "", True])
def test_a_task_that_is_not_a_string_is_an_error(task: Any) -> None:
    with pytest.raises(InputError) as e:
        parse_rerank_row({"query": "q", "document": "d", "label": 1, "task": task}, "f.jsonl:1")
    assert one_line(e).startswith("f.jsonl:1: 'task' must be a non-empty string, got ")


def test_a_null_task_is_the_default_as_a_null_instruction_is_none() -> None:
    ex = parse_rerank_row({"query": "q", "document": "d", "label": 1, "task": None, "instruction": None}, "f:1")
    assert (ex.task, ex.instruction) == ("default", None)


# -- the held-out set ---------------------------------------------------------------------------------------
def _write(path: Path, rows: list[Any], extra: str = "") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + extra, encoding="utf-8")
    return path


def test_eval_set_groups_rows_by_query_and_instruction(tmp_path: Path) -> None:
    """Hand-worked: candidates in file order (a row's positives, then its negatives), relevant = their indices."""
    path = _write(tmp_path / "eval.jsonl", [
        {"query": "q1", "positives": ["p1", "p2"], "negatives": ["n1"]},
        {"query": "q2", "document": "d1", "label": 0},
        {"query": "q1", "document": "d2", "label": 1},
        {"query": "q1", "document": "d3", "label": 0, "instruction": "other"},
        {"query": "q2", "document": "d4", "label": 1, "instruction": "D"},
    ])
    s = load_rerank_eval_set(path, default_instruction="D")
    assert s.queries == [("q1", "D"), ("q2", "D"), ("q1", "other")]
    assert s.candidates == [["p1", "p2", "n1", "d2"], ["d1", "d4"], ["d3"]]
    assert s.relevant == [{0, 1, 3}, {1}, set()]


def test_eval_set_max_queries_keeps_later_rows_of_kept_queries(tmp_path: Path) -> None:
    path = _write(tmp_path / "eval.jsonl", [
        {"query": "a", "document": "1", "label": 1}, {"query": "b", "document": "2", "label": 1},
        {"query": "a", "document": "3", "label": 0}, {"query": "c", "document": "4", "label": 1},
    ])
    s = load_rerank_eval_set(path, max_queries=1)
    assert s.queries == [("a", None)] and s.candidates == [["1", "3"]] and s.relevant == [{0}]


@pytest.mark.parametrize(("content", "says"), [
    ("", "holds no rows"),
    ("\n  \n", "holds no rows"),
    ('{"query": "q", "document": "d", "label": 1}\n{"query": "q", "docu\n', "eval.jsonl:2: not valid JSON"),
    ('{"query": "q", "document": "d", "label": 5}\n', "eval.jsonl:1: 'label' must be 0 or 1"),
])
def test_eval_set_errors_are_one_line(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as e:
        load_rerank_eval_set(path)
    assert says in one_line(e)


def test_eval_set_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        load_rerank_eval_set(tmp_path / "absent.jsonl")
    assert "absent.jsonl does not exist" in one_line(e)


def test_eval_set_lists_a_repeated_document_once(tmp_path: Path) -> None:
    path = _write(tmp_path / "eval.jsonl", [
        {"query": "q", "positive": "p", "negatives": ["n"]},
        {"query": "q", "positive": "p", "negatives": ["n", "m"]},
    ])
    s = load_rerank_eval_set(path)
    assert sorted(s.candidates[0]) == ["m", "n", "p"]
    assert [s.candidates[0][i] for i in s.relevant[0]] == ["p"]
