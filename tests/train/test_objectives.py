"""The two training objectives (`train/objectives.py`) against transformers on the same tiny checkpoints.

References, written out here: the embedding objective's loss is the improved InfoNCE of DESIGN.md and
train/losses.py (temperature 0.05, margin 0.1, the identical-text rule) over transformers' `Qwen3Model`
last-token states, evaluated term by term in float64, and its gradients are autograd's through
transformers' model, parameter by parameter; with and without GradCache, with Matryoshka dims. The
reranker objective's `sft` / `bce` / `listwise` mean and gradients are those of transformers'
`Qwen3ForCausalLM` last-position logits for any token budget (a group never split across chunks); its
`score` is the two-way softmax of the yes / no logits of the model card's code (tests/reference.py); its
evaluation is nDCG@k and MRR@k of those scores worked by hand.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qwen_embed import DEFAULT_INSTRUCTION
from qwen_embed.errors import ConfigError, QwenEmbedError
from qwen_embed.train.config import TrainConfig
from qwen_embed.train.distributed import DistInfo
from qwen_embed.train.objectives import OBJECTIVES, EmbeddingObjective, RerankObjective, make_objective
from tests.conftest import TinyCheckpoint
from tests.reference import official_rerank

from .conftest import assert_same_grads, make_rows, write_jsonl

TEMPERATURE, MARGIN = 0.05, 0.1  # DESIGN.md and train/losses.py: the defaults a config leaves alone
RERANK_MAX_LENGTH = 160

# Four embedding rows, one hard negative each; row 2's positive is row 0's text (the identical-text rule).
EMBED_ROWS: list[dict[str, object]] = [
    {"query": "what is the tide", "positive": "the rise and fall of the sea", "negatives": ["a recipe for bread"]},
    {"query": "who wrote hamlet", "positive": "shakespeare wrote the play", "negatives": ["the moon is far"]},
    {"query": "why does the sea rise", "positive": "the rise and fall of the sea", "negatives": ["green tea"]},
    {"query": "how do birds fly", "positive": "wings push air down", "negatives": ["rocks sink in water"]},
]


def no_autocast() -> contextlib.AbstractContextManager[object]:
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=4)
def transformers_model(path: Path, causal_lm: bool) -> Any:
    """transformers' Qwen3Model / Qwen3ForCausalLM of the folder, float32, eval mode (no dropout)."""
    from transformers import AutoModel, AutoModelForCausalLM

    return (AutoModelForCausalLM if causal_lm else AutoModel).from_pretrained(str(path), dtype=torch.float32).eval()


def named_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


# -- the embedding objective --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def embed_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("objective-embed") / "train.jsonl", EMBED_ROWS * 4)


def embed_config(ckpt: Path, data: Path, out: Path, **sections: dict[str, object]) -> TrainConfig:
    raw: dict[str, dict[str, object]] = {
        "model": {"path": str(ckpt), "device": "cpu"},
        "data": {"train_files": [str(data)], "num_negatives": 1, "query_max_length": 32, "doc_max_length": 32,
                 "shuffle_buffer": 1},
        "train": {"output_dir": str(out), "batch_size": 4, "chunk_tokens": 40},
    }
    for name, values in sections.items():
        raw[name] = {**raw.get(name, {}), **values}
    return TrainConfig.from_dict(raw)


def reference_info_nce(q: torch.Tensor, p: torch.Tensor, n: torch.Tensor, pos_ids: list[tuple[int, ...]],
                       neg_ids: list[list[tuple[int, ...]]], dims: list[int], weights: list[float],
                       ) -> tuple[torch.Tensor, dict[str, int]]:
    """sum_d w_d * mean_i -log(exp(s(q_i, p_i)/t) / Z_i), written term by term (float64); a document is
    "the same text" when its token ids equal the positive's. Also counts the terms each rule dropped."""
    t = TEMPERATURE
    dropped = {"same text": 0, "margin": 0, "kept": 0}
    total = torch.zeros((), dtype=torch.float64)
    rows = range(q.shape[0])

    def cos(a: torch.Tensor, b: torch.Tensor, d: int) -> torch.Tensor:
        return (a[:d] @ b[:d]) / (a[:d].norm() * b[:d].norm())

    for d, w in zip(dims, weights, strict=True):
        losses = []
        for i in rows:
            s_pos = cos(q[i], p[i], d)
            candidates = [(cos(q[i], n[i, k], d), neg_ids[i][k] == pos_ids[i]) for k in range(n.shape[1])]
            for j in rows:
                if j != i:
                    same = pos_ids[j] == pos_ids[i]
                    candidates += [(cos(q[i], q[j], d), same), (cos(p[i], p[j], d), same), (cos(q[i], p[j], d), same)]
            z = torch.exp(s_pos / t)
            for s, same in candidates:
                if same:
                    dropped["same text"] += 1
                elif float(s.detach()) > float(s_pos.detach()) + MARGIN:
                    dropped["margin"] += 1
                else:
                    dropped["kept"] += 1
                    z = z + torch.exp(s / t)
            losses.append(-torch.log(torch.exp(s_pos / t) / z))
        total = total + w * torch.stack(losses).mean()
    return total, dropped


