"""The per-model services' pure parts (server/service.py): text cuts, prompts, input checks, tokenization.

References: the module docstring ("turns texts or client token ids into sequences exactly as
`Embedder.tokenize` does"; `RerankService` builds what `Reranker.build_input_ids` builds), so the loaded
tiny models are the reference for the ids; `head_text`'s contract (the first, or last, `keep` tokens of a cut
are those of the whole text, and the tokenizer reads about what is kept, not what is sent), checked against
the whole text's own tokens; docs/server.md (`prompt_name`, `instruction`, `input_type`, `truncate`,
`truncation_direction` and Cohere's `max_tokens`, the limits table, the error table: 400 for a bad value,
413 for too many inputs / tokens); `tokenizer.truncate_keep_end`'s documented left rule
`[*ids[:keep_head], *ids[-(room - keep_head):], eos]`; Qwen3-Embedding's config_sentence_transformers.json
(its `query` prompt); and the rule that a user error is one line giving the value, the limit and the fix.
No server is started: the model (`run`) is never called.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen_embed import Embedder, Reranker
from qwen_embed.errors import InputError
from qwen_embed.reranker import RerankInputs
from qwen_embed.server.batcher import Timing
from qwen_embed.server.errors import APIError
from qwen_embed.server.facts import ModelFacts
from qwen_embed.server.metrics import Metrics
from qwen_embed.server.service import (
    CUT_MARGIN,
    EmbeddingService,
    RerankService,
    check_unicode,
    head_text,
    named_prompts,
)
from qwen_embed.server.settings import ServerSettings
from qwen_embed.tokenizer import QwenTokenizer

# Qwen3-Embedding-0.6B's config_sentence_transformers.json, "prompts" (the model card's query prompt)
CARD_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
EMB_MAX, RR_MAX = 32, 128
SETTINGS = ServerSettings(embedding_model="emb", reranker_model="rr", max_inputs=4, max_request_tokens=100)


def never_run(seqs: list[Sequence[int]]) -> np.ndarray:
    raise AssertionError("no test here runs the model")


@pytest.fixture(scope="module")
def cpu_pool() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def svc(tiny_embedding_path: Path, cpu_pool: ThreadPoolExecutor) -> EmbeddingService:
    facts = ModelFacts.from_folder(str(tiny_embedding_path), ["cpu"], None, EMB_MAX, None)
    return EmbeddingService(facts, never_run, "emb", "emb", SETTINGS, Metrics(), cpu_pool)


@pytest.fixture(scope="module")
def rsvc(tiny_reranker_path: Path, cpu_pool: ThreadPoolExecutor) -> RerankService:
    facts = ModelFacts.from_folder(str(tiny_reranker_path), ["cpu"], None, RR_MAX, None)
    return RerankService(facts, "card", never_run, "rr", "rr", SETTINGS, Metrics(), cpu_pool)


@pytest.fixture(scope="module")
def ref_embedder(tiny_embedding_path: Path) -> Embedder:
    return Embedder.from_pretrained(tiny_embedding_path, device="cpu", max_length=EMB_MAX)


@pytest.fixture(scope="module")
def ref_reranker(tiny_reranker_path: Path) -> Reranker:
    return Reranker.from_pretrained(tiny_reranker_path, device="cpu", max_length=RR_MAX)


@pytest.fixture(scope="module")
def tok(svc: EmbeddingService) -> QwenTokenizer:
    return svc.tokenizer


def refused(call: Callable[..., Any], *args: Any, **kw: Any) -> APIError:
    """The APIError `call` raises; it must be one line."""
    with pytest.raises(APIError) as info:
        call(*args, **kw)
    assert "\n" not in info.value.message, info.value.message
    return info.value


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- check_unicode -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("texts", [[], ["plain"], ["北京", "😀 emoji", "e\u0301", "\x00nul", "\U0010ffff"]], ids=repr)
def test_valid_unicode_passes(texts: list[str]) -> None:
    check_unicode(texts, "input")


@pytest.mark.parametrize(("texts", "message"), [
    (["\ud800"], "input[0] holds a lone surrogate ('\\ud800' at 0); send valid Unicode text."),
    (["ok", "ab\udfffc"], "input[1] holds a lone surrogate ('\\udfff' at 2); send valid Unicode text."),
    (["ok", "😀", "x\ud83d"], "input[2] holds a lone surrogate ('\\ud83d' at 1); send valid Unicode text."),
    (["\ud83d\ude00"], "input[0] holds a lone surrogate ('\\ud83d' at 0); send valid Unicode text."),  # a pair
])
def test_a_lone_surrogate_is_a_400_naming_the_input_and_position(texts: list[str], message: str) -> None:
    err = refused(check_unicode, texts, "input")
    assert (err.status, err.param, err.message) == (400, "input", message)
    assert err.message.encode("utf-8")  # the message itself is sendable


# -- head_text ---------------------------------------------------------------------------------------------------
LONG_TEXTS = {
    "words": "The capital of China is Beijing. " * 300,
    "cjk": "北京是中国的首都。" * 800,
    "emoji": "😀🎉 ok " * 1500,
    "digits": "3141592653" * 800,
    "letters": "a" * 9000,
    "dna": "".join("ACGT"[(i * i + 7 * i) % 4] for i in range(12_000)),
    "spaces": "x" + " " * 12_000 + "y",
}
RUNS = {  # runs of one character, which the tokenizer splits from the start of their piece (run_cut)
    "equals": "=" * 5000,
    "newlines": "\n" * 5000,
    "spaces": "x" + " " * 12_000 + "y",
    "space-led equals": "ab " + "=" * 70_001 + "\n\nend",  # a leading space joins the run's piece
    "letter-led run": "!" + "a" * 9000,
    "spaces before newlines": "  " + "\n" * 5003,
    "tabs": "\t" * 4099 + "z",
    "cjk stops": "。" * 6001,
}


def check_cut(tok: QwenTokenizer, text: str, keep: int, left: bool) -> None:
    """head_text's cut is an end (start) of `text` whose last (first) `keep` ids are the whole text's."""
    whole = tok.encode_one(text)
    cut, was_cut = head_text(tok, text, keep, left)
    part = tok.encode_one(cut)
    assert (text.endswith(cut) if left else text.startswith(cut)) and was_cut == (cut != text)
    if was_cut:
        assert len(part) > keep + CUT_MARGIN  # docs/server.md: 16 tokens more than are kept
    assert (part[len(part) - keep:] == whole[len(whole) - keep:]) if left else (part[:keep] == whole[:keep])


@pytest.mark.parametrize(("name", "left"), [*((n, lf) for n in LONG_TEXTS for lf in (False, True))])
@pytest.mark.parametrize("keep", [0, 1, 16, 64])
def test_a_cut_keeps_the_tokens_of_the_whole_text(tok: QwenTokenizer, name: str, keep: int, left: bool) -> None:
    check_cut(tok, LONG_TEXTS[name], keep, left)


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("keep", [1, 5, 16, 64, 300])
@pytest.mark.parametrize("name", list(RUNS))
def test_a_cut_keeps_the_tokens_of_a_long_run(tok: QwenTokenizer, name: str, keep: int, left: bool) -> None:
    """TEI truncation_direction Left / Cohere truncate START: a cut inside a run of 64 '=' (32 newlines, 128
    spaces) a token once gave the run's last tokens aligned to the cut, not to the whole text."""
    check_cut(tok, RUNS[name], keep, left)


