"""End-token policy, the real Qwen tokenizer's facts, and input validation."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from qwen_embed import Embedder, Reranker
from qwen_embed.errors import InputError, TokenizerError
from qwen_embed.tiny import train_small_tokenizer
from qwen_embed.tokenizer import QwenTokenizer, check_texts, truncate_keep_end


def test_real_tokenizer_embedder_ids(real_tokenizer_path: Path, tiny_checkpoint: Callable[..., Path]) -> None:
    for post in (True, False):  # current official tokenizer (appends) and older one (does not)
        path = tiny_checkpoint("embedding", tokenizer=str(real_tokenizer_path), eos_postprocessor=post)
        emb = Embedder.from_pretrained(path, device="cpu")
        assert emb.tokenizer.appends_eos is post
        assert emb.tokenize(["test"]) == [[1944, 151643]]


def test_real_tokenizer_yes_no(real_tokenizer_path: Path) -> None:
    tok = QwenTokenizer(Tokenizer.from_file(str(real_tokenizer_path)))
    assert tok.single_token_id("yes") == 9693 and tok.single_token_id("no") == 2152
    assert tok.eos_id == 151643 and tok.token_id("<|im_end|>") == 151645


def test_real_tokenizer_reranker_ids_equal_template_string(real_tokenizer_path: Path,
                                                           tiny_checkpoint: Callable[..., Path]) -> None:
    path = tiny_checkpoint("reranker", tokenizer=str(real_tokenizer_path))
    tok = Tokenizer.from_file(str(real_tokenizer_path))
    q, docs, instr = "What is the capital of China?", ["The capital of China is Beijing.", "Gravity."], "Find it"
    for template in ("card", "official-eval"):
        rr = Reranker.from_pretrained(path, device="cpu", template=template)
        ids = rr.build_input_ids(q, docs, instruction=instr)
        for d, got in zip(docs, ids, strict=True):
            want = tok.encode(rr.template.render(instr, q, d), add_special_tokens=False).ids
            assert got == want
    card = Reranker.from_pretrained(path, device="cpu").template.render(instr, q, docs[0])
    assert card == (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
        'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
        "<Instruct>: Find it\n<Query>: What is the capital of China?\n<Document>: The capital of China is Beijing."
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_end_token_appended_exactly_once_and_kept_when_truncating(embedder: Embedder) -> None:
    eos = embedder.tokenizer.eos_id
    seqs = embedder.tokenize(["plain", "x" * 5000])
    assert all(s[-1] == eos and s.count(eos) == 1 for s in seqs)


@pytest.mark.parametrize(("ids", "max_length", "side", "head", "want"), [
    ([1, 2, 3], 8, "left", 2, [1, 2, 3, 9]),  # fits: untouched
    ([1, 2, 3, 4, 5, 6], 4, "right", 0, [1, 2, 3, 9]),  # the end of the content goes
    ([1, 2, 3, 4, 5, 6], 4, "left", 0, [4, 5, 6, 9]),  # its start goes
    ([1, 2, 3, 4, 5, 6], 5, "left", 2, [1, 2, 5, 6, 9]),  # ... after the kept head (a prompt)
    ([1, 2, 3, 4, 5, 6], 4, "left", 3, [4, 5, 6, 9]),  # a head that leaves no room for content: not kept
    ([1, 2, 3], 1, "left", 0, [9]),
])
def test_truncate_keep_end_sides(ids: list[int], max_length: int, side: str, head: int, want: list[int]) -> None:
    assert truncate_keep_end(ids, max_length, 9, side, head) == want


def test_truncate_keep_end_refuses_an_unknown_side() -> None:
    with pytest.raises(InputError, match="'middle' is not one of right, left"):
        truncate_keep_end([1, 2], 1, 9, "middle")


def test_tokenizer_without_yes_token_is_refused() -> None:
    tok = QwenTokenizer(train_small_tokenizer())
    with pytest.raises(TokenizerError, match="encodes to"):
        tok.single_token_id("yesno maybe")


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.json is missing"):
        QwenTokenizer.from_dir(tmp_path)


def test_loads_are_cached_per_file_version(tmp_path: Path) -> None:
    """One parse per file version: the same file gives the same instance, an edited or corrupted one is read
    again (and an unreadable one is reported, never cached)."""
    path = tmp_path / "tokenizer.json"
    path.write_text(train_small_tokenizer().to_str())
    first = QwenTokenizer.from_dir(tmp_path)
    assert QwenTokenizer.from_dir(tmp_path) is first
    edited = train_small_tokenizer(vocab_size=600)
    path.write_text(edited.to_str())
    second = QwenTokenizer.from_dir(tmp_path)
    assert second is not first and second.vocab_size == edited.get_vocab_size(with_added_tokens=True)
    path.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot be read"):
        QwenTokenizer.from_dir(tmp_path)


def test_folders_with_the_same_tokenizer_share_one_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies of one tokenizer.json in several folders are parsed once (by content); each folder keeps its own
    instance (its own path in messages), and a different file is parsed on its own."""
    import qwen_embed.tokenizer as tokenizer_module

    parsed: list[int] = []
    monkeypatch.setattr(tokenizer_module, "_PARSED", {})  # none of these contents parsed before
    real_parse = Tokenizer.from_buffer
    monkeypatch.setattr(tokenizer_module, "Tokenizer", type("T", (), {"from_buffer": staticmethod(
        lambda data: parsed.append(len(data)) or real_parse(data))}))
    text = train_small_tokenizer(vocab_size=500).to_str()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_text(text)
    a, b = QwenTokenizer.from_dir(tmp_path / "a"), QwenTokenizer.from_dir(tmp_path / "b")
    assert parsed == [len(text.encode())] and a is not b and a.tok is b.tok
    assert a.source.endswith("a/tokenizer.json") and b.source.endswith("b/tokenizer.json")
    assert a.encode_one("hello") == b.encode_one("hello")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "tokenizer.json").write_text(train_small_tokenizer(vocab_size=600).to_str())
    c = QwenTokenizer.from_dir(tmp_path / "c")
    assert len(parsed) == 2 and c.tok is not a.tok and c.vocab_size != a.vocab_size