@pytest.mark.parametrize(("grad_cache", "loss", "dims", "weights"), [
    (True, {}, [64], [1.0]),
    (False, {"matryoshka_dims": [64, 32], "matryoshka_weights": [1.0, 0.5]}, [64, 32], [1.0, 0.5]),
    (True, {"matryoshka_dims": [128, 16]}, [64, 16], [1.0, 1.0]),  # a dim past the hidden size is the full size
], ids=["grad-cache", "full-batch-matryoshka", "grad-cache-matryoshka-clipped"])
def test_embedding_loss_and_gradients_equal_transformers_with_the_written_out_info_nce(
        small_embedding_path: Path, embed_data: Path, tmp_path: Path, grad_cache: bool, loss: dict[str, object],
        dims: list[int], weights: list[float]) -> None:
    cfg = embed_config(small_embedding_path, embed_data, tmp_path / "run", train={"grad_cache": grad_cache},
                       loss=loss)
    assert (cfg.loss.temperature, cfg.loss.margin) == (TEMPERATURE, MARGIN)
    obj = EmbeddingObjective(cfg, DistInfo(), torch.float32, no_autocast)
    assert (obj.layout, obj.lora_task, obj.has_eval) == ("embedding", "FEATURE_EXTRACTION", False)
    batch = next(iter(obj.batches(0)))
    assert batch.num_negatives == 1 and len(batch.queries) == 4 and batch.offset == 0
    assert batch.num_tokens > 2 * cfg.train.chunk_tokens  # several chunks of 40 tokens
    ours_loss = obj.gradients(batch)
    ours = named_grads(obj.model)

    hf = transformers_model(small_embedding_path, causal_lm=False)
    hf.zero_grad(set_to_none=True)
    states = torch.stack([hf(torch.tensor([s])).last_hidden_state[0, -1] for s in batch.sequences]).double()
    q, p, n = states[:4], states[4:8], states[8:].view(4, 1, -1)
    pos_ids = [tuple(s) for s in batch.positives]
    neg_ids = [[tuple(s)] for s in batch.negatives]
    assert pos_ids[0] == pos_ids[2] and len(set(pos_ids)) == 3  # the identical-text rule has terms to drop
    ref_loss, dropped = reference_info_nce(q, p, n, pos_ids, neg_ids, dims, weights)
    ref_loss.backward()
    ref = named_grads(hf)
    assert min(dropped.values()) > 0, dropped  # each rule dropped terms, and terms were kept
    assert ours_loss == pytest.approx(float(ref_loss.detach()), rel=1e-5)
    assert_same_grads(ours, ref)


def test_a_rank_embeds_its_slice_of_the_global_batch_from_any_start(small_embedding_path: Path, train_file: Path,
                                                                   tmp_path: Path) -> None:
    cfg = embed_config(small_embedding_path, train_file, tmp_path / "run")
    whole = EmbeddingObjective(cfg, DistInfo(), torch.float32, no_autocast)
    second = EmbeddingObjective(cfg, DistInfo(rank=1, world_size=2), torch.float32, no_autocast)
    first_four = list(itertools.islice(whole.batches(0), 4))
    mine = next(iter(second.batches(3)))
    assert next(iter(whole.batches(3))).queries == first_four[3].queries != first_four[2].queries
    assert mine.queries == first_four[3].queries[2:] and mine.positives == first_four[3].positives[2:]
    assert mine.offset == 2 and torch.equal(mine.pos_keys_all, first_four[3].pos_keys_all)


