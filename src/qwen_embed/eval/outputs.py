"""The output folder of an evaluation: checked before any work, and kept free of stale files.

An evaluation writes a few named files (runs, reports, plots, its embedding cache) into one folder and
records them in `qwen-embed-outputs.json` there, per command. Rules:

- The folder is checked before the dataset is read or a model is loaded: its parent must be a writable
  folder (the default `eval-results/<dataset>/<model>` is created with its parents).
- A folder that holds only what evaluations write (an earlier run: its results, its resumable cache) is
  used as it is: the run resumes and replaces its own results. A folder holding anything else is
  refused unless `overwrite`, and even then only the evaluation's own files are replaced.
- After a run, the files the same command wrote last time and did not write this time (a re-run with
  other `--dim`s) are removed; only files listed in the record are ever removed.
- A run that fails before writing anything (a bad candidates file, a model that does not load) leaves no
  folder behind: the folders `prepare_output_dir` made are removed again while they are still empty
  (`remove_if_empty`).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from ..files import OutputExistsError, check_output_dir, remove_path, write_json_atomic

RECORD = "qwen-embed-outputs.json"
OWN_PATTERNS = (RECORD, "run.trec", "run.dim*.trec", "scores.json", "summary.md", "ndcg_vs_dim.png", "cache",
                "rerank.trec", "rerank_scores.json", "rerank_summary.md", "rerank_delta.png", "rerank.partial.jsonl",
                ".*.tmp-*")


def _own(name: str, recorded: set[str]) -> bool:
    return name in recorded or any(fnmatch.fnmatchcase(name, p) for p in OWN_PATTERNS)


def read_record(folder: Path) -> dict[str, list[str]]:
    """{command: [file names]} of the evaluations that wrote into `folder` (empty when none)."""
    try:
        raw = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    # only bare file names: an entry naming another place (`../x`, an absolute path: a copied or edited
    # record) is not this folder's, and is never removed
    return {str(k): [x for x in v if isinstance(x, str) and x not in ("", ".", "..") and Path(x).name == x]
            for k, v in raw.items() if isinstance(v, list)}


def prepare_output_dir(arg: str | None, default: Path, *, overwrite: bool = False,
                       made: list[Path] | None = None) -> Path:
    """Check (and create) the output folder before any work; see the module docstring. The folders it
    creates are appended to `made`, outermost first (for `remove_if_empty` when the run fails)."""
    made = [] if made is None else made
    if arg is None:
        if default.exists() and not default.is_dir():
            raise InputError(f"output folder {default} is a file; pass --output-dir.")
        missing = [q for q in (default, *default.parents) if not q.exists()]
        default.mkdir(parents=True, exist_ok=True)
        made.extend(reversed(missing))
        folder = default
    else:
        folder = Path(arg)
        check_output_dir(folder, overwrite=True, what="--output-dir")  # parent, file, writable; contents below
    if folder.is_dir():
        recorded = {n for names in read_record(folder).values() for n in names}
        others = sorted(e.name for e in folder.iterdir() if not _own(e.name, recorded))
        if others and not overwrite:
            raise OutputExistsError(
                f"output folder {folder} holds files an evaluation did not write ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}); choose a new --output-dir, or pass --overwrite to write "
                f"there anyway (only the evaluation's own files are replaced).")
    if not folder.exists():
        folder.mkdir()
        made.append(folder)
    return folder


def remove_if_empty(made: list[Path]) -> None:
    """Remove the folders a failed run made (`prepare_output_dir`'s `made`), innermost first, each only while
    it is still empty: what the run or anyone else wrote there stays (a partial cache resumes)."""
    for folder in reversed(made):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or gone): neither it nor its parents are ours to remove


def record_outputs(folder: Path, command: str, written: Iterable[Path]) -> list[Path]:
    """Record what `command` wrote; remove what it wrote last time and not now. Returns the removed paths."""
    names = sorted({p.name for p in written})
    record = read_record(folder)
    stale = [folder / n for n in record.get(command, []) if n not in names and n != RECORD]
    still_used = {n for cmd, ns in record.items() if cmd != command for n in ns}
    removed = []
    for path in stale:
        if path.name in still_used or not (path.exists() or path.is_symlink()):
            continue
        remove_path(path)
        removed.append(path)
    record[command] = names
    write_json_atomic(folder / RECORD, record)
    return removed