@pytest.mark.parametrize(
    ("texts", "needle"),
    [([], "empty"), ("a string", "single string"), ([""], r"texts\[0\] is an empty string"),
     (["ok", 3], r"texts\[1\] must be a string, got int"), (["ok", None], "NoneType"), (42, "list of strings")],
)
def test_check_texts(texts: object, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        check_texts(texts)


def test_lone_surrogate_is_an_input_error() -> None:
    with pytest.raises(InputError, match="lone surrogate"):
        check_texts(["ok", "bad \ud800 text"])


FRAGMENTS = ["word", "Word", "it's", "'S", " ", "  ", "\t", "\n", "\n\n", "\r\n", " \n", "\t\n ", "\u00a0", "\u3000",
             "é", "e\u0301", "\u0301", "中文字", "🙂", "12345", "...", "=", "-->", "<|endoftext|>", "<|im_start|>",
             "\u2028", "\x85", "\x1c", "\x0b", "\f"]


def random_lines(seed: int, n: int) -> str:
    import random

    rng = random.Random(seed)
    return "".join(rng.choice(FRAGMENTS) for _ in range(n))


def test_long_texts_encode_in_line_pieces_with_the_ids_of_one_piece(real_tokenizer_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut at every line start (pieces of >= 8 characters): newline runs, spaces and tabs before and after a
    newline, a combining mark or a special token right after one, Unicode whitespace; the ids equal those of
    `tokenizers` on the whole text, which is the reference."""
    import qwen_embed.tokenizer as T

    tok = Tokenizer.from_file(str(real_tokenizer_path))
    ours = QwenTokenizer(Tokenizer.from_file(str(real_tokenizer_path)))
    assert ours.splits_long_texts
    monkeypatch.setattr(T, "PIECE_CHARS", 8)
    texts = [random_lines(seed, 3000) for seed in range(12)] + ["short", "x\ny", "\n" * 40 + "end"]
    assert sum(len(T.line_pieces(t, 8)) for t in texts) > 2000  # cut everywhere it may be
    want = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    assert ours.encode(texts) == want
    text = (("=" * 63 + "\n") * 20_000)  # 1.3 MB, the default piece size: 20 pieces
    monkeypatch.setattr(T, "PIECE_CHARS", 1 << 16)
    assert len(T.line_pieces(text)) == 20 and "".join(T.line_pieces(text)) == text
    assert ours.encode([text]) == [tok.encode(text, add_special_tokens=False).ids]


def test_a_tokenizer_with_another_pre_tokenizer_is_never_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2's ByteLevel regex (qwen_embed.tiny's tokenizer) splits '  \\n' before 'x' differently from '  \\n' at
    the end of a text, so cutting there could change the ids: such a tokenizer encodes every text whole."""
    import qwen_embed.tokenizer as T

    small = train_small_tokenizer()
    assert not T.splits_at_line_starts(small) and small.pre_tokenizer is not None
    text = "ab  \nxy  \nzz"

    def pieces(s: str) -> list[str]:
        return [p for p, _ in small.pre_tokenizer.pre_tokenize_str(s)]  # type: ignore[union-attr]

    assert [p for c in T.line_pieces(text, 1) for p in pieces(c)] != pieces(text)  # why the check exists
    monkeypatch.setattr(T, "PIECE_CHARS", 1)
    assert QwenTokenizer(small).encode([text]) == [small.encode(text, add_special_tokens=False).ids]


@pytest.mark.parametrize("post", [True, False], ids=["appends-end-token", "appends-nothing"])
def test_long_embedder_inputs_in_pieces_equal_the_whole_text(real_tokenizer_path: Path,
                                                              tiny_checkpoint: Callable[..., Path],
                                                              monkeypatch: pytest.MonkeyPatch, post: bool,
                                                              encoded_chars: Callable[[Any], list[int]]) -> None:
    """Embedder inputs cut at every line start (pieces of >= 8 characters) and encoded only as far as the
    truncation keeps: the ids and untruncated lengths of `tokenizers` on the whole text with its own
    post-processor, for the current official tokenizer (appends the end token) and the older one."""
    import qwen_embed.tokenizer as T

    path = tiny_checkpoint("embedding", tokenizer=str(real_tokenizer_path), eos_postprocessor=post)
    ours = QwenTokenizer(Tokenizer.from_file(str(path / "tokenizer.json")))
    ref = Tokenizer.from_file(str(path / "tokenizer.json"))
    assert ours.splits_embedder_inputs and ours.appends_eos is post
    eos = ours.eos_id
    texts = ["short", *(random_lines(seed, 1500) for seed in range(6)), "x\ny", "\n" * 30 + "end"]

    def reference(max_length: int) -> list[list[int]]:
        out = []
        for e in ref.encode_batch(texts, add_special_tokens=True):
            ids = e.ids[:-1] if post else e.ids  # the tokenizer's own end token, when it adds one
            room = max(max_length - 1, 0)
            out.append([*ids[:room], eos])
        return out

    monkeypatch.setattr(T, "PIECE_CHARS", 8)
    for max_length in (*range(1, 90), 700, 10**9):  # every stop of the piece rounds
        assert ours.encode_for_embedding(texts, max_length) == reference(max_length), max_length
    assert ours.embedding_lengths(texts) == [len(ids) for ids in reference(10**9)]

    encoded = encoded_chars(ours)  # characters encoded: a long text truncated early is not read to its end
    monkeypatch.setattr(T, "PIECE_CHARS", 1000)
    book = "A line of a long book.\n" * 100_000  # 2.3M characters
    assert ours.encode_for_embedding([book], 64) == [[*ref.encode(book[:5000], add_special_tokens=False).ids[:63], eos]]
    assert sum(encoded) < 3000


def test_encode_with_a_limit_reads_only_as_far_as_kept(real_tokenizer_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       encoded_chars: Callable[[Any], list[int]]) -> None:
    """`encode(texts, limit)` gives at least the first `limit` ids of each text, equal to those of the whole
    text (cut at every line start, pieces of >= 8 characters, every limit that stops a round), and a long
    text truncated early is not read to its end."""
    import qwen_embed.tokenizer as T

    ref = Tokenizer.from_file(str(real_tokenizer_path))
    ours = QwenTokenizer(Tokenizer.from_file(str(real_tokenizer_path)))
    texts = ["short", *(random_lines(seed, 1500) for seed in range(6)), "\n" * 30 + "end"]
    whole = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    monkeypatch.setattr(T, "PIECE_CHARS", 8)
    for limit in (*range(1, 90), 700, 10**9):
        got = ours.encode(texts, limit=limit)
        assert [g[:limit] for g in got] == [w[:limit] for w in whole], limit
        assert all(len(g) >= min(limit, len(w)) and g == w[:len(g)] for g, w in zip(got, whole, strict=True))
    encoded = encoded_chars(ours)
    monkeypatch.setattr(T, "PIECE_CHARS", 1000)
    book = "A line of a long book.\n" * 100_000  # 2.3M characters
    assert ours.encode([book], limit=64)[0][:64] == ref.encode(book[:5000], add_special_tokens=False).ids[:64]
    assert sum(encoded) < 3000


@pytest.mark.parametrize(("texts", "needle"), [
    (b"abc", "got bytes; decode it first"),  # was "texts[0] is a int, not a string: 97"
    ({"b", "a"}, "got a set, whose order is arbitrary"), ({"a": 1}, "got a dict, whose order is arbitrary"),
    ([b"abc"], r"texts\[0\] must be a string, got bytes: b'abc'; decode it first"),
])
def test_check_texts_refuses_bytes_and_unordered_collections(texts: object, needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        check_texts(texts)


def test_check_texts_takes_ordered_collections_by_position() -> None:
    import numpy as np
    import pandas as pd

    series = pd.Series(["b", "a"], index=[10, 3])
    assert check_texts(series) == ["b", "a"] == check_texts(np.array(["b", "a"])) == check_texts(iter(["b", "a"]))
    assert all(type(t) is str for t in check_texts(np.array(["b", "a"])))


def test_check_ids_refuses_what_the_model_cannot_embed() -> None:
    import numpy as np

    from qwen_embed.tokenizer import check_ids

    assert check_ids(np.array([[1, 2], [3, 4]]), 10, 8) == [[1, 2], [3, 4]]
    assert check_ids((x for x in [(1, 2)]), 10, 8) == [[1, 2]]
    for seqs, needle in [([[]], r"seqs\[0\] holds 0 token ids; an input takes 1\.\.8"),
                         ([[1] * 9], r"holds 9 token ids; an input takes 1\.\.8"),
                         ([[1, -1]], r"token id -1, outside this model's vocabulary 0\.\.9"),
                         ([[10]], r"token id 10, outside"), (["abc"], r"seqs\[0\] must be a list of token ids"),
                         ([1, 2], r"seqs\[0\] must be a list of token ids, got int"),
                         ([[1.5]], "integer token ids, got float"), ([[True]], "integer token ids, got bool"),
                         ([], "seqs is empty"), ("abc", "single string")]:
        with pytest.raises(InputError, match=needle):
            check_ids(seqs, 10, 8)