# -- the reranker objective ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rr_ckpt(tiny_checkpoint: TinyCheckpoint) -> Path:
    """A small-tokenizer causal-LM reranker (tied head) with a wider init, so that the scores spread."""
    return tiny_checkpoint("reranker", tokenizer="small", std=0.08)


@pytest.fixture(scope="module")
def rr_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("objective-rerank") / "train.jsonl", make_rows(16, negatives=3))


def rerank_config(ckpt: Path, data: Path, out: Path, *, loss: str = "sft", chunk_tokens: int = 100_000,
                  eval_file: Path | None = None, k: int = 2) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": {"path": str(ckpt), "device": "cpu"},
        "data": {"train_files": [str(data)], "shuffle_buffer": 1},
        "train": {"output_dir": str(out), "batch_size": 4, "chunk_tokens": chunk_tokens},
        "eval": {"file": None if eval_file is None else str(eval_file), "k": k},
        "rerank": {"loss": loss, "negatives_per_positive": 2, "max_length": RERANK_MAX_LENGTH},
    })


def reference_rerank_loss(last: torch.Tensor, labels: list[int], sizes: list[int], loss: str, yes: int,
                          no: int) -> torch.Tensor:
    """The summed loss from last-position logits [n, V] (float64), as rerank_losses.py's docstring writes it."""
    if loss == "sft":
        logp = last - torch.log(torch.exp(last - last.max(-1, keepdim=True).values).sum(-1, keepdim=True)) \
            - last.max(-1, keepdim=True).values
        return -sum(logp[i, yes if y else no] for i, y in enumerate(labels))  # type: ignore[return-value]
    s = last[:, yes] - last[:, no]
    if loss == "bce":
        return sum(torch.log1p(torch.exp(-s[i])) if y else torch.log1p(torch.exp(s[i]))  # type: ignore[return-value]
                   for i, y in enumerate(labels))
    out, start = torch.zeros((), dtype=torch.float64), 0
    for size in sizes:
        out = out + torch.log(torch.exp(s[start:start + size]).sum()) - s[start]
        start += size
    return out


def group_tokens(batch: Any) -> list[int]:
    starts = np.cumsum([0, *batch.group_sizes]).tolist()
    return [sum(len(s) for s in batch.sequences[a:b]) for a, b in itertools.pairwise(starts)]


@pytest.mark.parametrize(("loss", "budget"), [("sft", "one-token"), ("bce", "whole-batch"), ("listwise", "two-groups")])
def test_rerank_mean_and_gradients_equal_transformers_under_any_token_budget(
        rr_ckpt: Path, rr_data: Path, tmp_path: Path, loss: str, budget: str) -> None:
    """The step's loss is the mean over the global batch (examples; groups for listwise) and the gradients
    are those of that mean, however the batch is cut into chunks: each chunk whole groups, under the budget
    unless one group alone exceeds it."""
    cfg = rerank_config(rr_ckpt, rr_data, tmp_path / "run", loss=loss)
    obj = RerankObjective(cfg, DistInfo(), torch.float32, no_autocast)
    batch = next(iter(obj.batches(0)))
    tokens = group_tokens(batch)
    labels = batch.labels.tolist()
    assert len(batch.group_sizes) == 4 and set(labels) == {0, 1}
    cfg.train.chunk_tokens = {"one-token": 1, "whole-batch": sum(tokens), "two-groups": tokens[0] + tokens[1]}[budget]
    chunks: list[int] = []
    hook = obj.model.register_forward_pre_hook(lambda _m, args: chunks.append(args[0].num_seqs))
    try:
        ours_mean = obj.gradients(batch)
    finally:
        hook.remove()
    ours = named_grads(obj.model)
    sizes = batch.group_sizes
    expected_chunks = {"one-token": sizes, "whole-batch": [sum(sizes)],
                       "two-groups": [sizes[0] + sizes[1], *([sizes[2] + sizes[3]] if tokens[2] + tokens[3] <=
                                                             cfg.train.chunk_tokens else sizes[2:])]}[budget]
    assert chunks == expected_chunks

    hf = transformers_model(rr_ckpt, causal_lm=True)
    hf.zero_grad(set_to_none=True)
    last = torch.stack([hf(torch.tensor([s])).logits[0, -1] for s in batch.sequences]).double()
    count = len(sizes) if loss == "listwise" else len(labels)
    assert batch.count == count
    ref_mean = reference_rerank_loss(last, labels, sizes, loss, obj.model.yes_id, obj.model.no_id) / count
    ref_mean.backward()
    assert ours_mean == pytest.approx(float(ref_mean.detach()), rel=1e-5)
    assert_same_grads(ours, named_grads(hf))