@pytest.mark.slow  # ~2 s each: 8M characters
@pytest.mark.parametrize("left", [False, True])
def test_a_huge_run_is_read_by_its_characters_per_token(tok: QwenTokenizer, left: bool,
                                                        encoded_chars: Callable[[Any], list[int]]) -> None:
    """8 MB of spaces (128 a token): the first cut (8 x 8192 characters) shows 128 characters per token, the
    second holds enough; growing x4 read 5.5M characters in four cuts (~9 s)."""
    seen = encoded_chars(tok)
    cut, was_cut = head_text(tok, " " * 8_000_000, 8192, left)
    assert was_cut and len(seen) == 2 and seen[0] == 8 * 8192 and sum(seen) < 1_500_000
    assert seen[-1] == len(cut)


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize(("text", "keep"), [("short", 1), ("x" * 8, 1), ("x" * 8, 0), ("word " * 51, 32), ("", 5)])
def test_a_text_within_eight_characters_per_kept_token_is_not_cut(tok: QwenTokenizer, text: str, keep: int,
                                                                  left: bool) -> None:
    assert head_text(tok, text, keep, left) == (text, False)


def test_the_tokenizer_reads_what_is_kept_not_what_is_sent(tok: QwenTokenizer,
                                                           encoded_chars: Callable[[Any], list[int]]) -> None:
    """Hand-worked: keep 64 -> a first cut of 8 x 64 = 512 characters, ~100 tokens of "word ", over 64 + 16."""
    seen = encoded_chars(tok)
    cut, was_cut = head_text(tok, "word " * 200_000, 64)
    assert (len(cut), was_cut, seen) == (512, True, [512])
    seen.clear()
    cut, was_cut = head_text(tok, "word " * 200_000, 64, left=True)
    assert (len(cut), was_cut, seen) == (512, True, [512])


