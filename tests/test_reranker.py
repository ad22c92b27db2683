"""Reranker behaviour through the public API."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qwen_embed import Reranker, RerankResult
from qwen_embed.embedder import DEFAULT_INSTRUCTION
from qwen_embed.errors import InputError
from qwen_embed.reranker import TEMPLATES, yes_probability


def test_yes_probability_is_two_way_softmax() -> None:
    torch.manual_seed(0)
    h, w_yes, w_no = torch.randn(5, 8), torch.randn(8), torch.randn(8)
    logits = torch.stack([h @ w_no, h @ w_yes], dim=1)
    assert torch.allclose(yes_probability(h, w_yes - w_no), logits.softmax(-1)[:, 1], atol=1e-6)


def test_score_and_rerank(reranker: Reranker) -> None:
    docs = ["Beijing is the capital.", "Gravity pulls.", "Rivers flow into the sea.", "Cells divide."]
    s = reranker.score("capital of China", docs)
    assert s.shape == (4,) and s.dtype == np.float32 and ((s > 0) & (s < 1)).all()
    ranked = reranker.rerank("capital of China", docs)
    assert [r.score for r in ranked] == sorted(s.tolist(), reverse=True)
    assert all(isinstance(r, RerankResult) and docs[r.index] == r.document for r in ranked)
    top = reranker.rerank("capital of China", docs, top_n=2)
    assert top == ranked[:2]
    assert np.allclose(reranker.score_pairs([("capital of China", d) for d in docs]), s, atol=1e-6)


def test_batch_invariance(reranker: Reranker) -> None:
    docs = [f"document number {i} " * (i + 1) for i in range(9)]
    together = reranker.score("query", docs)
    alone = np.array([reranker.score("query", [d])[0] for d in docs])
    assert np.abs(together - alone).max() <= 1e-5


def test_instruction_changes_scores(reranker: Reranker) -> None:
    a = reranker.score("q", ["doc one", "doc two"])
    b = reranker.score("q", ["doc one", "doc two"], instruction="Another task entirely")
    assert not np.allclose(a, b)


def test_templates_by_name(tiny_reranker_path: Path) -> None:
    assert set(TEMPLATES) == {"card", "official-eval"}
    ev = Reranker.from_pretrained(tiny_reranker_path, device="cpu", template="official-eval")
    text = ev.template.render("I", "Q", "D")
    assert "<Instruct>: I\n\n<Query>: Q\n\n<Document>: D<|im_end|>\n<|im_end|>\n<|im_start|>assistant" in text
    with pytest.raises(InputError, match="unknown reranker template 'fancy'"):
        Reranker.from_pretrained(tiny_reranker_path, template="fancy")


def test_max_tokens_per_doc(reranker: Reranker) -> None:
    long_doc = "word " * 300
    full = reranker.build_input_ids("q", [long_doc])[0]
    cut = reranker.build_input_ids("q", [long_doc], max_tokens_per_doc=10)[0]
    assert len(full) - len(cut) > 250


def test_seq_cls_tiny(tiny_checkpoint: Callable[..., Path]) -> None:
    rr = Reranker.from_pretrained(tiny_checkpoint("seq-cls", tokenizer="small"), device="cpu")
    assert rr.config.kind == "seq-cls" and rr.score("q", ["a", "b"]).shape == (2,)


@pytest.mark.parametrize(
    ("query", "docs", "needle"),
    [("", ["d"], "query must be"), (None, ["d"], "query must be"), ("q", [], "documents is empty"),
     ("q", [""], "empty string"), ("q", "one string", "single string"), ("q", [1], "int")],
)
def test_bad_input(reranker: Reranker, query: object, docs: object, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        reranker.score(query, docs)  # type: ignore[arg-type]


def test_query_too_long_for_max_length(tiny_reranker_path: Path) -> None:
    rr = Reranker.from_pretrained(tiny_reranker_path, device="cpu", max_length=100)
    with pytest.raises(InputError, match="shorten the query or raise max_length"):
        rr.score("long query " * 100, ["d"])
    with pytest.raises(InputError, match="top_n"):
        rr.rerank("q", ["d"], top_n=0)


def test_prefix_sharing_equals_unshared(reranker: Reranker) -> None:
    from qwen_embed.reranker import shared_prefix_length

    docs = ["Beijing is the capital of China.", "Gravity pulls.", "word " * 50, "x"]
    seqs = reranker.build_input_ids("capital of China", docs)
    assert shared_prefix_length(seqs) >= 16
    shared = reranker.score_ids(seqs, share_prefix=True)
    unshared = reranker.score_ids(seqs, share_prefix=False)
    assert np.abs(shared - unshared).max() <= 1e-5


def test_shared_prefix_length_leaves_two_tokens() -> None:
    from qwen_embed.reranker import shared_prefix_length

    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 1
    assert shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]) == 3
    assert shared_prefix_length([[1, 2, 3, 4, 5], [1, 2, 6, 4]]) == 2
    assert shared_prefix_length([[7], [1]]) == 0


def test_score_many_equals_score_per_query(tiny_reranker_path: Path) -> None:
    for share in (False, True):
        rr = Reranker.from_pretrained(tiny_reranker_path, device="cpu", share_prefix=share)
        queries = ["capital of China", "gravity", "rivers"]
        docs = [["Beijing.", "Gravity pulls.", "word " * 40], ["apple falls"], ["sea", "river mouth", "delta"]]
        many = rr.score_many(queries, docs)
        for q, d, got in zip(queries, docs, many, strict=True):
            assert np.abs(got - rr.score(q, d)).max() <= 1e-5
    with pytest.raises(InputError, match="equally long"):
        rr.score_many(["a", "b"], [["d"]])
    with pytest.raises(InputError, match="empty string"):
        rr.score_many(["a"], [[""]])


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_long_documents_give_the_ids_of_the_whole_text_cut(real_tokenizer_path: Path, template: str,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          encoded_chars: Callable[[Any], list[int]]) -> None:
    """A long document is tokenized only as far as max_length keeps (a 2.3M-character book reads a few
    thousand characters), and its input is the reference's: prefix + the whole body's ids cut to fit + tail."""
    from tokenizers import Tokenizer

    import qwen_embed.tokenizer as T
    from qwen_embed.reranker import DEFAULT_INSTRUCTION, RerankInputs
    from qwen_embed.tokenizer import QwenTokenizer

    ref = Tokenizer.from_file(str(real_tokenizer_path))
    tok = QwenTokenizer(Tokenizer.from_file(str(real_tokenizer_path)))
    inputs = RerankInputs(tok, template, max_length=96)
    tmpl = TEMPLATES[template]
    book = "A line of a long book, with words.\n" * 70_000
    docs = ["a short document", book, "two\nlines " * 40]

    def reference(max_tokens_per_doc: int | None) -> list[list[int]]:
        enc = lambda s: ref.encode(s, add_special_tokens=False).ids  # noqa: E731
        head = len(enc(tmpl.head.format(instruction=DEFAULT_INSTRUCTION, query="q?")))
        budget = 96 - len(enc(tmpl.prefix)) - len(enc(tmpl.tail))
        if max_tokens_per_doc is not None:
            budget = min(budget, head + max_tokens_per_doc)
        return [enc(tmpl.prefix) + enc(tmpl.body(DEFAULT_INSTRUCTION, "q?", d))[:budget] + enc(tmpl.tail)
                for d in docs]

    encoded = encoded_chars(tok)
    monkeypatch.setattr(T, "PIECE_CHARS", 1000)
    for per_doc in (None, 5):
        encoded.clear()
        assert inputs.build("q?", docs, max_tokens_per_doc=per_doc) == reference(per_doc)
        assert sum(encoded) < 5000, sum(encoded)


@pytest.mark.parametrize("template", ["card", "official-eval"])
def test_a_max_length_that_cannot_hold_the_template_is_refused_at_load(tiny_reranker_path: Path,
                                                                      template: str) -> None:
    """Before, a reranker loaded with max_length=64 failed on every call (and `serve` never became ready)."""
    rr = Reranker.from_pretrained(tiny_reranker_path, device="cpu", template=template)
    tok = rr.tokenizer
    tmpl = rr.template
    fixed = (len(tok.encode_one(tmpl.prefix)) + len(tok.encode_one(tmpl.tail))
             + len(tok.encode_one(tmpl.head.format(instruction=DEFAULT_INSTRUCTION, query=""))))
    with pytest.raises(InputError, match=f"max_length={fixed + 1} cannot hold a reranker input: the {template!r} "
                                         f"template with the default instruction takes {fixed} tokens before any "
                                         f"query or document; use max_length {fixed + 2} at the very least"):
        Reranker.from_pretrained(tiny_reranker_path, device="cpu", template=template, max_length=fixed + 1)
    Reranker.from_pretrained(tiny_reranker_path, device="cpu", template=template, max_length=fixed + 2)
    short = Reranker.from_pretrained(tiny_reranker_path, device="cpu", template=template, max_length=fixed + 8)
    assert short.score("q", ["a long document " * 20]).shape == (1,)  # the document is cut to fit
    with pytest.raises(InputError, match="shorten the query or raise max_length"):
        short.score("a much longer query than eight tokens can hold", ["x"])


def test_counts_take_numpy_integers(reranker: Reranker) -> None:
    docs = ["alpha", "beta", "gamma"]
    want = reranker.rerank("q", docs)
    assert reranker.rerank("q", docs, top_n=np.int64(2)) == want[:2]
    assert reranker.build_input_ids("q", docs, max_tokens_per_doc=np.int64(1)) == \
        reranker.build_input_ids("q", docs, max_tokens_per_doc=1)


def test_collections_of_queries_and_pairs_are_read_by_position(reranker: Reranker) -> None:
    """A numpy array, a generator or a pandas Series (whatever its index) of queries or pairs: the same scores
    as the list, each equal to `score` of that query alone (they failed with ValueError / TypeError / KeyError)."""
    pd = pytest.importorskip("pandas")
    queries, docs = ["gravity", "rivers"], [["apple falls", "sea"], ["delta"]]
    alone = [reranker.score(q, d) for q, d in zip(queries, docs, strict=True)]
    for qs, ds in [(np.array(queries), docs), ((q for q in queries), iter(docs)),
                   (pd.Series(queries, index=[7, 3]), pd.Series(docs, index=[7, 3]))]:
        got = reranker.score_many(qs, ds)
        for g, a in zip(got, alone, strict=True):
            np.testing.assert_allclose(g, a, atol=1e-6)
    pairs = [(q, d) for q, ds in zip(queries, docs, strict=True) for d in ds]
    flat = np.concatenate(alone)
    np.testing.assert_allclose(reranker.score_pairs(np.array(pairs)), flat, atol=1e-6)
    np.testing.assert_allclose(reranker.score_pairs(p for p in pairs), flat, atol=1e-6)


@pytest.mark.parametrize(("call", "needle"), [
    (lambda r: r.score_many(["q"], None), "documents must be a list of lists of strings, got NoneType"),
    (lambda r: r.score_many({"q"}, [["d"]]), "queries must be an ordered list, got a set"),
    (lambda r: r.score_many(["q"], [["d", None]]), r"documents\[0\]\[1\] must be a string, got NoneType"),
    (lambda r: r.score_pairs([("q", None)]), r"pairs\[0\]\[1\] \(the document\) must be a string, got NoneType"),
    (lambda r: r.score_pairs([(b"q", "d")]), r"pairs\[0\]\[0\], the query, must be a non-empty string"),
    (lambda r: r.score_pairs("qd"), "pairs must be a list of \\(query, document\\) pairs, got a single string"),
    (lambda r: r.rerank("q", {"a", "b"}), "documents must be an ordered list, got a set"),
    (lambda r: r.score_ids([[10**9]]), "outside this model's vocabulary"),
])
def test_bad_collections_are_one_line_errors(reranker: Reranker, call: Callable[[Reranker], object],
                                             needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        call(reranker)
