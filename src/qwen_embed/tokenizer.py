"""A thin wrapper over `tokenizers` with the Qwen3 Embedding end-token policy.

The embedder appends `<|endoftext|>` (id 151643 in the real vocabulary) to every input exactly once.
The current official embedding tokenizer does that in its post-processor, older revisions and the
reranker tokenizer do not: `appends_eos` is detected by encoding a probe, the tokenizer's own end
token is stripped and ours appended after truncation, so that truncation always keeps it.

A long text (a book to be chunked for an index) is encoded in pieces cut at line starts (`line_pieces`),
all in one parallel batch: `tokenizers` encodes one long string on one core and slows down with its
length (10 MB of text: 6.6 s whole, 2.2 s in 64K-character pieces on the same core), and the Qwen
pre-tokenizer never joins characters across a line start, so the ids are the same (`splits_at_line_starts`
checks that a tokenizer has that pre-tokenizer; any other is encoded whole). An embedder input is read only
as far as its truncation keeps: a 10 MB text cut to 8,192 tokens in 0.05 s instead of 5 s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence, Sized
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .errors import InputError, TokenizerError

EOS_TOKEN = "<|endoftext|>"

# tokenizer.json's "pre_tokenizer" of Qwen2 / Qwen3 (as `tokenizers` serialises it): its pieces are runs of
# letters (with one leading non-letter), single digits, punctuation runs with the newlines after them,
# whitespace runs ending in newlines, and other whitespace runs; none can hold a newline followed by a
# character that is not whitespace, so no piece spans a line start, and no piece before one depends on
# what follows it (the lookahead `(?!\S)` is tried only after `\s*[\r\n]+`, which takes any run that
# ends in a newline). GPT-2's ByteLevel regex has no such alternative: "  \n" + "x" splits as "  ", "\n"
# in one string and as "  \n" alone, so a tokenizer with it is never cut.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
              r"|\s+(?!\S)|\s+")
QWEN_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": QWEN_SPLIT}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}
LINE_START = re.compile(r"\n(?=\S)")  # the place after a newline that a character other than whitespace follows
PIECE_CHARS = 1 << 16  # texts longer than this are encoded in pieces of at least this many characters


def line_pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """`text` cut at line starts into pieces of at least `size` characters (the last may be shorter), in
    order; [text] when no line starts after its first `size` characters."""
    pieces: list[str] = []
    start = 0
    while (m := LINE_START.search(text, start + size)) is not None:
        pieces.append(text[start : m.end()])
        start = m.end()
    pieces.append(text[start:])
    return pieces


def splits_at_line_starts(tok: Tokenizer) -> bool:
    """Whether `tok` encodes a text as the concatenation of its `line_pieces`: the Qwen pre-tokenizer, an NFC
    or no normalizer (NFC leaves a newline alone), and no added token that holds or strips whitespace (those
    are matched in the raw text, before the pre-tokenizer: one could span a cut)."""
    if tok.pre_tokenizer is None or json.loads(tok.pre_tokenizer.__getstate__()) != QWEN_PRE_TOKENIZER:
        return False
    if tok.normalizer is not None and json.loads(tok.normalizer.__getstate__()) != {"type": "NFC"}:
        return False
    return not any(t.lstrip or t.rstrip or any(c.isspace() for c in t.content)
                   for t in tok.get_added_tokens_decoder().values())


class QwenTokenizer:
    """tokenizer.json -> ids, with the end-token policy and reranker yes/no lookups."""

    def __init__(self, tok: Tokenizer, source: str = "tokenizer.json") -> None:
        self.tok = tok
        self.source = source
        self.tok.no_truncation()
        self.tok.no_padding()
        self.eos_id = self.token_id(EOS_TOKEN)
        probe = self.tok.encode("a", add_special_tokens=True).ids
        self.appends_eos = len(probe) > 0 and probe[-1] == self.eos_id
        self.splits_long_texts = splits_at_line_starts(tok)  # `encode` cuts long texts at line starts
        # the embedder's inputs too, when the post-processor adds nothing but the end token (content ids are
        # then the ids without special tokens, end token or not: what `encode_for_embedding` keeps)
        bare = self.tok.encode("a", add_special_tokens=False).ids
        self.splits_embedder_inputs = self.splits_long_texts and probe in (bare, [*bare, self.eos_id])

    @functools.cached_property
    def fingerprint(self) -> str:
        """The first 16 hex digits of the SHA-256 of the serialised tokenizer (computed on first use: ~0.2 s
        for the real Qwen vocabulary, which most loads never read)."""
        return hashlib.sha256(self.tok.to_str().encode()).hexdigest()[:16]

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> QwenTokenizer:
        """The tokenizer of a model folder. Loads are cached per file version (path, size, modification
        time): the real Qwen tokenizer takes ~0.4 s to parse, and an embedder and a reranker,
        the server's routes and every command in one process share the same file. The instance is never
        changed after construction, so sharing it is safe. (A file replaced by a rename has a new inode.)
        Folders holding the same tokenizer.json (copies of one model's, e.g. every checkpoint of a training
        run) share one parse too (`_parse`: by content)."""
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path} is missing; qwen-embed needs the fast tokenizer file tokenizer.json.")
        stat = path.stat()
        return _load_cached(str(path.resolve()), (stat.st_ino, stat.st_size, stat.st_mtime_ns), str(path))

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    def token_id(self, token: str) -> int:
        tid = self.tok.token_to_id(token)
        if tid is None:
            raise TokenizerError(f"{self.source} has no token {token!r}; this is not a Qwen3 tokenizer.")
        return int(tid)

    def single_token_id(self, text: str) -> int:
        """The id of `text` when it encodes to exactly one token (reranker "yes" / "no")."""
        ids = self.tok.encode(text, add_special_tokens=False).ids
        if len(ids) != 1:
            raise TokenizerError(
                f"{self.source}: {text!r} encodes to {len(ids)} tokens {ids}; a Qwen3 reranker needs it as one."
            )
        return int(ids[0])

    def encode(self, texts: Sequence[str], limit: int | None = None) -> list[list[int]]:
        """Plain ids, no special tokens added (batch, parallel in Rust; a text longer than PIECE_CHARS
        characters is encoded in `line_pieces`, with the same ids: module docstring). `limit`: the caller
        keeps only each text's first `limit` ids, so a long text is read only that far (its ids are then at
        least its first `limit`; cut them)."""
        texts = list(texts)
        if not self.splits_long_texts or all(len(t) <= PIECE_CHARS for t in texts):
            return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]
        return self._encode_pieces(texts, limit)

    def _encode_pieces(self, texts: list[str], limit: int | None = None) -> list[list[int]]:
        """The ids without special tokens of each text, those longer than PIECE_CHARS characters encoded in
        `line_pieces`, all in parallel batches. `limit`: a text's pieces stop once it has `limit` ids (its
        ids are then the first ones, at least `limit`: enough for a right truncation), each round taking the
        pieces that its characters per id so far say are needed (8 characters per id before the first)."""
        pieces = [line_pieces(t, PIECE_CHARS) if len(t) > PIECE_CHARS else [t] for t in texts]
        out: list[list[int]] = [[] for _ in texts]
        taken = [0] * len(texts)  # pieces encoded so far
        chars = [0] * len(texts)
        todo = list(range(len(texts)))
        while todo:
            batch: list[tuple[int, str]] = []
            for i in todo:
                end = len(pieces[i])
                if limit is not None:
                    per_id = chars[i] / len(out[i]) if out[i] else 8.0
                    budget, end, got = 1.25 * per_id * (limit - len(out[i])), taken[i], 0
                    while end < len(pieces[i]) and (end == taken[i] or got < budget):
                        got += len(pieces[i][end])
                        end += 1
                batch.extend((i, p) for p in pieces[i][taken[i] : end])
                taken[i] = end
            for (i, piece), enc in zip(batch, self.tok.encode_batch([p for _, p in batch],
                                                                    add_special_tokens=False), strict=True):
                out[i].extend(enc.ids)
                chars[i] += len(piece)
            todo = [i for i in todo if taken[i] < len(pieces[i]) and (limit is None or len(out[i]) < limit)]
        return out

    def encode_one(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=False))

    def encode_for_embedding(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        """Ids with the tokenizer's own processing, truncated to `max_length` with the end token kept last.
        A text longer than PIECE_CHARS characters is encoded in `line_pieces`, and only as far as the
        truncation keeps (a 10 MB text cut to 8,192 tokens reads its first ~64K characters)."""
        return [truncate_keep_end(ids, max_length, self.eos_id)
                for ids in self._content(list(texts), limit=max(max_length - 1, 0))]

    def embedding_lengths(self, texts: Sequence[str]) -> list[int]:
        """Untruncated length of each embedder input, the end token counted once (long texts in pieces)."""
        return [len(ids) + 1 for ids in self._content(list(texts))]

    def _content(self, texts: list[str], limit: int | None = None) -> list[list[int]]:
        """Each embedder input's ids with the tokenizer's own processing, without its end token (`limit`: at
        least that many, when a long text is read in pieces). With a post-processor that adds nothing but
        the end token, those are the ids without special tokens: a batch holding a long text goes through
        `_encode_pieces`."""
        if self.splits_embedder_inputs and any(len(t) > PIECE_CHARS for t in texts):
            return self._encode_pieces(texts, limit)
        out = []
        for enc in self.tok.encode_batch(texts, add_special_tokens=True):
            ids = enc.ids
            out.append(ids[:-1] if self.appends_eos and ids and ids[-1] == self.eos_id else ids)
        return out


def list_of(what: str, items: object, of: str = "strings") -> list[Any]:
    """The items of an ordered collection as a list: a list, a tuple, a numpy array (its rows), a pandas
    Series (its values, in order, whatever its index) or a generator. Refused, naming `what`: one string or
    bytes (a collection of characters), None, and unordered or keyed collections (a set, a dict), whose
    order would not match the results to the inputs."""
    if isinstance(items, str):
        raise InputError(f"{what} must be a list of {of}, got a single string; wrap it: [{items[:30]!r}].",
                         param=what)
    if isinstance(items, bytes | bytearray | memoryview):
        raise InputError(f"{what} must be a list of {of}, got {type(items).__name__}; decode it first "
                         f"([data.decode('utf-8')]).", param=what)
    if isinstance(items, AbstractSet | Mapping):
        raise InputError(f"{what} must be an ordered list, got a {type(items).__name__}, whose order is arbitrary "
                         f"(results come back in input order); pass a list, e.g. sorted(...).", param=what)
    if not isinstance(items, Iterable):
        raise InputError(f"{what} must be a list of {of}, got {type(items).__name__}.", param=what)
    values = getattr(items, "to_numpy", None)  # a pandas Series: by position, never by its index labels
    return list(values() if callable(values) else items)


def check_text(text: object, what: str) -> str:
    """One non-empty string of valid Unicode (numpy's str too, returned as str); `what` names it in errors."""
    if not isinstance(text, str):
        hint = "; decode it first (.decode('utf-8'))" if isinstance(text, bytes | bytearray) else ""
        raise InputError(f"{what} must be a string, got {type(text).__name__}: {text!r:.60}{hint}.")
    if not text:
        raise InputError(f"{what} is an empty string; every text needs at least one character.")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(f"{what} holds a lone surrogate; pass valid Unicode text.") from None
    return str(text)


def check_texts(texts: object, what: str = "texts") -> list[str]:
    """Validate a list of non-empty strings (`list_of` says which collections); the errors name the position."""
    items = list_of(what, texts)
    if not items:
        raise InputError(f"{what} is empty; pass at least one string.", param=what)
    return [check_text(t, f"{what}[{i}]") for i, t in enumerate(items)]


def check_ids(seqs: object, vocab_size: int, max_tokens: int, what: str = "seqs") -> list[Sequence[int]]:
    """Validate already tokenized inputs: an ordered collection (`list_of`) of non-empty sequences of at most
    `max_tokens` integer ids in 0..vocab_size-1 (numpy rows too); the errors name the position."""
    items = list_of(what, seqs, "token id lists")
    if not items:
        raise InputError(f"{what} is empty; pass at least one list of token ids.", param=what)
    for i, s in enumerate(items):
        if isinstance(s, str | bytes) or not isinstance(s, Iterable) or not isinstance(s, Sized):
            raise InputError(f"{what}[{i}] must be a list of token ids, got {type(s).__name__}: {s!r:.60}; turn texts "
                             f"into ids with tokenize() first.", param=what)
        if not 1 <= len(s) <= max_tokens:
            raise InputError(f"{what}[{i}] holds {len(s)} token ids; an input takes 1..{max_tokens} (the model's "
                             f"limit); truncate it, or tokenize() the text, which does.", param=what)
    ids = np.asarray([t for s in items for t in s])
    if ids.dtype.kind not in "iu":
        bad = next(t for s in items for t in s if isinstance(t, bool) or not isinstance(t, numbers.Integral))
        raise InputError(f"{what} must hold integer token ids, got {type(bad).__name__} {bad!r:.60}.", param=what)
    if ids.min() < 0 or ids.max() >= vocab_size:
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise InputError(f"{what} holds token id {bad}, outside this model's vocabulary 0..{vocab_size - 1}; "
                         f"tokenize with this model's tokenizer.", param=what)
    return [s if isinstance(s, list) else s.tolist() if isinstance(s, np.ndarray) else list(s) for s in items]


TRUNCATION_SIDES = ("right", "left")


def truncate_keep_end(ids: Sequence[int], max_length: int, eos_id: int, side: str = "right",
                      keep_head: int = 0) -> list[int]:
    """The one truncation rule of the embedder: at most `max_length` ids, the end token kept last.

    `ids` are the content ids (without the end token); the end token is appended after cutting.
    `side="right"` cuts the end of the content (the default everywhere), `side="left"` its start
    (TEI's `truncation_direction: Left`, Cohere's `truncate: START`) while keeping the first `keep_head`
    ids, the prompt (query instruction) at the head, when they leave room for at least one content id
    (else no head is kept): `[*ids[:keep_head], *ids[-(room - keep_head):], eos]`, room = max_length - 1.
    """
    if side not in TRUNCATION_SIDES:
        raise InputError(f"truncation side {side!r} is not one of {', '.join(TRUNCATION_SIDES)}.")
    room = max(max_length - 1, 0)
    if len(ids) <= room:
        return [*ids, eos_id]
    if side == "right":
        return [*ids[:room], eos_id]
    head = keep_head if keep_head < room else 0  # a prompt that fills it all: no head kept
    return [*ids[:head], *ids[len(ids) - (room - head) :], eos_id]


def format_query(query: str, instruction: str) -> str:
    """The query template the models were trained with (documents get none: `document_text`)."""
    return f"Instruct: {instruction}\nQuery:{query}"


def document_text(title: str | None, text: str | None) -> str:
    """The one "title + text" rule (MTEB's `_corpus_to_dict`): title and text joined by a space and
    stripped when there is a title, else the text stripped."""
    title, text = title or "", text or ""
    return (title + " " + text).strip() if title else text.strip()


@functools.lru_cache(maxsize=8)
def _load_cached(resolved: str, version: tuple[int, int, int], shown: str) -> QwenTokenizer:
    """One instance per tokenizer file version (`version`: inode, size and modification time, part of the
    cache key, so an edited file is read again)."""
    try:
        return QwenTokenizer(_parse(Path(resolved).read_bytes()), shown)
    except Exception as e:  # tokenizers raises plain Exception subclasses
        if isinstance(e, TokenizerError):
            raise
        raise TokenizerError(f"{shown} cannot be read ({e}).") from None


_PARSED: dict[str, Tokenizer] = {}  # by SHA-256 of the file, the latest PARSED_MAX
PARSED_MAX = 4


def _parse(data: bytes) -> Tokenizer:
    """One parse per tokenizer.json content (hashing the real one's 11 MB takes ~10 ms, parsing it ~0.4 s).
    The parsed tokenizer is shared by every instance built on it; none changes it (`QwenTokenizer` only
    turns truncation and padding off, which every instance does alike)."""
    key = hashlib.sha256(data).hexdigest()
    tok = _PARSED.pop(key, None)
    if tok is None:
        tok = Tokenizer.from_buffer(data)
    _PARSED[key] = tok  # now the latest
    while len(_PARSED) > PARSED_MAX:
        del _PARSED[next(iter(_PARSED))]
    return tok