# -- named_prompts -----------------------------------------------------------------------------------------------
def write_config(folder: Path, content: str | bytes) -> Path:
    path = folder / "config_sentence_transformers.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


def test_the_built_in_prompts_are_the_model_cards(tmp_path: Path) -> None:
    assert named_prompts(tmp_path) == {"query": CARD_QUERY_PROMPT, "document": ""}


def test_the_models_prompts_are_added_and_override_the_built_in_ones(tmp_path: Path) -> None:
    config = {"prompts": {"query": "Q: ", "passage": "P: ", "bad": 3, "none": None}, "default_prompt_name": None}
    assert named_prompts(write_config(tmp_path, json.dumps(config))) == {"query": "Q: ", "document": "",
                                                                          "passage": "P: "}


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"null", b"[1, 2]", b'{"prompts": null}',
                                     b'{"other": 1}', b""], ids=repr)
def test_a_config_without_usable_prompts_gives_the_built_in_ones(tmp_path: Path, content: bytes) -> None:
    assert named_prompts(write_config(tmp_path, content)) == {"query": CARD_QUERY_PROMPT, "document": ""}


@pytest.mark.parametrize("prompts", [["query"], "query"])
def test_prompts_that_are_not_an_object_are_ignored_like_a_broken_file(tmp_path: Path, prompts: object) -> None:
    assert named_prompts(write_config(tmp_path, json.dumps({"prompts": prompts}))) == {
        "query": CARD_QUERY_PROMPT, "document": ""}


def test_a_prompt_with_a_lone_surrogate_is_ignored_like_one_that_is_not_text(tmp_path: Path) -> None:
    config = '{"prompts": {"broken": "\\ud800 Q: ", "passage": "P: "}}'  # JSON may carry a lone surrogate
    assert named_prompts(write_config(tmp_path, config)) == {"query": CARD_QUERY_PROMPT, "document": "",
                                                             "passage": "P: "}


# -- prefix_for --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("instruction", "input_type", "prompt_name", "prefix"), [
    (None, None, None, None),
    (None, "document", None, None),
    (None, "search_document", None, None),
    (None, "query", None, CARD_QUERY_PROMPT),
    (None, "search_query", None, CARD_QUERY_PROMPT),
    ("Find the law", None, None, "Instruct: Find the law\nQuery:"),  # an instruction implies the query template
    ("Find the law", "query", None, "Instruct: Find the law\nQuery:"),
    (None, None, "query", CARD_QUERY_PROMPT),
    (None, None, "document", None),
])
def test_the_text_put_before_each_input(svc: EmbeddingService, instruction: str | None, input_type: str | None,
                                        prompt_name: str | None, prefix: str | None) -> None:
    assert svc.prefix_for(instruction, input_type, prompt_name) == prefix


@pytest.mark.parametrize(("instruction", "input_type", "prompt_name", "param", "message"), [
    ("x", None, "query", "prompt_name", "prompt_name chooses the prompt itself; drop instruction / input_type."),
    (None, "query", "document", "prompt_name", "prompt_name chooses the prompt itself; drop instruction / input_type."),
    (None, None, "passage", "prompt_name", "prompt_name 'passage' is not one of this model's prompts (document, "
                                           "query)."),
    ("x", "document", None, "instruction", "instruction applies to queries only; drop it or use input_type='query'."),
])
def test_contradictory_prompt_choices_are_a_400(svc: EmbeddingService, instruction: str | None,
                                                input_type: str | None, prompt_name: str | None, param: str,
                                                message: str) -> None:
    err = refused(svc.prefix_for, instruction, input_type, prompt_name)
    assert (err.status, err.param, err.message) == (400, param, message)


