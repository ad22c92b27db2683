"""A training run's output folder: new, resumed, finished, or refused, decided before any model loads.

`train.output_dir` holds what a run writes (`RUN_ENTRIES`) and `run.json`, the fingerprint of the
settings that define the run (everything but how long it runs and how it reports: `train.max_steps`,
`train.progress`, `train.log_every`, `train.save_every`, `train.keep_checkpoints`, `eval.every`, and the
`merge` section, which only post-processes the checkpoints). `merged/run_merge.json` is the fingerprint
of the `merge` section that wrote `merged/`.

- missing or empty: a new run;
- the same run (same fingerprint; without `run.json`, a folder holding a checkpoint or a log and only a
  run's entries): resumed from its newest checkpoint, or, when that checkpoint is at `train.max_steps`
  already and the end-of-run outputs are there (the final model; `merged/` of these merge settings when
  `merge.method` is set), reported finished with how to continue it (raise `train.max_steps`); a finished
  run that lacks one of them is resumed to write it, without training;
- anything else (another run's files, or files a run does not write): refused unless `overwrite`; then
  (and for the same run too: `overwrite` starts over) the run's own entries of the earlier run are
  removed and nothing else in the folder is touched.

A `merge.checkpoints` list naming a checkpoint that the run will not hold at its end (a step it never
saves, or one that `train.keep_checkpoints` deletes) is refused here, before anything is written
(`check_merge_plan`, which the trainer calls too).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, InputError
from ..files import OutputExistsError, check_output_dir, fingerprint, remove_path, write_json_atomic
from .config import MergeSettings, TrainConfig

RUN_RECORD = "run.json"
MERGE_RECORD = "run_merge.json"  # in merged/
RUN_ENTRIES = ("checkpoints", "train_log.jsonl", "train_log.tmp", "model", "adapter", "merged", "learning_curve.png",
               RUN_RECORD, ".*.tmp-*")
# what --overwrite replaces, for messages (the run's own entries users see)
OWN_LISTED = ", ".join(e + ("" if "." in e else "/") for e in RUN_ENTRIES if not e.startswith(".") and
                       e != "train_log.tmp")
NOT_THE_RUN = {"train": ("max_steps", "progress", "log_every", "save_every", "keep_checkpoints", "resume",
                         "output_dir"), "eval": ("every",),
               "merge": tuple(f.name for f in dataclasses.fields(MergeSettings))}
_STEP = re.compile(r"^step-(\d+)$")


def run_fingerprint(cfg: TrainConfig, *, with_merge: bool = False) -> str:
    """Fingerprint of the settings that define a run (not its length, reporting or merge); `with_merge`:
    the merge section counted, as run.json files of earlier versions have it."""
    d: dict[str, Any] = cfg.to_dict()
    for section, keys in NOT_THE_RUN.items():
        for key in keys if not (with_merge and section == "merge") else ():
            d.get(section, {}).pop(key, None)
    return fingerprint(d)


def checkpoint_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in folder/checkpoints (with their state.pt), oldest first."""
    ckpts = folder / "checkpoints"
    if not ckpts.is_dir():
        return []
    return sorted(int(m[1]) for e in ckpts.iterdir() if (m := _STEP.match(e.name)) and (e / "state.pt").is_file())


def last_checkpoint_step(folder: Path) -> int:
    """Step of the newest checkpoint in folder/checkpoints (0 when none)."""
    return max(checkpoint_steps(folder), default=0)