def test_a_rank_trains_its_slice_of_the_global_batch(rr_ckpt: Path, rr_data: Path, tmp_path: Path) -> None:
    cfg = rerank_config(rr_ckpt, rr_data, tmp_path / "run", loss="listwise")
    whole = next(iter(RerankObjective(cfg, DistInfo(), torch.float32, no_autocast).batches(2)))
    mine = next(iter(RerankObjective(cfg, DistInfo(rank=1, world_size=2), torch.float32, no_autocast).batches(2)))
    first = sum(whole.group_sizes[:2])  # one group per row here: rows 2 and 3 are the second rank's
    assert mine.sequences == whole.sequences[first:] and mine.labels.tolist() == whole.labels.tolist()[first:]
    assert mine.group_sizes == whole.group_sizes[2:] and mine.offset == 2 and mine.count == whole.count == 4


QUERY = "what is alpha 3"
DOCS = ["alpha beta is the answer number 3 alpha beta gamma delta", "gamma delta unrelated 3 0", "omega psi"]
LONG_DOC = " ".join(["kappa lambda mu nu"] * 40)  # cut to fit max_length (the card's rule: the document only)


@pytest.mark.parametrize("template", ["card", "official-eval"])
def test_score_is_the_yes_no_softmax_of_the_model_cards_code(rr_ckpt: Path, rr_data: Path, tmp_path: Path,
                                                              template: str) -> None:
    """`score` with the weights being trained = the official code's softmax over the ("no", "yes") logits,
    the instruction defaulting to the web-search one; the module's train / eval mode is left as it was. (The
    official evaluation code cuts the whole prompt, not the document: no long document for it.)"""
    raw = rerank_config(rr_ckpt, rr_data, tmp_path / "run").to_dict()
    raw["rerank"]["template"] = template
    obj = RerankObjective(TrainConfig.from_dict(raw), DistInfo(), torch.float32, no_autocast)
    docs = [*DOCS, LONG_DOC] if template == "card" else DOCS
    assert (max(map(len, obj.inputs.build(QUERY, docs))) == RERANK_MAX_LENGTH) == (template == "card")
    obj.model.train()
    ours = obj.score(QUERY, docs)
    assert obj.model.training
    obj.model.eval()
    instructed = obj.score(QUERY, docs, instruction="Find the passage that defines the term")
    assert not obj.model.training
    ref, _ = official_rerank(rr_ckpt, QUERY, docs, DEFAULT_INSTRUCTION, template=template,
                             max_length=RERANK_MAX_LENGTH)
    ref_instructed, _ = official_rerank(rr_ckpt, QUERY, docs, "Find the passage that defines the term",
                                        template=template, max_length=RERANK_MAX_LENGTH)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(instructed, ref_instructed.numpy(), atol=1e-5)
    assert float(ref.std()) > 1e-3 and float(np.abs(ours - instructed).max()) > 1e-4  # the comparisons mean something


