"""The learning curve of a run, drawn from its JSONL log: training loss and held-out metrics by step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..files import atomic_file
from ..jsonl import iter_jsonl


def read_log(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training records, evaluation records) of a train_log.jsonl. A last line cut by a killed run (or one
    being written now) is left out, as the trainer drops it on resume; any other broken line is one
    error naming it."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"log {p} does not exist or is not a file; a run writes OUTPUT_DIR/train_log.jsonl.")
    try:
        lines = p.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"log {p} cannot be read as UTF-8 text ({e}).") from None
    if lines and not lines[-1].endswith("\n") and not _is_json(lines[-1]):
        lines.pop()  # cut mid-line
    train: list[dict[str, Any]] = []
    evals: list[dict[str, Any]] = []
    for n, rec in iter_jsonl(lines, str(p)):
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int) or \
                not (("eval" in rec and isinstance(rec["eval"], dict)) or isinstance(rec.get("loss"), int | float)):
            raise InputError(f"{p}:{n}: not a record of a training log (an object with an integer step and a "
                             f"loss, or an eval object); got {json.dumps(rec)[:80]}.")
        (evals if "eval" in rec else train).append(rec)
    return train, evals


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def plot_learning_curve(log_path: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """Loss (left) and held-out metrics (right) against the step, written to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_log(log_path)
    if not train:
        raise InputError(f"log {log_path} holds no training records yet.")
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 4), squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (improved InfoNCE)")
    ax.grid(alpha=0.3)
    if evals:
        ax2 = axes[0][1]
        last = evals[-1]["eval"]
        for key in [k for k in last if k.replace("@", "_at_") == k or k.replace("@", "_at_") not in last]:
            ax2.plot([r["step"] for r in evals], [r["eval"][key] for r in evals], marker="o", label=key)
        ax2.set_xlabel("step")
        ax2.set_ylabel("held-out retrieval")
        ax2.set_ylim(0, 1)
        ax2.legend()
        ax2.grid(alpha=0.3)
    fig.suptitle(title or Path(log_path).parent.name)
    fig.tight_layout()
    out = Path(out_png)
    try:
        with atomic_file(out, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
    finally:
        plt.close(fig)
    return out
