"""Make a tiny random-weight checkpoint in the Hugging Face layout, to try the tools offline.

`make_checkpoint(path, kind=...)` writes config.json, model.safetensors (optionally sharded with
model.safetensors.index.json), tokenizer.json and tokenizer_config.json for one of the three kinds:
"embedding" (Qwen3Model keys), "reranker" (Qwen3ForCausalLM: `model.` keys + lm_head unless tied) or
"seq-cls" (Qwen3ForSequenceClassification with the [1, hidden] score row). The weights are random,
so rankings made with it are meaningless; the file layout, shapes and tokenizer are real.

The tokenizer is the real Qwen tokenizer when one is found (`../shared/data/tokenizers/qwen` beside
the repository, or the `tokenizer` argument), otherwise a small byte-level BPE trained on the spot that
holds Qwen's special tokens and single-token "yes"/"no". `eos_postprocessor=True` adds the
post-processor of the current official embedding tokenizer, which appends `<|endoftext|>`.

Command line: `qwen-embed make-tiny OUT --kind embedding`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from .config import ModelConfig
from .errors import ConfigError, InputError, is_whole
from .files import atomic_dir, check_output_dir
from .hub import is_weight_file
from .shards import TensorSpec, split_shards, write_shards

TinyKind = Literal["embedding", "reranker", "seq-cls"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PLAIN_ADDED = ["<think>", "</think>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

_CORPUS = """\
The capital of China is Beijing. Gravity is a force that attracts two bodies towards each other.
It gives weight to physical objects and is responsible for the movement of planets around the sun.
Given a web search query, retrieve relevant passages that answer the query.
Judge whether the Document meets the requirements based on the Query and the Instruct provided.
Note that the answer can only be yes or no. Instruct: Query: Document: system user assistant
A protein is a chain of amino acids. Cells divide by mitosis. The heart pumps blood through the body.
Machine learning models learn patterns from data. Search engines rank documents by relevance.
Python is a programming language. The quick brown fox jumps over the lazy dog.
Water boils at one hundred degrees Celsius at sea level. The moon orbits the earth.
Vaccines train the immune system to recognise pathogens. Rivers flow into the sea.
"""


def find_real_tokenizer() -> Path | None:
    """The real Qwen tokenizer.json from the shared data folder, when present."""
    env = os.environ.get("QWEN_EMBED_SHARED_DATA")
    here = Path(__file__).resolve()
    candidates = [Path(env) / "tokenizers/qwen/tokenizer.json"] if env else []
    candidates += [p / "shared/data/tokenizers/qwen/tokenizer.json" for p in list(here.parents)[:6]]
    candidates.append(Path.cwd().parent / "shared/data/tokenizers/qwen/tokenizer.json")
    return next((c for c in candidates if c.is_file()), None)


def train_small_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """A byte-level BPE with Qwen's special tokens and single-token "yes" / "no"."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    lines = _CORPUS.splitlines() * 4 + ["yes", "no", "yes no", "no yes"] * 50
    tok.train_from_iterator(lines, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in PLAIN_ADDED])
    for word in ("yes", "no"):
        if len(tok.encode(word, add_special_tokens=False).ids) != 1:  # pragma: no cover - corpus makes merges
            raise RuntimeError(f"small tokenizer: {word!r} did not become a single token")
    return tok


def _with_eos_postprocessor(tok: Tokenizer) -> Tokenizer:
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", pair="$A $B <|endoftext|>", special_tokens=[("<|endoftext|>", eos)]
    )
    return tok


def _round_up(n: int, m: int = 64) -> int:
    return (n + m - 1) // m * m