def test_an_unknown_prompt_name_is_shown_short(svc: EmbeddingService) -> None:
    err = refused(svc.prefix_for, None, None, "p" * 10_000 + "\n")
    assert len(err.message) < 200


# -- texts -> ids ------------------------------------------------------------------------------------------------
TEXTS = ["hello", "The capital of China is Beijing.", "word " * 100, "北京是中国的首都。" * 60, "😀 " * 300,
         "tab\tand\nnewline  "]


@pytest.mark.parametrize("instruction", [None, "Find the law", "\u6307\u4ee4 😀"])
def test_texts_are_tokenized_exactly_as_the_embedder_does(svc: EmbeddingService, ref_embedder: Embedder,
                                                          instruction: str | None) -> None:
    ids = svc.texts_to_ids(TEXTS, svc.prefix_for(instruction, None, None), True, "input")
    assert ids == ref_embedder.tokenize(TEXTS, instruction)
    assert max(map(len, ids)) == EMB_MAX and all(s[-1] == svc.eos_id for s in ids)


def test_input_type_query_is_the_embedders_default_instruction(svc: EmbeddingService, ref_embedder: Embedder) -> None:
    from qwen_embed import DEFAULT_INSTRUCTION

    ids = svc.texts_to_ids(TEXTS, svc.prefix_for(None, "query", None), True, "input")
    assert ids == ref_embedder.tokenize(TEXTS, DEFAULT_INSTRUCTION)


@pytest.mark.parametrize("instruction", [None, "Find it"])
def test_a_left_cut_keeps_the_instruction_the_end_of_the_text_and_the_end_token(svc: EmbeddingService,
                                                                                tok: QwenTokenizer,
                                                                                instruction: str | None) -> None:
    prefix = svc.prefix_for(instruction, None, None)
    for text in TEXTS:
        ids = svc.texts_to_ids([text], prefix, True, "input", left=True)[0]
        content = tok.encode_for_embedding([(prefix or "") + text], 1 << 30)[0][:-1]
        head = len(tok.encode_one(prefix)) if prefix else 0
        room = EMB_MAX - 1
        expected = [*content, svc.eos_id] if len(content) <= room else \
            [*content[:head], *content[len(content) - (room - head):], svc.eos_id]
        assert ids == expected, text[:20]


def test_an_input_over_the_max_length_with_truncate_false_is_a_413(svc: EmbeddingService,
                                                                   ref_embedder: Embedder) -> None:
    over = "word " * 40  # 200 characters: not cut by characters (8 x 32 = 256), more than 32 tokens
    n = len(ref_embedder.tokenizer.encode_one(over)) + 1
    assert n > EMB_MAX
    err = refused(svc.texts_to_ids, ["fits", over], None, False, "input")
    assert (err.status, err.code, err.param) == (413, "input_too_long", "input")
    assert err.message == f"input[1] has {n} tokens, over the model's max length {EMB_MAX}; shorten it or ask " \
                          'for truncation (truncate=true; on /v2/embed, truncate="END" or "START").'
    huge = refused(svc.texts_to_ids, ["word " * 100_000], None, False, "texts")
    assert huge.message.startswith("texts[0] has more than ") and "over the model's max length 32" in huge.message
    assert svc.texts_to_ids(["fits"], None, False, "input") == ref_embedder.tokenize(["fits"])


@pytest.mark.parametrize(("limit", "longest"), [(1, 1), (5, 5), (EMB_MAX, EMB_MAX), (10_000, EMB_MAX)])
def test_cohere_max_tokens_caps_each_input_end_token_included(svc: EmbeddingService, limit: int,
                                                              longest: int) -> None:
    ids = svc.texts_to_ids(TEXTS, None, True, "texts", limit=limit)
    assert max(map(len, ids)) == longest and all(s[-1] == svc.eos_id for s in ids)
    err = refused(svc.texts_to_ids, ["word " * 20], None, False, "texts", limit=5)
    assert err.status == 413 and "over max_tokens=5; " in err.message


