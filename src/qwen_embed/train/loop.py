"""The training loop: data stream -> GradCache step -> gradient averaging -> AdamW with warm-up and cosine.

One step = one global batch of one task. Each rank tokenises its slice of rows, packs them into
token-budget chunks and runs a GradCache step (or a plain step) whose loss gathers the query and
positive embeddings of all ranks; the gradients are averaged, clipped, and AdamW steps. The model is
the inference trunk (`qwen_embed.model.Qwen3Model`), optionally with peft LoRA layers injected,
with per-layer gradient checkpointing and bf16 autocast on GPU applied from outside.

Checkpoints (`output_dir/checkpoints/step-NNNNNNNN/`) hold the weights (HF layout) or the adapter
(PEFT layout), and `state.pt` with the optimiser, scheduler, every RNG and the data position; they
are written to a temporary folder and renamed, so a crash never leaves a half checkpoint, and a
restart continues from the newest one exactly (the same parameters as an uninterrupted run). Rank 0
appends one JSONL line per `log_every` steps and per evaluation to `output_dir/train_log.jsonl`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..batching import PackedBatch
from ..checkpoint import Checkpoint
from ..errors import ConfigError
from ..model import Qwen3Model
from . import distributed as D
from .config import TrainConfig
from .data import BatchStream, Collator, EvalSet, TrainBatch, load_eval_set
from .gradcache import full_batch_step, grad_cache_step, pack_chunks
from .losses import matryoshka_dims, matryoshka_rows

LOG_NAME = "train_log.jsonl"


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Any:
    """Linear warm-up over `warmup` steps (the first step already gets lr/warmup), then cosine to min_ratio."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Builds the model, optimiser, data and evaluation of a TrainConfig and runs the steps."""

    def __init__(self, cfg: TrainConfig, info: D.DistInfo | None = None) -> None:
        self.cfg = cfg
        self.info = info or D.init(cfg.model.device)
        self.out = Path(cfg.train.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        dev = self.info.device
        precision = cfg.model.precision
        if precision == "auto":
            precision = "bf16-autocast" if dev.type == "cuda" else "fp32"
        self.precision = precision
        weight_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.base = Checkpoint.load(cfg.model.path, dev, weight_dtype, want_head=False)
        self.tokenizer = self.base.tokenizer
        self.model: Qwen3Model = self.base.model
        self.model.train()
        self.model.gradient_checkpointing = cfg.model.gradient_checkpointing
        self.lora_config = None
        if cfg.lora.enabled:
            from .lora import add_lora, lora_config

            self.lora_config = lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules,
                                           base_model=cfg.model.path)
            add_lora(self.model, self.lora_config)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=dev.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(o.warmup_steps, cfg.train.max_steps, o.min_lr_ratio))
        d = cfg.data
        if cfg.train.batch_size % self.info.world_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} does not divide over "
                              f"{self.info.world_size} processes; use a multiple of {self.info.world_size}.")
        self.stream = BatchStream(d.train_files, cfg.train.batch_size, seed=cfg.train.seed,
                                  shuffle_buffer=d.shuffle_buffer)
        self.collate = Collator(self.tokenizer, d.query_max_length, d.doc_max_length, d.num_negatives,
                                d.default_instruction, cfg.train.seed)
        self.dims = matryoshka_dims(cfg.loss.matryoshka_dims, self.base.config.hidden_size)
        self.weights = cfg.loss.matryoshka_weights or None
        self.eval_set: EvalSet | None = None
        if cfg.eval.file:
            self.eval_set = load_eval_set(cfg.eval.file, max_queries=cfg.eval.max_queries,
                                          default_instruction=d.default_instruction)
        self.step = 0

    # -- one step ----------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.precision == "bf16-autocast":
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode(self, chunk: PackedBatch) -> torch.Tensor:
        """Packed chunk -> last-token hidden states [n, H] in float32."""
        with self.autocast():
            h = self.model(chunk, output_indices=chunk.last_indices)
        return h.float()

    def loss_fn(self, batch: TrainBatch) -> Any:
        b, k = len(batch.queries), batch.num_negatives
        dev = self.info.device
        keys = batch.pos_keys.to(dev), batch.neg_keys.to(dev), batch.pos_keys_all.to(dev)

        def fn(emb: torch.Tensor) -> torch.Tensor:
            q, p = emb[:b], emb[b : 2 * b]  # [b, H]
            n = emb[2 * b :].view(b, k, -1) if k else None  # [b, K, H]
            q_all, p_all = D.gather_with_grad(q, self.info), D.gather_with_grad(p, self.info)  # [N, H]
            return matryoshka_rows(q, p, n, q_all, p_all, batch.offset, dims=self.dims, weights=self.weights,
                                   temperature=self.cfg.loss.temperature, margin=self.cfg.loss.margin,
                                   pos_keys=keys[0], neg_keys=keys[1], pos_keys_all=keys[2])
        return fn

    def compute_gradients(self, batch: TrainBatch) -> float:
        """Zero the gradients, run the (GradCache) forward/backward and average over ranks -> global loss."""
        self.optimizer.zero_grad(set_to_none=True)
        chunks = pack_chunks(batch.sequences, self.cfg.train.chunk_tokens, self.info.device)
        if self.cfg.train.grad_cache:
            loss = grad_cache_step(self.encode, chunks, self.loss_fn(batch), self.info.device)
        else:
            loss = full_batch_step(self.encode, chunks, self.loss_fn(batch))
        D.average_gradients(self.params, self.info)
        return D.average_scalar(float(loss), self.info)

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        loss = self.compute_gradients(batch)
        clip = self.cfg.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"loss": loss, "lr": float(lr), "grad_norm": float(norm)}

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p for p in self.ckpt_dir.glob("step-*") if (p / "state.pt").is_file())

    def save_weights(self, folder: Path) -> None:
        if self.lora_config is not None:
            from .lora import save_adapter

            save_adapter(self.model, self.lora_config, folder / "adapter")
        else:
            from .export import save_trunk

            save_trunk(self.model, self.base.path, folder / "model", overwrite=True)

    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step-N (rank 0) and prune old ones; every rank waits for it."""
        target = self.ckpt_dir / f"step-{self.step:08d}"
        if self.info.is_main and not target.exists():
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=self.ckpt_dir))
            try:
                self.save_weights(tmp)
                state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                         "data_position": self.step, "config": self.cfg.to_dict()}
                torch.save(state, tmp / "state.pt")
                tmp.rename(target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            for old in self.checkpoints()[: -max(1, self.cfg.train.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        D.barrier(self.info)
        return target

    def resume(self) -> bool:
        """Load the newest checkpoint when there is one (train.resume); True when it did."""
        found = self.checkpoints()
        if not self.cfg.train.resume or not found:
            return False
        folder = found[-1]
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        dev = self.info.device
        if self.lora_config is not None:
            from peft import set_peft_model_state_dict

            from .lora import ADAPTER_WEIGHTS, PREFIX

            raw = load_file(str(folder / "adapter" / ADAPTER_WEIGHTS), device=str(dev))
            set_peft_model_state_dict(self.model, {k.removeprefix(PREFIX): v for k, v in raw.items()})
        else:
            weights = load_file(str(folder / "model" / "model.safetensors"), device=str(dev))
            self.model.load_state_dict({k: v.to(self.params[0].dtype) for k, v in weights.items()}, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        if self.info.is_main:
            self._truncate_log(self.step)
        return True

    # -- logging and evaluation --------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.out / LOG_NAME

    def _truncate_log(self, step: int) -> None:
        """Drop log lines of steps after `step` (written after the checkpoint a resume starts from)."""
        if not self.log_path.is_file():
            return
        keep = [ln for ln in self.log_path.read_text(encoding="utf-8").splitlines()
                if ln.strip() and json.loads(ln)["step"] <= step]
        tmp = self.log_path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
        tmp.replace(self.log_path)

    def _logged_elapsed(self) -> float:
        """elapsed_s of the last training record in the log (a resumed run goes on from it), else 0."""
        if not self.log_path.is_file():
            return 0.0
        for line in reversed(self.log_path.read_text(encoding="utf-8").splitlines()):
            if line.strip() and "elapsed_s" in (rec := json.loads(line)):
                return float(rec["elapsed_s"])
        return 0.0

    def log(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate(self) -> dict[str, float] | None:
        """Held-out Recall@k / MRR@k / nDCG@k on rank 0 (None without an eval file)."""
        if self.eval_set is None:
            return None
        result = None
        if self.info.is_main:
            from .evaluate import evaluate

            d = self.cfg.data
            result = evaluate(self.model, self.tokenizer, self.eval_set, device=self.info.device,
                              k=self.cfg.eval.k, query_max_length=d.query_max_length,
                              doc_max_length=d.doc_max_length, batch_tokens=self.cfg.train.chunk_tokens,
                              autocast=self.autocast())
            self.log({"step": self.step, "eval": result})
        D.barrier(self.info)
        return result

    # -- the run -----------------------------------------------------------------------------------
    def batches(self) -> Iterator[TrainBatch]:
        for raw in self.stream.batches(self.step):
            yield self.collate(raw, self.info.rank, self.info.world_size)

    def run(self, until: int | None = None) -> dict[str, Any]:
        """Train to train.max_steps (or stop after step `until`, as an interruption would); returns a summary."""
        t = self.cfg.train
        resumed = self.resume()
        stop = t.max_steps if until is None else min(until, t.max_steps)
        show = sys.stderr.isatty() if t.progress is None else t.progress
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not (show and self.info.is_main),
                   unit="step", desc="training")
        if self.step == 0 and self.eval_set is not None:
            self.evaluate()
        start, tokens_since, last = time.perf_counter(), 0, None
        run_start, elapsed_before = start, self._logged_elapsed()  # elapsed_s counts from the run's start
        if self.step < stop:
            for batch in self.batches():
                tokens_since += batch.num_tokens
                stats = self.train_step(batch)
                last = stats
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    elapsed = time.perf_counter() - start
                    tokens = D.average_scalar(float(tokens_since), self.info) * self.info.world_size
                    self.log({"step": self.step, **stats, "task": batch.task, "tokens": int(tokens),
                              "tokens_per_s": tokens / max(elapsed, 1e-9),
                              "elapsed_s": elapsed_before + time.perf_counter() - run_start})
                    start, tokens_since = time.perf_counter(), 0
                if self.eval_set is not None and (self.step % self.cfg.eval.every == 0 or self.step == t.max_steps):
                    self.evaluate()
                if (t.save_every and self.step % t.save_every == 0) or self.step == stop:
                    self.save_checkpoint()
                if self.step >= stop:
                    break
        bar.close()
        if self.step >= t.max_steps:
            self.finish()
        return {"step": self.step, "resumed": resumed, "last": last}

    def finish(self) -> None:
        """Final model: output_dir/model (HF layout) and, for LoRA, output_dir/adapter; the learning curve."""
        if self.info.is_main:
            if self.lora_config is not None:
                from .lora import merge_lora, save_adapter

                save_adapter(self.model, self.lora_config, self.out / "adapter")
                if self.cfg.lora.merge_at_end:
                    import copy

                    from .export import save_trunk

                    save_trunk(merge_lora(copy.deepcopy(self.model)), self.base.path, self.out / "model",
                               overwrite=True)
            else:
                from .export import save_trunk

                save_trunk(self.model, self.base.path, self.out / "model", overwrite=True)
            if self.log_path.is_file():
                try:
                    from .plot import plot_learning_curve

                    plot_learning_curve(self.log_path, self.out / "learning_curve.png")
                except ImportError:  # matplotlib is optional
                    pass
        D.barrier(self.info)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run a whole training job (also under torchrun) and return its summary."""
    info = D.init(cfg.model.device)
    try:
        return Trainer(cfg, info).run()
    finally:
        D.shutdown(info)
