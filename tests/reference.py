"""The official reference code, as the model cards give it, for parity tests.

Embedding: transformers `AutoModel`, left padding, last-token pool, (slice to dim), L2-normalise.
Reranker: transformers `AutoModelForCausalLM`, prefix + body + suffix ids, left padding, softmax of the
last position's ("no", "yes") logits. The official-evaluation form renders the system and user turns
through the chat template and appends the suffix tokens. Also: writing random-weight checkpoints
saved by transformers itself, with a tokenizer from `qwen_embed.tiny`.

Where the cards pad the whole list to its longest text, these run it in batches of `REF_BATCH` texts
of neighbouring lengths (`left_padded_batches`), each left-padded with the tokenizer's `pad` to its own
longest, exactly as the cards' code does to theirs: every batch still mixes lengths, so left padding,
the attention mask and the last-column pool are exercised in each, while the padding costs far less
(the parity test's 14 texts of 4..627 tokens: 14% more than their tokens, where one batch costs 120%
more). A row's result does not depend on the others in its batch; the rows come back in input order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from qwen_embed.reranker import PREFIX, SUFFIX, SYSTEM_PROMPT
from qwen_embed.tiny import _tokenizer_config, _with_eos_postprocessor, find_real_tokenizer, train_small_tokenizer

if TYPE_CHECKING:
    import pytest

    from qwen_embed import Embedder

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    # the real 0.6B layer shape, fewer layers
    "0.6B-layers": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128),
}


def make_tokenizer(kind: str, real: bool, eos_postprocessor: bool) -> Tokenizer:
    path = find_real_tokenizer() if real else None
    tok = Tokenizer.from_file(str(path)) if path else train_small_tokenizer()
    if eos_postprocessor and kind == "embedding":
        tok = _with_eos_postprocessor(tok)
    return tok


def save_hf_checkpoint(out: Path, kind: str, shape: str, *, real_tokenizer: bool = False,
                       eos_postprocessor: bool = True, std: float = 0.02, seed: int = 0,
                       tie: bool = True) -> Path:
    """A random-weight checkpoint saved by transformers: Qwen3Model or Qwen3ForCausalLM."""
    import json

    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    tok = make_tokenizer(kind, real_tokenizer, eos_postprocessor)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    cfg = Qwen3Config(vocab_size=(vocab + 63) // 64 * 64, initializer_range=std, rms_norm_eps=1e-6,
                      rope_theta=1_000_000.0, max_position_embeddings=32768, tie_word_embeddings=tie,
                      pad_token_id=tok.token_to_id("<|endoftext|>"), **SHAPES[shape])
    torch.manual_seed(seed)
    model = (Qwen3Model if kind == "embedding" else Qwen3ForCausalLM)(cfg).eval()
    with torch.no_grad():  # norms near 1, not exactly, so that a skipped norm weight shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(kind)))
    return out


REF_BATCH = 3  # texts per reference batch


@functools.lru_cache(maxsize=4)
def _load(path: Path, causal_lm: bool) -> tuple[Any, Any]:
    """(tokenizer with left padding, float32 model in eval mode) of a checkpoint folder, as the cards load
    them; kept for the next reference call on the same folder (tests treat checkpoints as read-only), so
    that a tokenizer.json of ~150k tokens is not parsed again (~0.4 s each)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = (AutoModelForCausalLM if causal_lm else AutoModel).from_pretrained(path, dtype=torch.float32).eval()
    return tokenizer, model


