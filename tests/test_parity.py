"""Parity with transformers' official usage code on random-weight checkpoints saved by transformers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_embed import DEFAULT_INSTRUCTION, Embedder, Reranker, format_query
from qwen_embed.tiny import find_real_tokenizer
from tests.reference import forward_once, official_embed, official_rerank, random_texts, save_hf_checkpoint

REAL = find_real_tokenizer() is not None


def _compare(ours: np.ndarray, ref: torch.Tensor) -> None:
    ref_np = ref.numpy()
    cos = (ours * ref_np).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref_np, axis=1))
    assert cos.min() >= 0.99999, cos.min()
    assert np.abs(ours - ref_np).max() <= 1e-4, np.abs(ours - ref_np).max()


SHAPES = ["tiny", pytest.param("0.6B-layers", marks=pytest.mark.slow)]  # the real layer shape: slow on a CPU


@pytest.fixture(scope="module", params=SHAPES)
def emb_ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    shape = request.param
    return save_hf_checkpoint(tmp_path_factory.mktemp(f"hf-emb-{shape}"), "embedding", shape,
                              real_tokenizer=REAL and shape == "tiny")


@pytest.mark.parametrize("instructed", [False, True])
def test_embedding_parity(emb_ckpt: Path, instructed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mixed lengths 1..300, with and without instruction, dims 32 / 128 / full (one forward, sliced per dim)."""
    emb = Embedder.from_pretrained(emb_ckpt, device="cpu")
    ran = forward_once(emb, monkeypatch)
    texts = random_texts(24 if emb.hidden_size < 512 else 14, seed=1)
    lengths = [len(s) for s in emb.tokenize(texts)]
    assert min(lengths) <= 5 and max(lengths) >= 200  # mixed lengths, from a few tokens to ~300
    ref_texts = [format_query(t, DEFAULT_INSTRUCTION) for t in texts] if instructed else texts
    raw = official_embed(emb_ckpt, ref_texts, normalize=False)  # one reference pass, sliced per dim
    for dim in [32, 128, None]:
        if dim is not None and dim > emb.hidden_size:
            continue
        ours = emb.encode(texts, instruction=DEFAULT_INSTRUCTION if instructed else None, dim=dim)
        _compare(ours, torch.nn.functional.normalize(raw[:, : dim or emb.hidden_size], dim=1))
    assert len(ran) == 1  # every dim's encode had the same token ids


def test_embedding_parity_tokenizer_without_end_token(tmp_path: Path) -> None:
    """Older tokenizers append nothing: the older card appends <|endoftext|> by hand; we detect and append."""
    path = save_hf_checkpoint(tmp_path / "m", "embedding", "tiny", eos_postprocessor=False)
    emb = Embedder.from_pretrained(path, device="cpu")
    assert not emb.tokenizer.appends_eos
    texts = random_texts(9, seed=2)
    _compare(emb.encode(texts), official_embed(path, texts, append_eod=True))


def test_embedding_truncation_keeps_end_token(emb_ckpt: Path) -> None:
    texts = random_texts(6, seed=3)
    emb = Embedder.from_pretrained(emb_ckpt, device="cpu", max_length=16)
    seqs = emb.tokenize(texts)
    assert max(map(len, seqs)) == 16 and all(s[-1] == emb.tokenizer.eos_id for s in seqs)
    assert all(s.count(emb.tokenizer.eos_id) == 1 for s in seqs)
    _compare(emb.encode(texts), official_embed(emb_ckpt, texts, max_length=16))


@pytest.fixture(scope="module", params=SHAPES)
def rr_ckpt(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    shape = request.param
    # a larger init spread makes the scores spread, so that the comparison means something
    return save_hf_checkpoint(tmp_path_factory.mktemp(f"hf-rr-{shape}"), "reranker", shape,
                              real_tokenizer=REAL and shape == "tiny", std=0.08, tie=shape == "tiny")


@pytest.mark.parametrize("template", ["card", "official-eval"])
def test_reranker_parity(rr_ckpt: Path, template: str) -> None:
    docs = random_texts(12, seed=4, max_words=120)
    query, instruction = "what is the capital of china", "Given a question, retrieve passages that answer it"
    rr = Reranker.from_pretrained(rr_ckpt, device="cpu", template=template)
    ours = rr.score(query, docs, instruction=instruction)
    ref_p, ref_logit = official_rerank(rr_ckpt, query, docs, instruction, template=template)
    assert np.abs(ours - ref_p.numpy()).max() <= 1e-4
    ours_logit = np.log(ours) - np.log1p(-ours)
    assert np.abs(ours_logit - ref_logit.numpy()).max() <= 1e-3 * max(1.0, np.abs(ref_logit.numpy()).max())
    assert ref_p.std() > 1e-3, "scores should spread with this init"


def test_reranker_truncates_document_only(rr_ckpt: Path) -> None:
    docs = random_texts(5, seed=5, max_words=200)
    query, instruction = "gravity", DEFAULT_INSTRUCTION
    rr = Reranker.from_pretrained(rr_ckpt, device="cpu", max_length=120)
    seqs = rr.build_input_ids(query, docs)
    assert max(map(len, seqs)) == 120
    suffix = rr.tokenizer.encode_one(rr.template.tail)
    assert all(s[-len(suffix):] == suffix for s in seqs)
    ref_p, _ = official_rerank(rr_ckpt, query, docs, instruction, max_length=120)
    assert np.abs(rr.score(query, docs) - ref_p.numpy()).max() <= 1e-4


def test_converted_sequence_classification(rr_ckpt: Path, tmp_path: Path) -> None:
    """A Qwen3ForSequenceClassification with score = W[yes] - W[no] scores as the causal LM does."""
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "seqcls"
    shutil.copytree(rr_ckpt, out)
    state = load_file(str(out / "model.safetensors"))
    rr = Reranker.from_pretrained(rr_ckpt, device="cpu")
    yes, no = rr.checkpoint.yes_no_ids or (0, 0)
    lm = state.pop("lm_head.weight", state["model.embed_tokens.weight"])
    state["score.weight"] = (lm[yes] - lm[no])[None].contiguous()
    state = {k: v.contiguous() for k, v in state.items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = AutoConfig.from_pretrained(rr_ckpt)
    cfg.architectures, cfg.num_labels, cfg.tie_word_embeddings = ["Qwen3ForSequenceClassification"], 1, False
    cfg.save_pretrained(out)

    conv = Reranker.from_pretrained(out, device="cpu")
    assert conv.config.kind == "seq-cls"
    docs = random_texts(7, seed=6, max_words=60)
    conv_scores = conv.score("q", docs)
    np.testing.assert_allclose(conv_scores, rr.score("q", docs), atol=1e-5)

    # and transformers' own sequence-classification model agrees
    tok = AutoTokenizer.from_pretrained(out, padding_side="left")
    model = AutoModelForSequenceClassification.from_pretrained(out, dtype=torch.float32).eval()
    ids = conv.build_input_ids("q", docs)
    batch = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = torch.sigmoid(model(**batch).logits[:, 0])
    np.testing.assert_allclose(conv_scores, ref.numpy(), atol=1e-4)
