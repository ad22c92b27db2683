"""The training loop: an objective's batches -> gradients -> averaging over ranks -> AdamW (warm-up, cosine).

One step = one global batch of one task. The model-kind specific part (the trained module, the data,
the forward/backward and the held-out evaluation) is an `Objective` (objectives.py: embedding
contrastive with GradCache, reranker yes/no); checkpoints are `checkpoints.CheckpointStore` and the
final folders `export.py`. The loop owns the optimiser, the schedule, gradient averaging, the
non-finite guard, logs and evaluation cadence. Gradient checkpointing (checkpointing.py), LoRA
(lora.py) and bf16 autocast on GPU are applied from outside the model.

A run resumes from its newest intact checkpoint exactly (the same parameters as an uninterrupted run).
Rank 0 appends one JSONL line per `log_every` steps and per evaluation to `output_dir/train_log.jsonl`;
`elapsed_s` there is the training time since the run's start, across resumes. A non-finite loss stops
the run at that step, before the optimiser applies it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, QwenEmbedError
from . import distributed as D
from .checkpoints import CheckpointStore, load_into, read_weights
from .config import TrainConfig
from .objectives import Objective, make_objective
from .rundir import check_merge_plan, merge_pending, record_merge

LOG_NAME = "train_log.jsonl"


class TrainingError(QwenEmbedError):
    """Training cannot go on (a non-finite loss)."""


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Any:
    """Linear warm-up over `warmup` steps (the first step already gets lr/warmup), then cosine to min_ratio."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def rng_state() -> dict[str, Any]:
    """Every generator's state (Python, torch CPU, CUDA)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def say(info: D.DistInfo, message: str) -> None:
    """One line for the person running the job (rank 0, stderr)."""
    if info.is_main:
        print(message, file=sys.stderr)


class Trainer:
    """Builds the objective (model, data, evaluation), the optimiser and schedule of a TrainConfig; runs the steps."""

    def __init__(self, cfg: TrainConfig, info: D.DistInfo | None = None, kind: str = "embed") -> None:
        self.cfg = cfg
        self.kind = kind
        self.info = info or D.init(cfg.model.device)
        self.out = Path(cfg.train.output_dir)
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        dev = self.info.device
        precision = cfg.model.precision
        if precision == "auto":
            precision = "bf16-autocast" if dev.type == "cuda" else "fp32"
        self.precision = precision
        weight_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        if cfg.train.batch_size % self.info.world_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} does not divide over "
                              f"{self.info.world_size} processes; use a multiple of {self.info.world_size}.")
        self.objective: Objective = make_objective(kind, cfg, self.info, weight_dtype, self.autocast)
        self.base = self.objective.base
        self.tokenizer = self.base.tokenizer
        self.model = self.objective.model
        self.model.train()
        if cfg.model.gradient_checkpointing:
            from .checkpointing import enable_gradient_checkpointing

            enable_gradient_checkpointing(self.objective.trunk)
        self.lora_config = None
        if cfg.lora.enabled:
            from .lora import add_lora, lora_config

            self.lora_config = lora_config(cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules,
                                           base_model=cfg.model.path, task_type=self.objective.lora_task)
            add_lora(self.model, self.lora_config)
        if cfg.model.compile:  # after LoRA, so the adapters are traced too; parameter names are unchanged
            for layer in self.objective.trunk.layers:
                layer.compile(dynamic=True)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.ndim >= 2]
        no_decay = [p for p in self.params if p.ndim < 2]
        o = cfg.optim
        # The fused kernel on CUDA and on the CPU (torch picks it by itself on neither): one pass over each
        # parameter, no temporaries of the parameters' size. On 2 CPU cores, 181M parameters (the 0.6B
        # model's vocabulary rows and 8 MLP matrices): 66 ms a step and 3.1 GB peak against 491 ms and
        # 4.0 GB for the multi-tensor form (benchmarks/optimizer.py); the same update up to float rounding
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=dev.type in ("cuda", "cpu"))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(o.warmup_steps, cfg.train.max_steps, o.min_lr_ratio))
        self.store = CheckpointStore(self.out / "checkpoints", cfg.train.keep_checkpoints)
        self.step = 0
        self.elapsed = 0.0  # training seconds before this process (from the checkpoint resumed)

    @property
    def eval_set(self) -> Any:
        return getattr(self.objective, "eval_set", None)

    # -- one step ----------------------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """bf16 autocast when the precision asks for it, else nothing."""
        if self.precision == "bf16-autocast":
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def compute_gradients(self, batch: Any) -> float:
        """Zero the gradients, run the objective's forward/backward and average over ranks -> global loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.objective.gradients(batch)
        D.average_gradients(self.params, self.info)
        return D.average_scalar(loss, self.info)

    def train_step(self, batch: Any) -> dict[str, float]:
        """One optimiser step; a non-finite loss stops the run before anything is applied."""
        loss = self.compute_gradients(batch)
        if not math.isfinite(loss):
            last = self.store.list()
            raise TrainingError(
                f"the loss is {loss} at step {self.step + 1} (batch {getattr(batch, 'index', self.step)}); stopped "
                f"before applying it. The newest checkpoint is {last[-1] if last else 'none'}; lower optim.lr, "
                "check the data of this batch, or use model.precision fp32.")
        clip = self.cfg.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]  # the lr this step applies
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"loss": loss, "lr": float(lr), "grad_norm": float(norm)}

    # -- checkpoints -------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Finished checkpoints, oldest first."""
        return self.store.list()

    def save_weights(self, folder: Path) -> None:
        """The weights (base layout) or the adapter (PEFT) into `folder`."""
        if self.lora_config is not None:
            from .lora import save_adapter

            save_adapter(self.model, self.lora_config, folder / "adapter")
        else:
            from .export import write_checkpoint

            write_checkpoint(self.model.state_dict(), self.base.path, folder / "model",
                             self.objective.layout, overwrite=True)  # type: ignore[arg-type]

    def load_weights(self, folder: Path) -> None:
        """Restore what `save_weights` wrote (strictly; non-finite weights refused)."""
        dev = self.info.device
        if self.lora_config is not None:
            from peft import set_peft_model_state_dict

            from .lora import ADAPTER_WEIGHTS, PREFIX

            raw = read_weights(folder / "adapter" / ADAPTER_WEIGHTS, dev)
            set_peft_model_state_dict(self.model, {k.removeprefix(PREFIX): v for k, v in raw.items()})
        else:
            load_into(self.model, read_weights(folder / "model" / "model.safetensors", dev), self.params[0].dtype)

    def save_checkpoint(self, elapsed: float | None = None) -> Path:
        """Write checkpoints/step-N (rank 0) and prune old ones; every rank waits for it."""
        target = self.store.folder / f"step-{self.step:08d}"
        if self.info.is_main:
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                     "data_position": self.step, "elapsed_s": self.elapsed if elapsed is None else elapsed,
                     "kind": self.kind, "config": self.cfg.to_dict()}
            target = self.store.save(self.step, self.save_weights, state)
        D.barrier(self.info)
        return target

    def resume(self) -> bool:
        """Load the newest intact checkpoint when there is one (train.resume); True when it did."""
        if self.info.is_main:
            self.store.clean_stale()
        D.barrier(self.info)
        if not self.cfg.train.resume:
            return False
        loaded = self.store.load_latest(self.load_weights)
        if loaded is None:
            return False
        state = loaded.state
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self._schedule_lr()
        self.elapsed = float(state.get("elapsed_s", 0.0))
        if self.info.is_main:
            self._truncate_log(self.step)
        return True

    def _schedule_lr(self) -> None:
        """Set each parameter group's lr to this config's schedule at the current step: the loaded state holds
        the lr of the schedule it was saved with, which a raised train.max_steps changes (a cosine that ended
        at 0 would otherwise train the first new step with lr 0)."""
        sched = self.scheduler
        for group, base, f in zip(self.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
            group["lr"] = base * f(sched.last_epoch)

    # -- logging and evaluation --------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.out / LOG_NAME

    def _truncate_log(self, step: int) -> None:
        """Drop log lines of steps after `step` (written after the resumed checkpoint) and broken lines."""
        if not self.log_path.is_file():
            return
        from ..files import write_text_atomic

        keep = []
        for ln in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(ln)
            except ValueError:
                continue  # a line cut by a crash mid-write
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
                keep.append(ln)
        write_text_atomic(self.log_path, "".join(ln + "\n" for ln in keep))

    def log(self, record: dict[str, Any]) -> None:
        """Append one JSONL record (rank 0)."""
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate(self) -> dict[str, float] | None:
        """The objective's held-out metrics on rank 0, logged (None without an eval file)."""
        if not self.objective.has_eval:
            return None
        result = None
        if self.info.is_main:
            result = self.objective.evaluate()
            self.log({"step": self.step, "eval": result})
        D.barrier(self.info)
        return result

    # -- the run -----------------------------------------------------------------------------------
    def batches(self) -> Iterator[Any]:
        """This rank's batches from the current step on."""
        return self.objective.batches(self.step)

    def run(self, until: int | None = None) -> dict[str, Any]:
        """Train to train.max_steps (or stop after step `until`, as an interruption would); returns a summary."""
        t = self.cfg.train
        resumed = self.resume()
        check_merge_plan(self.cfg, [int(p.name.removeprefix("step-")) for p in self.checkpoints()], self.step)
        if resumed and self.step >= t.max_steps:
            say(self.info, f"{self.out} already finished its {t.max_steps} steps; to continue it, raise "
                f"train.max_steps (e.g. --set train.max_steps={2 * t.max_steps}); to start over, choose another "
                "train.output_dir.")
            export = not (self.out / "model").is_dir() and not (self.out / "adapter").is_dir()
            merge = merge_pending(self.cfg, self.out)
            if export or merge:
                say(self.info, "writing its missing " + " and ".join(
                    name for name, todo in (("final model", export), ("merge (merged/)", merge)) if todo) + ".")
                self.finish(export=export, merge=merge)
            return {"step": self.step, "resumed": resumed, "last": None}
        if resumed:
            say(self.info, f"resuming {self.out} from checkpoint step-{self.step:08d} (step {self.step} of "
                f"{t.max_steps}).")
        stop = t.max_steps if until is None else min(until, t.max_steps)
        # the first batch is read and built before anything is written: bad data fails with nothing written
        batches: Iterator[Any] = iter(())
        if self.step < stop:
            stream = iter(self.batches())
            batches = itertools.chain([next(stream)], stream)
        show = sys.stderr.isatty() if t.progress is None else t.progress
        bar = _progress(t.max_steps, self.step, show and self.info.is_main)
        if self.step == 0 and self.objective.has_eval:
            self.evaluate()
        run_start = time.perf_counter()
        start, tokens_since, last = run_start, 0, None
        if self.step < stop:
            for batch in batches:
                tokens_since += batch.num_tokens
                stats = self.train_step(batch)
                last = stats
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    now = time.perf_counter()
                    tokens = D.average_scalar(float(tokens_since), self.info) * self.info.world_size
                    self.log({"step": self.step, **stats, "task": batch.task, "tokens": int(tokens),
                              "tokens_per_s": tokens / max(now - start, 1e-9),
                              "elapsed_s": self.elapsed + now - run_start})
                    start, tokens_since = time.perf_counter(), 0
                if self.objective.has_eval and (self.step % self.cfg.eval.every == 0 or self.step == t.max_steps):
                    self.evaluate()
                if (t.save_every and self.step % t.save_every == 0) or self.step == stop:
                    self.save_checkpoint(self.elapsed + time.perf_counter() - run_start)
                if self.step >= stop:
                    break
        bar.close()
        if self.step >= t.max_steps:
            self.finish()
        return {"step": self.step, "resumed": resumed, "last": last}

    def finish(self, export: bool = True, merge: bool = True) -> None:
        """The end-of-run outputs: output_dir/model (the base's layout), output_dir/adapter for LoRA, the plot
        (`export`), and output_dir/merged with merge.method (`merge`; recorded once written, rundir.py)."""
        if self.info.is_main:
            if export:
                from .export import export_run

                export_run(self.model, self.base.path, self.out, self.objective.layout, self.lora_config,  # type: ignore[arg-type]
                           merge_at_end=self.cfg.lora.merge_at_end)
            if merge and self.cfg.merge.method is not None:  # stage 3: merge the last checkpoints -> output_dir/merged
                from .merge import held_out_evaluator, merge_run

                evaluate = (held_out_evaluator(self.cfg, self.eval_set, self.tokenizer, self.info.device,
                                               self.autocast) if self.kind == "embed" else None)
                merge_run(self.out, self.cfg.merge, base_model=self.base.path, evaluate_fn=evaluate)
                record_merge(self.cfg, self.out)
        D.barrier(self.info)


def _progress(total: int, initial: int, show: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not show, unit="step", desc="training")


def train(cfg: TrainConfig, kind: str = "embed") -> dict[str, Any]:
    """Run a whole training job of `kind` ("embed" or "rerank"; also under torchrun) and return its summary."""
    info = D.init(cfg.model.device)
    try:
        return Trainer(cfg, info, kind).run()
    finally:
        D.shutdown(info)