# -- client token ids --------------------------------------------------------------------------------------------
def test_the_end_token_is_appended_unless_already_last(svc: EmbeddingService) -> None:
    eos = svc.eos_id
    assert svc.check_ids([[1, 2], [3, eos], [eos], [eos, 4]], True, "input") == [[1, 2, eos], [3, eos], [eos],
                                                                                  [eos, 4, eos]]


def test_too_many_ids_are_cut_keeping_the_end_token_or_refused(svc: EmbeddingService) -> None:
    long = list(range(100, 140))
    assert svc.check_ids([long], True, "input") == [[*long[:EMB_MAX - 1], svc.eos_id]]
    assert svc.check_ids([long], True, "input", left=True) == [[*long[-(EMB_MAX - 1):], svc.eos_id]]
    err = refused(svc.check_ids, [[1], long], False, "input")
    assert (err.status, err.message) == (413, "input[1] has 41 tokens, over the model's max length 32; shorten it "
                                              "or ask for truncation (truncate=true; on /v2/embed, "
                                              'truncate="END" or "START").')


@pytest.mark.parametrize(("ids", "message"), [
    ([[1], []], "input[1] is an empty token list; pass at least one token id."),
    ([[1, -1]], "input[0] holds token id -1, outside this model's vocabulary 0..151935."),
    ([[151936]], "input[0] holds token id 151936, outside this model's vocabulary 0..151935."),
    ([[0], [2**63]], f"input[1] holds token id {2**63}, outside this model's vocabulary 0..151935."),
])
def test_a_bad_token_list_is_a_400(svc: EmbeddingService, ids: list[list[int]], message: str) -> None:
    err = refused(svc.check_ids, ids, True, "input")
    assert (err.status, err.param, err.message) == (400, "input", message)


def test_the_vocabulary_bounds_are_accepted(svc: EmbeddingService) -> None:
    assert svc.check_ids([[0, 151935]], True, "input") == [[0, 151935, svc.eos_id]]


# -- counts ------------------------------------------------------------------------------------------------------
def test_input_counts(svc: EmbeddingService) -> None:
    err = refused(svc.check_count, 0, "input")
    assert (err.status, err.param, err.message) == (400, "input", "input is empty; pass at least one.")
    svc.check_count(4, "input")  # --max-inputs 4
    err = refused(svc.check_count, 5, "documents")
    assert (err.status, err.code, err.param) == (413, "too_many_inputs", "documents")
    assert err.message == "documents holds 5 entries, over the limit of 4 per request (--max-inputs); split the " \
                          "request."


def test_request_tokens(svc: EmbeddingService) -> None:
    svc.check_total([[1] * 60, [2] * 40], "input")  # --max-request-tokens 100
    err = refused(svc.check_total, [[1] * 60, [2] * 41], "input")
    assert (err.status, err.code, err.param) == (413, "too_many_tokens", "input")
    assert err.message == ("the request holds 101 tokens, over the limit of 100 per request (--max-request-tokens); "
                           "split it into smaller requests.")


def test_dimensions_are_32_to_the_hidden_size(svc: EmbeddingService) -> None:
    assert (svc.check_dim(None), svc.check_dim(32), svc.check_dim(64)) == (64, 32, 64)
    for bad in (31, 65, 0, -32):
        with pytest.raises(InputError, match=rf"dimensions={bad} is out of range: this model supports 32\.\.64") as e:
            svc.check_dim(bad)
        assert e.value.param == "dimensions"


# -- prepare -----------------------------------------------------------------------------------------------------
def prepare(svc: EmbeddingService, inputs: object, **kw: Any) -> list[list[int]]:
    options: dict[str, Any] = {"instruction": None, "input_type": None, "truncate": True, "what": "input"}
    return run(svc.prepare(inputs, timing=Timing(), **{**options, **kw}))  # type: ignore[no-any-return]


def test_each_input_shape_is_its_inputs(svc: EmbeddingService, ref_embedder: Embedder) -> None:
    eos = svc.eos_id
    assert prepare(svc, "hello") == ref_embedder.tokenize(["hello"])
    assert prepare(svc, ["a", "b"]) == ref_embedder.tokenize(["a", "b"])
    assert prepare(svc, [5, 6, 7]) == [[5, 6, 7, eos]]  # a flat list of ids is one input
    assert prepare(svc, [[5], [6, eos]]) == [[5, eos], [6, eos]]
    assert prepare(svc, [[5]], prompt_name="document") == [[5, eos]]  # the document prompt is nothing