def hand_ndcg_mrr(scores: list[float], relevant: set[int], k: int) -> tuple[float, float]:
    """Binary-relevance nDCG@k (gain 1 / log2(rank + 1)) and reciprocal rank of the first relevant in the top k."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    dcg = sum(1 / math.log2(rank + 2) for rank, i in enumerate(order) if i in relevant)
    ideal = sum(1 / math.log2(rank + 2) for rank in range(min(k, len(relevant))))
    mrr = next((1 / (rank + 1) for rank, i in enumerate(order) if i in relevant), 0.0)
    return dcg / ideal, mrr


def test_evaluate_is_ndcg_and_mrr_at_k_of_the_official_scores(rr_ckpt: Path, rr_data: Path, tmp_path: Path) -> None:
    """Queries grouped across rows (a document relevant when any row says so); a query with nothing
    relevant is left out of the means."""
    beta = "who is beta"
    rows: list[dict[str, object]] = [
        {"query": "what is alpha", "positive": "alpha is the first letter",
         "negatives": ["a river in spain", "bread and butter", "the end of the line"]},
        {"query": beta, "document": "beta follows alpha", "label": 1},
        {"query": beta, "document": "the second letter of greek", "label": 0},
        {"query": beta, "document": "cars need fuel", "label": 0},
        {"query": beta, "positive": "the second letter of greek", "negatives": ["songs of the sea"]},
        {"query": "gamma rays", "document": "a cat on a mat", "label": 0},
    ]
    eval_file = write_jsonl(tmp_path / "eval.jsonl", rows)
    obj = RerankObjective(rerank_config(rr_ckpt, rr_data, tmp_path / "run", eval_file=eval_file, k=2), DistInfo(),
                          torch.float32, no_autocast)
    assert obj.has_eval
    got = obj.evaluate()
    expected = [
        ("what is alpha", ["alpha is the first letter", "a river in spain", "bread and butter", "the end of the line"],
         {0}),
        (beta, ["beta follows alpha", "the second letter of greek", "cars need fuel", "songs of the sea"], {0, 1}),
    ]
    ndcg, mrr = [], []
    for query, docs, relevant in expected:
        scores = official_rerank(rr_ckpt, query, docs, DEFAULT_INSTRUCTION, max_length=RERANK_MAX_LENGTH)[0].tolist()
        gaps = np.diff(sorted(scores))
        assert gaps.min() > 1e-4, scores  # no near tie that rounding could flip
        a, b = hand_ndcg_mrr(scores, relevant, k=2)
        ndcg.append(a)
        mrr.append(b)
    assert set(got) == {"ndcg_at_2", "mrr_at_2"}
    assert got["ndcg_at_2"] == pytest.approx(sum(ndcg) / 2, abs=1e-6)
    assert got["mrr_at_2"] == pytest.approx(sum(mrr) / 2, abs=1e-6)


def test_an_evaluation_file_with_nothing_relevant_is_refused_before_training(rr_ckpt: Path, rr_data: Path,
                                                                             tmp_path: Path) -> None:
    """Only "no" rows: nDCG and MRR are defined for no query. Refused when the objective is built (before
    the first step), naming the file and the fix, not at the first evaluation with a message about a run's
    query ids."""
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"query": f"q{i}", "document": f"d {i}", "label": 0}
                                                      for i in range(3)])
    with pytest.raises(QwenEmbedError) as info:
        RerankObjective(rerank_config(rr_ckpt, rr_data, tmp_path / "run", eval_file=eval_file), DistInfo(),
                        torch.float32, no_autocast)
    message = str(info.value)
    assert str(eval_file) in message and "label 1" in message and "eval.file" in message, message


def test_layouts_lora_tasks_and_a_seq_cls_checkpoint_without_sft(tiny_checkpoint: TinyCheckpoint, rr_ckpt: Path,
                                                                 rr_data: Path, tmp_path: Path) -> None:
    seq_cls = tiny_checkpoint("seq-cls", tokenizer="small", std=0.08)
    with pytest.raises(ConfigError, match=r"no full-vocabulary head for rerank\.loss sft; set rerank\.loss to bce"):
        RerankObjective(rerank_config(seq_cls, rr_data, tmp_path / "a", loss="sft"), DistInfo(), torch.float32,
                        no_autocast)
    obj = RerankObjective(rerank_config(seq_cls, rr_data, tmp_path / "b", loss="bce"), DistInfo(), torch.float32,
                          no_autocast)
    assert (obj.layout, obj.lora_task, obj.has_eval) == ("seq-cls", "SEQ_CLS", False)
    causal = RerankObjective(rerank_config(rr_ckpt, rr_data, tmp_path / "c"), DistInfo(), torch.float32, no_autocast)
    assert (causal.layout, causal.lora_task) == ("causal-lm", "CAUSAL_LM")
    assert causal.trunk is causal.model.model and causal.base.path == rr_ckpt


def test_make_objective_by_kind(rr_ckpt: Path, rr_data: Path, tmp_path: Path) -> None:
    cfg = rerank_config(rr_ckpt, rr_data, tmp_path / "run")
    assert dict(OBJECTIVES) == {"embed": EmbeddingObjective, "rerank": RerankObjective}
    assert isinstance(make_objective("rerank", cfg, DistInfo(), torch.float32, no_autocast), RerankObjective)
    with pytest.raises(ConfigError, match=r"unknown training kind 'rank'; choose one of \['embed', 'rerank'\]"):
        make_objective("rank", cfg, DistInfo(), torch.float32, no_autocast)