# -- the end-of-run merge ------------------------------------------------------------------------------------
def _saves(cfg: TrainConfig, after: int) -> range:
    """The steps after `after` at which the run saves a checkpoint by train.save_every (train.max_steps aside)."""
    t = cfg.train
    if not t.save_every:
        return range(0)
    return range((after // t.save_every + 1) * t.save_every, t.max_steps + 1, t.save_every)


def kept_at_end(cfg: TrainConfig, existing: list[int], step: int) -> list[int]:
    """The checkpoint steps the run's folder holds at train.max_steps: those `existing` there now and those
    saved after `step` (every train.save_every steps and at train.max_steps), of which each save keeps the
    newest train.keep_checkpoints (checkpoints.CheckpointStore)."""
    t = cfg.train
    new = set(_saves(cfg, step)[-t.keep_checkpoints :]) | ({t.max_steps} if step < t.max_steps else set())
    if not new:
        return sorted(existing)
    return sorted(set(existing) | new)[-t.keep_checkpoints :]


def _step_of(item: int | str) -> int | None:
    """The step that a merge.checkpoints item names in the run's own checkpoints (None: a folder elsewhere)."""
    if isinstance(item, int):
        return item
    m = _STEP.match(item)
    return int(m[1]) if m and item == f"step-{int(m[1]):08d}" else None


def _list_steps(steps: list[int]) -> str:
    shown = [str(s) for s in steps] if len(steps) <= 6 else [*map(str, steps[:2]), "...", *map(str, steps[-3:])]
    return ", ".join(shown) if steps else "none"


def check_merge_plan(cfg: TrainConfig, existing: list[int], step: int) -> None:
    """Refuse a merge.checkpoints that names a checkpoint the run will not hold at its end: a step it never
    saves, one that train.keep_checkpoints deletes, or more newest ones (last-K) than it keeps. `existing`:
    the checkpoint steps in its folder now; `step`: the step it continues from."""
    m, t = cfg.merge, cfg.train
    if m.method is None:
        return
    kept = kept_at_end(cfg, existing, step)
    held = f"the run holds steps {_list_steps(kept)} at its end"
    if isinstance(m.checkpoints, str):
        k = int(m.checkpoints.removeprefix("last-"))
        if len(kept) < k:
            raise ConfigError(f"merge.checkpoints={m.checkpoints} needs {k} checkpoints, but {held} "
                              f"(train.save_every={t.save_every}, train.max_steps={t.max_steps}); merge fewer, or "
                              "save more often (train.save_every).")
        return
    for item in m.checkpoints:
        s = _step_of(item)
        if s is None or s in kept:
            continue
        later = _saves(cfg, max(s - 1, step))
        saved = s in existing or (step < s <= t.max_steps and (s in later or s == t.max_steps))
        if not saved:
            when = (f"every train.save_every={t.save_every} steps and at" if t.save_every else
                    "(train.save_every=0) only at")
            raise ConfigError(f"merge.checkpoints names step {s}, which the run never saves (it saves {when} "
                              f"train.max_steps={t.max_steps}); {held}: name those, or choose a train.save_every "
                              f"that divides {s}.")
        needed = sum(e >= s for e in existing) + len(later) + (t.max_steps not in later and step < t.max_steps)
        raise ConfigError(f"merge.checkpoints names step {s}, which train.keep_checkpoints={t.keep_checkpoints} "
                          f"deletes before the merge ({held}); name those, or set train.keep_checkpoints={needed}.")


def merge_fingerprint(cfg: TrainConfig) -> str:
    """Fingerprint of the merge section (what merged/run_merge.json records)."""
    return fingerprint(dataclasses.asdict(cfg.merge))


def merge_pending(cfg: TrainConfig, out: Path) -> bool:
    """Whether merge.method is set and out/merged holds no merge of these merge settings."""
    if cfg.merge.method is None:
        return False
    try:
        value = json.loads((out / "merged" / MERGE_RECORD).read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return True
    return bool(value != merge_fingerprint(cfg))


def record_merge(cfg: TrainConfig, out: Path) -> None:
    """Mark out/merged as the merge of cfg's merge settings (after it and its evaluation were written)."""
    write_json_atomic(out / "merged" / MERGE_RECORD, {"settings": merge_fingerprint(cfg)})


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
        check_merge_plan(cfg, [], 0)
        return _start(cfg, out)
    recorded, fp = _record(out), run_fingerprint(cfg)
    others = [n for n in names if not _own(n)]
    # without its run.json, a folder is taken for this run only when it holds what a run leaves (a checkpoint
    # or its log), not merely entries of a run's names (a user's own model/ or run.json)
    evidence = recorded is not None or last_checkpoint_step(out) > 0 or (out / "train_log.jsonl").is_file()
    same = (not overwrite and not others and cfg.train.resume and evidence
            and recorded in (fp, run_fingerprint(cfg, with_merge=True), None))
    if same:
        existing = checkpoint_steps(out)
        step = max(existing, default=0)
        check_merge_plan(cfg, existing, step)
        note = "" if recorded else f" ({RUN_RECORD} missing: assuming the same settings)"
        if (step >= cfg.train.max_steps and ((out / "model").is_dir() or (out / "adapter").is_dir())
                and not merge_pending(cfg, out)):
            return RunState("finished", out, step)  # (without its final model or merge, the trainer writes it)
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
                                f"a run's own files: {OWN_LISTED}).")
    check_merge_plan(cfg, [], 0)
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