def test_tokenization_is_timed(svc: EmbeddingService) -> None:
    timing = Timing()
    run(svc.prepare(["hello"] * 4, instruction=None, input_type=None, truncate=True, what="input", timing=timing))
    assert timing.tokenization > 0


@pytest.mark.parametrize(("inputs", "kw", "status", "message"), [
    ([], {}, 400, "input is empty; pass at least one."),
    (["a", ""], {}, 400, "input[1] is an empty string; every input needs at least one character."),
    ([1, 2], {"instruction": "x"}, 400, "instruction / input_type=query / prompt_name need text input, not token "
                                        "ids."),
    ([[1]], {"input_type": "query"}, 400, "instruction / input_type=query / prompt_name need text input, not token "
                                          "ids."),
    (["a"], {"limit": 0}, 400, "max_tokens=0 must be at least 1 (or left out for the model's max length 32)."),
    (["a"] * 5, {}, 413, None),
])
def test_bad_inputs_are_refused_before_any_work(svc: EmbeddingService, inputs: object, kw: dict[str, Any],
                                                status: int, message: str | None) -> None:
    err = refused(prepare, svc, inputs, **kw)
    assert err.status == status
    if message is not None:
        assert err.message == message


def test_the_request_token_limit_counts_after_truncation(svc: EmbeddingService) -> None:
    """docs/server.md's limits: tokens per request after truncation (--max-request-tokens 100 here)."""
    assert list(map(len, prepare(svc, ["word " * 100] * 3))) == [32, 32, 32]  # 96
    assert list(map(len, prepare(svc, [[7] * 1000] * 3))) == [32, 32, 32]
    err = refused(prepare, svc, ["word " * 100] * 4)
    assert (err.status, err.code) == (413, "too_many_tokens")
    assert err.message.startswith("the request holds 128 tokens, over the limit of 100 per request")


def test_a_lone_surrogate_in_the_instruction_is_located_in_the_instruction(svc: EmbeddingService) -> None:
    err = refused(prepare, svc, ["hello"], instruction="\ud800 find")
    assert (err.status, err.param) == (400, "instruction")
    assert err.message == "instruction holds a lone surrogate ('\\ud800' at 0); send valid Unicode text."
    err = refused(prepare, svc, ["hello"], instruction="find \udfff", input_type="query")
    assert err.message.startswith("instruction holds a lone surrogate ('\\udfff' at 5)")


# -- rerank ------------------------------------------------------------------------------------------------------
DOCS = ["Beijing", "The capital of China is Beijing. " * 2, "word " * 400, "北京" * 300]


@pytest.mark.parametrize(("instruction", "max_tokens_per_doc"), [(None, None), ("Find laws", None), (None, 5),
                                                                 ("Find laws", 1)])
def test_rerank_inputs_are_the_rerankers(rsvc: RerankService, ref_reranker: Reranker, instruction: str | None,
                                         max_tokens_per_doc: int | None) -> None:
    got = rsvc.build("What is the capital of China?", DOCS, instruction, max_tokens_per_doc, True)
    assert got == ref_reranker.build_input_ids("What is the capital of China?", DOCS, instruction=instruction,
                                               max_tokens_per_doc=max_tokens_per_doc)
    if max_tokens_per_doc is None:
        assert max(map(len, got)) == RR_MAX


def test_a_document_that_does_not_fit_with_truncate_false_is_a_413(rsvc: RerankService, ref_reranker: Reranker,
                                                                   tok: QwenTokenizer) -> None:
    fits = ["Beijing", "The capital of China is Beijing."]
    assert rsvc.build("capital?", fits, None, None, False) == ref_reranker.build_input_ids("capital?", fits)
    doc = "word " * 100  # 500 characters: not cut by characters, over 128 tokens with the template
    whole = len(RerankInputs(tok, "card", 1 << 20).build("capital?", [doc])[0])
    assert whole > RR_MAX
    err = refused(rsvc.build, "capital?", ["Beijing", doc], None, None, False)
    assert (err.status, err.code, err.param) == (413, "input_too_long", "documents")
    assert err.message == f"documents[1] has {whole} tokens, over the model's max length {RR_MAX}; shorten it or " \
                          'ask for truncation (truncate=true; on /v2/embed, truncate="END" or "START").'


