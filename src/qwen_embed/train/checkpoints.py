"""Resumable training checkpoints: save, prune, find the newest intact one, load it safely.

`output_dir/checkpoints/step-NNNNNNNN/` holds the weights (`model/`, the base's layout) or the adapter
(`adapter/`, PEFT layout) and `state.pt` with the optimiser, scheduler, every RNG, the step and the
training time so far. Safety and faults (issue 23):
- a folder is built in a temporary sibling (`files.atomic_dir`) and renamed, so a crash never leaves a
  half checkpoint; temporary folders of processes that died (SIGKILL during a save) are removed at start;
- `state.pt` is read with `torch.load(weights_only=True)`: tensors and plain containers only, never
  code (a crafted file is refused instead of run);
- a checkpoint whose state or weights cannot be read is skipped with a message and the previous intact
  one is used; weights that hold NaN or inf are refused with an error (training on them is pointless;
  a base checkpoint holding them is refused by the loader, `weights.check_finite`).
"""

from __future__ import annotations

import pickle
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import QwenEmbedError, WeightsError
from ..files import atomic_dir, clean_stale_temps, remove_path
from ..weights import all_finite

STATE = "state.pt"
_LEGACY_TEMP = re.compile(r"^\.step-\d{8}\.[A-Za-z0-9_]{8}$")  # tempfile.mkdtemp names of older versions


class CheckpointError(QwenEmbedError):
    """No usable checkpoint, or one that must not be trained on (non-finite weights)."""


def check_finite(named: Any, where: str) -> None:
    """Raise when any tensor of (name, tensor) pairs holds NaN or inf."""
    for name, t in named:
        if not all_finite(t):
            raise CheckpointError(f"{where}: {name} holds NaN or inf values; training on it would only produce "
                                  "NaN. Resume from an earlier checkpoint (delete this one) or start from the base.")


@dataclass
class Loaded:
    """A checkpoint read back: its folder and its state (optimiser, scheduler, rng, step, ...)."""

    folder: Path
    state: dict[str, Any]


class CheckpointStore:
    """The checkpoints of one run (`output_dir/checkpoints`)."""

    def __init__(self, folder: Path, keep: int = 2) -> None:
        self.folder = folder
        self.keep = max(1, keep)

    def clean_stale(self) -> list[Path]:
        """Remove temporary folders left by saves that died (SIGKILL, power loss)."""
        if not self.folder.is_dir():
            return []
        removed = clean_stale_temps(self.folder)
        for entry in self.folder.iterdir():
            if _LEGACY_TEMP.match(entry.name) and entry.is_dir():
                remove_path(entry)
                removed.append(entry)
        return removed

    def list(self) -> list[Path]:
        """Finished checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob("step-*") if p.is_dir() and (p / STATE).is_file())

    def save(self, step: int, write_weights: Any, state: dict[str, Any]) -> Path:
        """Write step-N (weights through `write_weights(folder)`, then state.pt) and prune old ones."""
        target = self.folder / f"step-{step:08d}"
        if target.exists():
            return target
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_dir(target) as tmp:
            write_weights(tmp)
            torch.save(state, tmp / STATE)
        for old in self.list()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def load_latest(self, load_weights: Any) -> Loaded | None:
        """Load the newest intact checkpoint (`load_weights(folder)` restores the weights); None when none.

        A damaged checkpoint (unreadable state or weights) is reported and the previous one tried."""
        found = self.list()
        for folder in reversed(found):
            try:
                state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
                if not isinstance(state, dict) or "step" not in state:
                    raise ValueError("state.pt holds no training state")
                load_weights(folder)
            except CheckpointError:
                raise
            except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError,
                    SafetensorError, WeightsError) as e:
                reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                print(f"checkpoint {folder.name} is damaged ({reason}); trying the previous one.", file=sys.stderr)
                continue
            return Loaded(folder, state)
        if found:
            raise CheckpointError(f"every checkpoint in {self.folder} is damaged ({', '.join(p.name for p in found)});"
                                  " move them away to start from the base model, or set train.resume: false.")
        return None


def read_weights(file: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (never code), checked to be finite."""
    weights = load_file(str(file), device=str(device))
    check_finite(weights.items(), str(file.parent.parent.name + "/" + file.parent.name + "/" + file.name))
    return weights


def load_into(model: nn.Module, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Strictly load a full state dict (tied heads are not in the file and not in the model either)."""
    model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True)