def make_checkpoint(
    path: str | os.PathLike[str],
    kind: TinyKind = "embedding",
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 16,
    intermediate_size: int = 128,
    max_position_embeddings: int = 32768,
    tie_word_embeddings: bool | None = None,
    tokenizer: Literal["auto", "real", "small"] | str = "auto",
    eos_postprocessor: bool = True,
    seed: int = 0,
    std: float = 0.02,
    dtype: Literal["float32", "bfloat16"] = "float32",
    shards: int = 1,
    overwrite: bool = False,
) -> Path:
    """Write a random-weight Qwen3 checkpoint folder of the given kind and shape; returns the folder.

    tokenizer: "auto" (real when found, else small), "real" (error when absent), "small", or the path
    of a tokenizer.json. The folder is written to a temporary sibling and renamed, so a failure leaves
    nothing behind; an existing non-empty folder is refused unless `overwrite`, and then only the
    checkpoint's own files in it are replaced.
    """
    if kind not in ("embedding", "reranker", "seq-cls"):
        raise InputError(f"kind must be 'embedding', 'reranker' or 'seq-cls', got {kind!r}")
    out = Path(path)
    if out.parent.is_dir():  # checked before any work; a missing parent is made once the shape is known good
        check_output_dir(out, overwrite=overwrite)
    tok = _load_tokenizer(tokenizer)
    if eos_postprocessor and kind == "embedding":
        tok = _with_eos_postprocessor(tok)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    vocab_size = 151936 if vocab > 150000 else _round_up(vocab)
    tied = (kind != "seq-cls" and hidden_size <= 2560) if tie_word_embeddings is None else tie_word_embeddings
    arch = {"embedding": "Qwen3Model", "reranker": "Qwen3ForCausalLM", "seq-cls": "Qwen3ForSequenceClassification"}
    config: dict[str, Any] = {
        "architectures": [arch[kind]], "model_type": "qwen3", "vocab_size": vocab_size,
        "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads, "head_dim": head_dim, "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0, "use_cache": True,
        "tie_word_embeddings": tied, "torch_dtype": dtype, "bos_token_id": 151643, "eos_token_id": 151643,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": num_hidden_layers,
        "initializer_range": std,
    }
    if kind == "seq-cls":
        config["num_labels"] = 1
        config["id2label"], config["label2id"] = {"0": "LABEL_0"}, {"LABEL_0": 0}
    try:  # the loader's own checks: never write a checkpoint the package would refuse
        if not is_whole(head_dim, 1):  # the loader reads a head_dim of 0 as "not given" (hidden / heads)
            raise ConfigError(f"head_dim={head_dim} is out of range (1..1024)")
        ModelConfig.from_dict(config, source="the shape asked")
    except ConfigError as e:
        why = str(e).removeprefix("config.json: ").split("; this is not")[0].rstrip(".")
        raise InputError(f"cannot make this shape: {why} (set by --hidden-size, --layers, --heads, --kv-heads, "
                         f"--head-dim, --intermediate-size).") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    check_output_dir(out, overwrite=overwrite)
    state = _random_state(config, kind, std, seed, tok)
    tdt = torch.float32 if dtype == "float32" else torch.bfloat16
    state = {k: v.to(tdt).contiguous() for k, v in state.items()}

    with atomic_dir(out, overwrite=overwrite, as_a_set=is_weight_file) as tmp:
        _save_weights(tmp, state, shards)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(kind), indent=2))
    return out


def _load_tokenizer(spec: str) -> Tokenizer:
    if spec == "small":
        return train_small_tokenizer()
    if spec in ("auto", "real"):
        real = find_real_tokenizer()
        if real is None:
            if spec == "real":
                raise InputError("the real Qwen tokenizer was not found (../shared/data/tokenizers/qwen); "
                                 "set QWEN_EMBED_SHARED_DATA or use tokenizer='small'.")
            return train_small_tokenizer()
        return Tokenizer.from_file(str(real))
    p = Path(spec)
    if not p.is_file():
        raise InputError(f"tokenizer {spec!r} is not 'auto', 'real', 'small' or an existing tokenizer.json.")
    return Tokenizer.from_file(str(p))


def _tokenizer_config(kind: str) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "model_max_length": 131072,
        "padding_side": "left",
        "clean_up_tokenization_spaces": False,
        "add_prefix_space": False,
        "chat_template": CHAT_TEMPLATE,
    }


def _random_state(config: dict[str, Any], kind: str, std: float, seed: int, tok: Tokenizer) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, i, d = config["hidden_size"], config["intermediate_size"], config["head_dim"]
    nq, nkv = config["num_attention_heads"], config["num_key_value_heads"]

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    def norm(n: int) -> torch.Tensor:  # near 1, not exactly, so that a skipped norm weight shows
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    pre = "" if kind == "embedding" else "model."
    s: dict[str, torch.Tensor] = {f"{pre}embed_tokens.weight": normal(config["vocab_size"], h)}
    for li in range(config["num_hidden_layers"]):
        p = f"{pre}layers.{li}."
        s[p + "input_layernorm.weight"] = norm(h)
        s[p + "post_attention_layernorm.weight"] = norm(h)
        s[p + "self_attn.q_proj.weight"] = normal(nq * d, h)
        s[p + "self_attn.k_proj.weight"] = normal(nkv * d, h)
        s[p + "self_attn.v_proj.weight"] = normal(nkv * d, h)
        s[p + "self_attn.o_proj.weight"] = normal(h, nq * d)
        s[p + "self_attn.q_norm.weight"] = norm(d)
        s[p + "self_attn.k_norm.weight"] = norm(d)
        s[p + "mlp.gate_proj.weight"] = normal(i, h)
        s[p + "mlp.up_proj.weight"] = normal(i, h)
        s[p + "mlp.down_proj.weight"] = normal(h, i)
    s[f"{pre}norm.weight"] = norm(h)
    if kind == "reranker" and not config["tie_word_embeddings"]:
        s["lm_head.weight"] = normal(config["vocab_size"], h)
    if kind == "seq-cls":
        lm = normal(config["vocab_size"], h)
        yes, no = (tok.encode(w, add_special_tokens=False).ids[0] for w in ("yes", "no"))
        s["score.weight"] = (lm[yes] - lm[no])[None, :]
    return s


def _save_weights(folder: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    write_shards(folder, split_shards(specs, shards), lambda s: state[s.name])