def test_truncate_false_refuses_a_document_over_the_max_length_whatever_max_tokens_per_doc(
        rsvc: RerankService) -> None:
    doc = "word " * 100  # 500 characters: not cut by characters, over 128 tokens with the template
    whole = refused(rsvc.build, "capital?", [doc], None, None, False)
    for max_tokens_per_doc in (1000, 100_000, 101):  # more than max_length leaves: it is max_length that cuts
        err = refused(rsvc.build, "capital?", ["Beijing", doc], None, max_tokens_per_doc, False)
        assert (err.status, err.code, err.param) == (413, "input_too_long", "documents")
        assert err.message == whole.message.replace("documents[0]", "documents[1]")
    huge = refused(rsvc.build, "capital?", ["word " * 100_000], None, 1000, False)  # cut by characters first
    assert huge.message.startswith("documents[0] has more than ") and "over the model's max length" in huge.message
    # what max_tokens_per_doc keeps fits: the client's own cut, no 413
    assert rsvc.build("capital?", [doc], None, 50, False) == rsvc.build("capital?", [doc], None, 50, True)


def test_max_tokens_per_doc_cuts_documents_even_with_truncate_false(rsvc: RerankService,
                                                                    ref_reranker: Reranker) -> None:
    """Cohere's max_tokens_per_doc: long documents are cut to that many tokens (truncate concerns max_length)."""
    doc = "word " * 20
    assert rsvc.build("q", [doc], None, 4, False) == ref_reranker.build_input_ids("q", [doc], max_tokens_per_doc=4)


def rerank_prepare(rsvc: RerankService, query: str, docs: list[str], **kw: Any) -> list[list[int]]:
    options: dict[str, Any] = {"instruction": None, "max_tokens_per_doc": None, "truncate": True, "what": "documents"}
    return run(rsvc.prepare(query, docs, timing=Timing(), **{**options, **kw}))  # type: ignore[no-any-return]


@pytest.mark.parametrize(("query", "docs", "kw", "status", "message"), [
    ("q", [], {}, 400, "documents is empty; pass at least one."),
    ("", ["d"], {}, 400, "query is an empty string; pass the search query."),
    ("q", ["d", ""], {}, 400, "documents[1] is an empty string; every document needs at least one character."),
    ("q", ["d"], {"max_tokens_per_doc": 0}, 400, "max_tokens_per_doc=0 must be at least 1."),
    ("q", ["d"], {"max_tokens_per_doc": -5}, 400, "max_tokens_per_doc=-5 must be at least 1."),
    ("q", ["d"] * 5, {}, 413, None),
])
def test_bad_rerank_requests_are_refused(rsvc: RerankService, query: str, docs: list[str], kw: dict[str, Any],
                                         status: int, message: str | None) -> None:
    err = refused(rerank_prepare, rsvc, query, docs, **kw)
    assert err.status == status
    if message is not None:
        assert err.message == message


def test_a_rerank_request_over_the_token_limit_is_a_413(rsvc: RerankService, ref_reranker: Reranker) -> None:
    docs = ["d1", "d2", "d3", "d4"]  # four inputs of the template: over 100 tokens together
    total = sum(map(len, ref_reranker.build_input_ids("q", docs)))
    assert total > 100
    err = refused(rerank_prepare, rsvc, "q", docs)
    assert (err.status, err.code) == (413, "too_many_tokens") and f"holds {total} tokens" in err.message
    assert rerank_prepare(rsvc, "q", docs[:1]) == ref_reranker.build_input_ids("q", docs[:1])


def test_a_lone_surrogate_in_the_query_names_the_query(rsvc: RerankService) -> None:
    err = refused(rerank_prepare, rsvc, "cap\ud800ital", ["d"])
    assert (err.status, err.param) == (400, "query")
    assert err.message == "query holds a lone surrogate ('\\ud800' at 3); send valid Unicode text."
    err = refused(rerank_prepare, rsvc, "q", ["d"], instruction="\ud800")
    assert (err.param, err.message) == ("instruction", "instruction holds a lone surrogate ('\\ud800' at 0); send "
                                                       "valid Unicode text.")
