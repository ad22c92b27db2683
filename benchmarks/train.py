"""Training throughput: qwen-embed (GradCache, packed, full and LoRA) vs sentence-transformers'
CachedMultipleNegativesRankingLoss, on the same data, batch and model, in one process.

Model: random weights with the Qwen3-Embedding-0.6B shape (hidden 1024, 28 layers, 16/8 heads,
head_dim 128, intermediate 3072) and the real Qwen tokenizer when ../shared has it; `--quick` uses the
tiny test shape (hidden 64, 2 layers, small tokenizer) so the script runs on a CPU in seconds.
Data: the Python standard library pairs (docstring first line -> function source), no instruction.
Both sides: bf16 weights on GPU (fp32 on CPU), AdamW, one global batch of --batch pairs per step, the
cached loss over chunks of --mini-batch sequences (ours: a token budget of mini-batch x mean length).
Reported: tokens/s = real (unpadded) tokens of queries and documents per second of training step, and
the ratio ours / sentence-transformers, for full fine-tuning and for LoRA (r 16 on q/k/v/o/gate/up/down).

    python benchmarks/train.py                 # GPU, 0.6B shape
    python benchmarks/train.py --quick         # CPU smoke run
    python benchmarks/train.py --rerank        # reranker training: train rerank vs CrossEncoder (pairs/s)
    python benchmarks/train.py --rerank --quick
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from qwen_embed.tiny import make_checkpoint
from qwen_embed.train.config import TrainConfig
from qwen_embed.train.loop import Trainer
from qwen_embed.train.stdlib_pairs import write_pairs

SHAPE_06B = {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
             "head_dim": 128, "intermediate_size": 3072}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(ckpt: Path, data: Path, out: Path, args: argparse.Namespace, lora: bool, device: torch.device,
         mean_len: float) -> dict[str, Any]:
    cfg = TrainConfig.from_dict({
        "model": {"path": str(ckpt), "device": device.type, "precision": "bf16" if device.type == "cuda" else "fp32",
                  "gradient_checkpointing": args.checkpointing, "compile": args.compile},
        "data": {"train_files": [str(data)], "default_instruction": None, "query_max_length": args.query_len,
                 "doc_max_length": args.doc_len, "num_negatives": 0},
        "optim": {"lr": 1e-4 if lora else 1e-5, "warmup_steps": 1},
        "train": {"output_dir": str(out), "batch_size": args.batch, "grad_cache": True,
                  "chunk_tokens": int(args.mini_batch * mean_len), "max_steps": 1000, "progress": False},
        "lora": {"enabled": lora, "r": 16, "alpha": 32},
    })
    t = Trainer(cfg)
    times, tokens = [], []
    for i, batch in enumerate(t.batches()):
        if i == args.warmup + args.steps:
            break
        sync(device)
        start = time.perf_counter()
        stats = t.train_step(batch)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            tokens.append(batch.num_tokens)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"tokens_per_s": sum(tokens) / sum(times), "step_s": statistics.median(times), "loss": stats["loss"],
            "peak_gib": peak}


def sentence_transformers_run(ckpt: Path, rows: list[dict[str, str]], args: argparse.Namespace, lora: bool,
                              device: torch.device) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer, losses, models

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tr = models.Transformer(str(ckpt), max_seq_length=args.doc_len, model_kwargs={"dtype": dtype})
    pool = models.Pooling(tr.get_word_embedding_dimension(), pooling_mode="lasttoken")
    model = SentenceTransformer(modules=[tr, pool, models.Normalize()], device=str(device))
    if lora:
        from qwen_embed.train.lora import add_lora, lora_config

        # peft directly (SentenceTransformer.add_adapter needs a newer peft than this environment's)
        add_lora(getattr(tr, "auto_model", None) or tr.model, lora_config(16, 32))
        model.to(device)
    if args.checkpointing:
        tr.auto_model.gradient_checkpointing_enable()
    model.train()
    loss_fn = losses.CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=args.mini_batch)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4 if lora else 1e-5)
    times, tokens = [], []
    for i in range(args.warmup + args.steps):
        chunk = rows[i * args.batch : (i + 1) * args.batch]
        prep = getattr(model, "preprocess", None) or model.tokenize
        fq = prep([r["query"] for r in chunk])  # queries are short (< query_len) in this data
        fd = prep([r["positive"] for r in chunk])
        fq, fd = ({k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()} for f in (fq, fd))
        sync(device)
        start = time.perf_counter()
        loss = loss_fn([fq, fd], None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            tokens.append(int(fq["attention_mask"].sum() + fd["attention_mask"].sum()))
    return {"tokens_per_s": sum(tokens) / sum(times), "step_s": statistics.median(times), "loss": float(loss.detach())}


def rerank_ours(ckpt: Path, data: Path, out: Path, args: argparse.Namespace, device: torch.device,
                compile: bool = False) -> dict[str, Any]:
    """qwen-embed `train rerank` steps (bce, 1 negative per positive: 2 pairs per row), timed per step."""
    cfg = TrainConfig.from_dict({
        "model": {"path": str(ckpt), "device": device.type, "precision": "bf16" if device.type == "cuda" else "fp32",
                  "gradient_checkpointing": args.checkpointing, "compile": compile},
        # file order (shuffle buffer 1): step i takes rows i*batch..(i+1)*batch, as the CrossEncoder loop does
        "data": {"train_files": [str(data)], "default_instruction": None, "shuffle_buffer": 1},
        "optim": {"lr": 1e-5, "warmup_steps": 1},
        "train": {"output_dir": str(out), "batch_size": args.batch, "chunk_tokens": args.batch * 2 * args.doc_len,
                  "max_steps": 1000, "progress": False},
        "rerank": {"loss": "bce", "negatives_per_positive": 1, "max_length": args.doc_len},
    })
    t = Trainer(cfg, kind="rerank")
    times, pairs, tokens = [], [], []
    batches = iter(t.batches())
    for i in range(args.warmup + args.steps):
        sync(device)
        start = time.perf_counter()  # the batch's tokenization and packing count, as the CrossEncoder's do
        batch = next(batches)
        stats = t.train_step(batch)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            pairs.append(len(batch.sequences))
            tokens.append(batch.num_tokens)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"pairs_per_s": sum(pairs) / sum(times), "tokens_per_s": sum(tokens) / sum(times),
            "step_s": statistics.median(times), "loss": stats["loss"], "peak_gib": peak}


def rerank_st(ckpt: Path, rows: list[dict[str, Any]], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """sentence-transformers' CrossEncoder on the same CausalLM checkpoint (its LogitScore yes/no head),
    BinaryCrossEntropyLoss, the same pairs rendered with the same template, one backward per step."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from qwen_embed.embedder import DEFAULT_INSTRUCTION
    from qwen_embed.reranker import TEMPLATES

    tmpl = TEMPLATES["card"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = CrossEncoder(str(ckpt), device=str(device), max_length=args.doc_len, model_kwargs={"dtype": dtype})
    if args.checkpointing:
        model[0].auto_model.gradient_checkpointing_enable()
    model.train()
    loss_fn = BinaryCrossEntropyLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    times, pairs, tokens, padded = [], [], [], []
    for i in range(args.warmup + args.steps):
        chunk = rows[i * args.batch : (i + 1) * args.batch]
        heads = [tmpl.prefix + tmpl.head.format(instruction=DEFAULT_INSTRUCTION, query=r["query"]) for r in chunk]
        first = heads + heads
        second = [r["positive"] + tmpl.tail for r in chunk] + [r["negatives"][0] + tmpl.tail for r in chunk]
        labels = torch.tensor([1.0] * len(chunk) + [0.0] * len(chunk), device=device)
        sync(device)
        start = time.perf_counter()
        loss = loss_fn([first, second], labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
            pairs.append(len(first))
            enc = model.tokenizer(first, second, truncation=True, max_length=args.doc_len)
            tokens.append(sum(len(x) for x in enc["input_ids"]))
            padded.append(len(enc["input_ids"]) * max(len(x) for x in enc["input_ids"]))
    return {"pairs_per_s": sum(pairs) / sum(times), "tokens_per_s": sum(tokens) / sum(times),
            "padded_fraction": 1 - sum(tokens) / sum(padded),  # of the token slots its padded batches compute
            "step_s": statistics.median(times), "loss": float(loss.detach())}


def rerank_main(args: argparse.Namespace, device: torch.device) -> None:
    """`--rerank`: reranker training pairs/s, ours vs sentence-transformers' CrossEncoder, in one process."""
    args.batch = args.batch or (4 if args.quick else 32)
    args.steps = args.steps or (2 if args.quick else 5)
    if args.quick:
        args.doc_len = min(args.doc_len, 192)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        shape = {} if args.quick else SHAPE_06B
        ckpt = make_checkpoint(tmp / "model", "reranker", tokenizer="small" if args.quick else "auto",
                               dtype="float32" if args.quick else "bfloat16", **shape)
        train_file, _, _, _ = write_pairs(tmp / "data", held_out=0.0)
        pairs = [json.loads(ln) for ln in train_file.read_text().splitlines()]
        need = (args.warmup + args.steps) * args.batch
        pairs = (pairs * (need // len(pairs) + 2))[: need + 1]
        rows = [{"query": p["query"], "positive": p["positive"], "negatives": [q["positive"]]}
                for p, q in itertools.pairwise(pairs)]  # the next row's document: a "no"
        data = tmp / "rerank.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        results: dict[str, Any] = {"device": str(device), "shape": "tiny" if args.quick else "0.6B",
                                   "rows": args.batch, "pairs_per_step": 2 * args.batch, "steps": args.steps,
                                   "max_length": args.doc_len}
        results["ours"] = rerank_ours(ckpt, data, tmp / "run", args, device)
        if args.compile:  # the compiled path too, after the eager one, in the same process on the same rows
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            results["ours_compiled"] = rerank_ours(ckpt, data, tmp / "run-compiled", args, device, compile=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if not args.skip_st:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            # ours shuffles its rows; ST takes them in order: the same data, the same pairs per step
            results["st"] = rerank_st(ckpt, rows, args, device)
            if device.type == "cuda":
                results["st"]["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    st = results.get("st", {}).get("pairs_per_s")
    for side in ("ours", "ours_compiled"):
        if side in results:
            o = results[side]["pairs_per_s"]
            print(f"\nreranker training, {results['shape']} shape on {device}, {2 * args.batch} pairs/step: qwen-embed"
                  f"{' (model.compile)' if side == 'ours_compiled' else ''} {o:.1f} pairs/s, sentence-transformers "
                  f"CrossEncoder {st or float('nan'):.1f} pairs/s" + (f", {o / st:.2f}x" if st else ""))
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shape, small batch, CPU-friendly")
    ap.add_argument("--device", default=None, help="default: cuda when available")
    ap.add_argument("--batch", type=int, default=None, help="pairs per step (default 512; quick 16)")
    ap.add_argument("--mini-batch", type=int, default=None, help="sequences per cached chunk (default 64; quick 8)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 5; quick 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    ap.add_argument("--query-len", type=int, default=64)
    ap.add_argument("--doc-len", type=int, default=512)
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on both sides")
    ap.add_argument("--skip-st", action="store_true", help="only our side")
    ap.add_argument("--compile", action="store_true", help="our side with model.compile (--rerank: "
                    "our eager and compiled runs, in that order)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--rerank", action="store_true", help="reranker training (train rerank, bce) against "
                    "sentence-transformers' CrossEncoder on the same CausalLM checkpoint: pairs/s")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.rerank:
        rerank_main(args, device)
        return
    args.batch = args.batch or (16 if args.quick else 512)
    args.mini_batch = args.mini_batch or (8 if args.quick else 64)
    args.steps = args.steps or (2 if args.quick else 5)
    if args.quick:
        args.doc_len = min(args.doc_len, 128)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        shape = {} if args.quick else SHAPE_06B
        ckpt = make_checkpoint(tmp / "model", "embedding", tokenizer="small" if args.quick else "auto",
                               dtype="float32" if args.quick else "bfloat16", **shape)
        train_file, _, _, _ = write_pairs(tmp / "data", held_out=0.0)
        rows = [json.loads(ln) for ln in train_file.read_text().splitlines()]
        need = (args.warmup + args.steps) * args.batch
        rows = (rows * (need // len(rows) + 1))[:need]  # both sides cycle through the pairs (ours shuffles)
        from qwen_embed.tokenizer import QwenTokenizer

        tok = QwenTokenizer.from_dir(ckpt)
        lens = [min(len(x), args.doc_len) for x in tok.encode([r["positive"] for r in rows[:512]])]
        mean_len = statistics.mean(lens)
        results: dict[str, Any] = {"device": str(device), "shape": "tiny" if args.quick else "0.6B",
                                   "batch": args.batch, "mini_batch": args.mini_batch, "steps": args.steps,
                                   "mean_doc_tokens": mean_len}
        for lora in (False, True):
            name = "lora" if lora else "full"
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            results[f"ours_{name}"] = ours(ckpt, train_file, tmp / f"run-{name}", args, lora, device, mean_len)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if not args.skip_st:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                st = sentence_transformers_run(ckpt, rows, args, lora, device)
                if device.type == "cuda":
                    st["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    torch.cuda.empty_cache()
                results[f"st_{name}"] = st
    print(f"\ntraining throughput, {results['shape']} shape on {device}, batch {args.batch}, "
          f"mini-batch {args.mini_batch}, mean doc {mean_len:.0f} tokens")
    print(f"{'mode':<6} {'qwen-embed tok/s':>17} {'sentence-transformers tok/s':>28} {'ratio':>7}")
    for name in ("full", "lora"):
        o = results[f"ours_{name}"]["tokens_per_s"]
        s = results.get(f"st_{name}", {}).get("tokens_per_s")
        ratio = f"{o / s:6.2f}x" if s else "   n/a"
        print(f"{name:<6} {o:17.0f} {s or float('nan'):28.0f} {ratio:>7}")
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
