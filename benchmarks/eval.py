"""Time to evaluate SciFact (BEIR test split), split into embedding, search and metrics; ours beside the reference.

Stages and their reference, run in the same process on the same inputs:
- embed corpus / embed queries: our Embedder (packed, sorted, no padding) vs transformers' AutoModel as the
  model card uses it (left padding, batches of 32 in input order, last-token pooling); `--reference-embed`
  turns the reference on (it is slow: on a CPU use --quick).
- search: our exact chunked top-k (torch, GPU when present) vs a dense numpy score matrix and argsort.
- metrics: our trec_eval port (every measure + MTEB's @k) vs pytrec_eval with MTEB's measure set.
Prints seconds per stage, ratios, and the nDCG@10 of both paths (they must agree).

    python benchmarks/eval.py --quick                                   # CPU, tiny random model, 64 tokens
    python benchmarks/eval.py --model Qwen/Qwen3-Embedding-0.6B --device cuda --reference-embed
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qwen_embed import Embedder
from qwen_embed.eval.beir import load_beir
from qwen_embed.eval.instructions import lookup
from qwen_embed.eval.metrics import evaluate
from qwen_embed.eval.retrieval import at_dim, build_run, embed_texts, exact_topk

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "beir" / "scifact"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Any, device: torch.device) -> tuple[Any, float]:
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def reference_embed(path: str, texts: list[str], instruction: str | None, max_length: int, device: torch.device,
                    dtype: torch.dtype) -> np.ndarray:
    """The model card's transformers usage: left padding, batches of 32, last token, EOS appended by the tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModel.from_pretrained(path, dtype=dtype).to(device).eval()
    if instruction is not None:
        texts = [f"Instruct: {instruction}\nQuery:{t}" for t in texts]
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            batch = tok(texts[i:i + 32] or [""], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
            h = model(**batch).last_hidden_state[:, -1]  # left padded: the last position is each text's last token
            out.append(h.float().cpu())
    return torch.cat(out).numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="embedding checkpoint (hub id or folder); --quick makes a tiny one")
    ap.add_argument("--dataset", default=str(SCIFACT), help="BEIR folder (default ../shared/data/beir/scifact)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--dtype", default=None, help="model dtype (default bf16 on cuda, fp32 on cpu)")
    ap.add_argument("--max-length", type=int, default=8192, help="tokens per input (default 8192)")
    ap.add_argument("--dim", type=int, default=None, help="Matryoshka dimension (default full)")
    ap.add_argument("--depth", type=int, default=1000, help="run depth (default 1000)")
    ap.add_argument("--quick", action="store_true", help="tiny random model, 64-token inputs: a CPU smoke run")
    ap.add_argument("--reference-embed", action="store_true", help="also time transformers' embedding (slow)")
    ap.add_argument("--json", default=None, help="also write the timings to this JSON file")
    args = ap.parse_args()

    if not Path(args.dataset, "corpus.jsonl").is_file():
        print(f"dataset {args.dataset} is absent; pass --dataset DIR", file=sys.stderr)
        return 2
    model = args.model
    if args.quick:
        from qwen_embed.tiny import make_checkpoint

        model = model or str(make_checkpoint(Path(tempfile.mkdtemp()) / "tiny", "embedding"))
        args.max_length = min(args.max_length, 64)
    if model is None:
        print("pass --model (e.g. Qwen/Qwen3-Embedding-0.6B) or --quick", file=sys.stderr)
        return 2
    ds = load_beir(args.dataset)
    emb = Embedder.from_pretrained(model, device=args.device, dtype=args.dtype, max_length=args.max_length)
    dev = emb.device
    instruction = lookup("SciFact")
    dim = args.dim or emb.hidden_size
    print(f"{ds.name}: {len(ds.corpus_ids)} documents, {len(ds.query_ids)} queries; model {model} on {dev} "
          f"({str(emb.dtype).removeprefix('torch.')}), max_length {args.max_length}, dim {dim}, depth {args.depth}")

    rows: dict[str, dict[str, float]] = {}
    _, t_warm = timed(lambda: embed_texts(emb, ds.corpus_texts[:256], progress=False), dev)  # compile, graphs
    print(f"warm-up (one-time compilation on CUDA): {t_warm:.1f} s")
    doc_raw, t_docs = timed(lambda: embed_texts(emb, ds.corpus_texts, progress=False), dev)
    q_raw, t_q = timed(lambda: embed_texts(emb, ds.query_texts, instruction=instruction, progress=False), dev)
    docs, queries = at_dim(doc_raw, dim), at_dim(q_raw, dim)
    rows["embed corpus"] = {"ours": t_docs}
    rows["embed queries"] = {"ours": t_q}
    tokens = sum(len(t) for t in emb.tokenize([t or " " for t in ds.corpus_texts]))
    if args.reference_embed:
        dtype = emb.dtype
        ref_docs, t = timed(lambda: reference_embed(model, ds.corpus_texts, None, args.max_length, dev, dtype), dev)
        rows["embed corpus"]["reference"] = t
        _, t = timed(lambda: reference_embed(model, ds.query_texts, instruction, args.max_length, dev, dtype), dev)
        rows["embed queries"]["reference"] = t
        cos = (at_dim(ref_docs, dim) * docs).sum(1)
        print(f"corpus embeddings, ours vs reference: min cosine {cos.min():.5f}, mean {cos.mean():.5f}")

    (scores, idx), t = timed(lambda: exact_topk(queries, docs, args.depth, device=dev), dev)
    rows["search"] = {"ours": t}

    def dense() -> tuple[np.ndarray, np.ndarray]:
        full = queries @ docs.T
        order = np.argsort(-full, axis=1, kind="stable")[:, :args.depth]
        return np.take_along_axis(full, order, 1), order

    (_ref_scores, ref_idx), t = timed(dense, dev)
    rows["search"]["reference"] = t
    agree = float((idx[:, :10] == ref_idx[:, :10]).mean())

    run = build_run(ds.query_ids, ds.corpus_ids, scores, idx)
    ev, t = timed(lambda: evaluate(ds.qrels, run, extra_k=[1, 3, 5, 10, 100, 1000]), dev)
    rows["metrics"] = {"ours": t}
    ndcg = ev.aggregate["ndcg_at_10"]
    try:
        import pytrec_eval

        ks = "1,3,5,10,100,1000"
        measures = {f"ndcg_cut.{ks}", f"map_cut.{ks}", f"recall.{ks}", f"P.{ks}", f"success.{ks}"}
        ref, t = timed(lambda: pytrec_eval.RelevanceEvaluator(ds.qrels, measures).evaluate(run), dev)
        rows["metrics"]["reference"] = t
        ref_ndcg = float(np.mean([v["ndcg_cut_10"] for v in ref.values()]))
    except ImportError:
        ref_ndcg = float("nan")

    print(f"\n{'stage':<14} {'ours (s)':>10} {'reference (s)':>14} {'ref / ours':>11}")
    for stage, r in rows.items():
        ref_t = r.get("reference")
        ratio = f"{ref_t / r['ours']:.2f}x" if ref_t else "-"
        print(f"{stage:<14} {r['ours']:>10.3f} {ref_t if ref_t else float('nan'):>14.3f} {ratio:>11}")
    total = sum(r["ours"] for r in rows.values())
    print(f"{'total (ours)':<14} {total:>10.3f}")
    print(f"\ncorpus: {tokens} tokens, {tokens / t_docs:,.0f} tokens/s; top-10 agreement with dense search "
          f"{agree:.4f}; nDCG@10 ours {ndcg:.6f} / pytrec_eval {ref_ndcg:.6f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "device": str(dev), "max_length": args.max_length,
                                               "dim": dim, "rows": rows, "ndcg_at_10": ndcg,
                                               "corpus_tokens": tokens}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
