"""A training run's output folder: new, resumed, finished, or refused, decided before any model loads.

`train.output_dir` holds what a run writes (`RUN_ENTRIES`) and `run.json`, the fingerprint of the
settings that define the run (everything but how long it runs and how it reports: `train.max_steps`,
`train.progress`, `train.log_every`, `train.save_every`, `train.keep_checkpoints`, `eval.every`).

- missing or empty: a new run;
- the same run (same fingerprint; without `run.json`, a folder holding a checkpoint or a log and only a
  run's entries): resumed from its newest checkpoint, or, when that checkpoint is at `train.max_steps`
  already, reported finished with how to continue it (raise `train.max_steps`);
- anything else (another run's files, or files a run does not write): refused unless `overwrite`; then
  (and for the same run too: `overwrite` starts over) the run's own entries of the earlier run are
  removed and nothing else in the folder is touched.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import InputError
from ..files import OutputExistsError, check_output_dir, fingerprint, remove_path, write_json_atomic
from .config import TrainConfig

RUN_RECORD = "run.json"
RUN_ENTRIES = ("checkpoints", "train_log.jsonl", "train_log.tmp", "model", "adapter", "merged", "learning_curve.png",
               RUN_RECORD, ".*.tmp-*")
NOT_THE_RUN = {"train": ("max_steps", "progress", "log_every", "save_every", "keep_checkpoints", "resume",
                         "output_dir"), "eval": ("every",)}
_STEP = re.compile(r"^step-(\d+)$")


def run_fingerprint(cfg: TrainConfig) -> str:
    """Fingerprint of the settings that define a run (not its length or reporting)."""
    d: dict[str, Any] = cfg.to_dict()
    for section, keys in NOT_THE_RUN.items():
        for key in keys:
            d.get(section, {}).pop(key, None)
    return fingerprint(d)


def last_checkpoint_step(folder: Path) -> int:
    """Step of the newest checkpoint in folder/checkpoints (0 when none)."""
    ckpts = folder / "checkpoints"
    if not ckpts.is_dir():
        return 0
    steps = [int(m[1]) for e in ckpts.iterdir() if (m := _STEP.match(e.name)) and (e / "state.pt").is_file()]
    return max(steps, default=0)


@dataclass(frozen=True)
class RunState:
    """What `train embed` will do with its output folder."""

    kind: Literal["new", "resume", "finished"]
    folder: Path
    step: int = 0
    note: str = ""

    def message(self, max_steps: int) -> str | None:
        """One line for the user (None for a resume: the trainer says it, naming the checkpoint it loads)."""
        if self.kind == "resume":
            return self.note.strip(" ()") or None
        if self.kind == "finished":  # the trainer's own wording, said here without loading the model
            return (f"{self.folder} already finished its {max_steps} steps (at step {self.step}); to continue it, "
                    f"raise train.max_steps (e.g. --set train.max_steps={max_steps * 2}); to start over, choose "
                    f"another train.output_dir, or pass --overwrite")
        return None  # a new run: nothing to say before it starts (an error in its data is the one line)


def _own(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in RUN_ENTRIES)


def check_run_dir(cfg: TrainConfig, *, overwrite: bool = False) -> RunState:
    """Decide (see the module docstring) and prepare `train.output_dir`; raises before any model loads."""
    out = Path(cfg.train.output_dir)
    make_parents(out)
    check_output_dir(out, overwrite=True, what="train.output_dir")  # a file, not writable
    names = sorted(e.name for e in out.iterdir()) if out.is_dir() else []
    if not names:
        return _start(cfg, out)
    recorded, fp = _record(out), run_fingerprint(cfg)
    others = [n for n in names if not _own(n)]
    # without its run.json, a folder is taken for this run only when it holds what a run leaves (a checkpoint
    # or its log), not merely entries of a run's names (a user's own model/ or run.json)
    evidence = recorded is not None or last_checkpoint_step(out) > 0 or (out / "train_log.jsonl").is_file()
    same = not overwrite and not others and cfg.train.resume and recorded in (fp, None) and evidence
    if same:
        step = last_checkpoint_step(out)
        note = "" if recorded else f" ({RUN_RECORD} missing: assuming the same settings)"
        if step >= cfg.train.max_steps and ((out / "model").is_dir() or (out / "adapter").is_dir()):
            return RunState("finished", out, step)  # (without its final model, the trainer writes it)
        if step > 0:
            _start(cfg, out)
            return RunState("resume", out, step, note)
        (out / "train_log.jsonl").unlink(missing_ok=True)  # a start of this run that saved no checkpoint
        return _start(cfg, out)
    if not overwrite:
        what = (f"files a training run does not write ({', '.join(others[:3])})" if others else
                "a run with other settings" if recorded not in (fp, None) else
                "a run that cannot be resumed (train.resume is off)" if not cfg.train.resume else
                f"entries named like a run's ({', '.join(names[:3])}) but no {RUN_RECORD}, checkpoint or log of one")
        raise OutputExistsError(f"train.output_dir {out} holds {what}; choose a new train.output_dir (--set "
                                f"train.output_dir=...), or pass --overwrite to start a new run there (replacing only "
                                f"a run's own files: checkpoints/, train_log.jsonl, model/, adapter/, "
                                f"learning_curve.png).")
    if int(os.environ.get("RANK", "0")) == 0:
        for n in names:
            if _own(n):
                remove_path(out / n)
    return _start(cfg, out)


def make_parents(out: Path) -> None:
    """Create the parents of an output folder (a config's `runs/x`), with a user error when impossible."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"train.output_dir {out}: its folder {out.parent} cannot be created ({e.strerror or e}); "
                         f"choose another path.") from None


def _record(out: Path) -> str | None:
    try:
        value = json.loads((out / RUN_RECORD).read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _start(cfg: TrainConfig, out: Path) -> RunState:
    if int(os.environ.get("RANK", "0")) == 0:
        out.mkdir(exist_ok=True)
        write_json_atomic(out / RUN_RECORD, {"settings": run_fingerprint(cfg)})
    return RunState("new", out)


def discard_empty_run(out: Path, *, created: bool) -> None:
    """Remove the run record of a run that wrote nothing else (and the folder when this run made it)."""
    if not out.is_dir() or any(e.name != RUN_RECORD for e in out.iterdir()):
        return
    (out / RUN_RECORD).unlink(missing_ok=True)
    if created:
        with contextlib.suppress(OSError):
            out.rmdir()