def left_padded_batches(tokenizer: Any, ids: list[list[int]], size: int = REF_BATCH,
                        ) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """(rows, left-padded batch) for `size` sequences at a time in order of length, `rows` their
    positions in `ids`; the tokenizer pads each batch (its `padding_side`, left here) to its longest."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        yield rows, tokenizer.pad({"input_ids": [ids[i] for i in rows]}, padding=True, return_tensors="pt")


def _run_batches(tokenizer: Any, ids: list[list[int]], run: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                 ) -> torch.Tensor:
    """`run` over `left_padded_batches(ids)`, its rows [n, ...] put back in input order."""
    parts = [(rows, run(batch)) for rows, batch in left_padded_batches(tokenizer, ids)]
    out = torch.empty(len(ids), *parts[0][1].shape[1:], dtype=parts[0][1].dtype)
    for rows, part in parts:
        out[rows] = part
    return out


def official_embed(path: Path, texts: list[str], dim: int | None = None, max_length: int = 8192,
                   append_eod: bool = False, normalize: bool = True) -> torch.Tensor:
    """Model-card usage; `append_eod` is the older card's manual `<|endoftext|>` for tokenizers without it.
    Batched by length (`left_padded_batches`)."""
    tokenizer, model = _load(Path(path), causal_lm=False)
    if append_eod:
        eod = tokenizer.convert_tokens_to_ids("<|endoftext|>")
        ids = [[*seq, eod] for seq in tokenizer(texts, padding=False, truncation=True,
                                                 max_length=max_length - 1)["input_ids"]]
    else:
        ids = tokenizer(texts, padding=False, truncation=True, max_length=max_length)["input_ids"]

    def last_column(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            # left padding: the last column is every sequence's last token
            return model(**batch).last_hidden_state[:, -1]

    emb = _run_batches(tokenizer, ids, last_column)
    if dim is not None:
        emb = emb[:, :dim]
    return F.normalize(emb, p=2, dim=1) if normalize else emb


def official_rerank(path: Path, query: str, docs: list[str], instruction: str, template: str = "card",
                    max_length: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-card reranker scoring (template 'card') or the official evaluation form ('official-eval').

    Returns (probabilities of "yes", logit differences yes - no)."""
    tokenizer, model = _load(Path(path), causal_lm=True)
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    suffix_tokens = tokenizer.encode(SUFFIX, add_special_tokens=False)
    if template == "card":
        prefix_tokens = tokenizer.encode(PREFIX, add_special_tokens=False)
        pairs = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {d}" for d in docs]
        enc = tokenizer(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                        max_length=max_length - len(prefix_tokens) - len(suffix_tokens))
        ids = [prefix_tokens + e + suffix_tokens for e in enc["input_ids"]]
    else:
        ids = []
        for d in docs:
            user = f"<Instruct>: {instruction}\n\n<Query>: {query}\n\n<Document>: {d}"
            messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
            ids.append(tokenizer.encode(text, add_special_tokens=False)[: max_length] + suffix_tokens)

    def last_logits(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():  # the last position's logits only (the others are not read): same numbers, less work
            return model(**batch, logits_to_keep=1).logits[:, -1, :]

    logits = _run_batches(tokenizer, ids, last_logits)  # batched by length (`left_padded_batches`)
    pair = torch.stack([logits[:, no], logits[:, yes]], dim=1)
    return torch.log_softmax(pair, dim=1)[:, 1].exp(), logits[:, yes] - logits[:, no]


def random_texts(n: int, seed: int, max_words: int = 200) -> list[str]:
    """Mixed-length English-like texts (about 1..300 tokens)."""
    import random

    vocabulary = ("the of and to in is was for on that with as by at from protein cell search engine query "
                  "document gravity water river capital china beijing learning model data neural embedding "
                  "retrieval Xylophone quantum-chromodynamics 1984 3.14159 naïve café 北京 東京")
    words = vocabulary.split(" ")
    rng = random.Random(seed)
    lengths = [1, 2, 3, max_words] + [rng.randint(1, max_words) for _ in range(n - 4)]
    return [" ".join(rng.choice(words) for _ in range(k)) for k in lengths[:n]]


def forward_once(emb: Embedder, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Serve `emb`'s engine passes over token ids it has run already (a copy of the first pass's hidden
    states: the same ids in the same batches give the same numbers on the CPU), so that a test that encodes
    the same texts several ways (dims, index precisions) runs all of `encode` / `Index` each time but the
    trunk once per distinct input. Returns the token counts actually run, for the caller to check."""
    run = emb.engine.last_hidden
    ran: list[int] = []
    seen: dict[tuple[tuple[int, ...], ...], torch.Tensor] = {}

    def last_hidden(seqs: Sequence[Sequence[int]], progress: bool = False) -> torch.Tensor:
        key = tuple(map(tuple, seqs))
        if key not in seen:
            seen[key] = run(seqs, progress)
            ran.append(sum(map(len, seqs)))
        return seen[key].clone()

    monkeypatch.setattr(emb.engine, "last_hidden", last_hidden)
    return ran
