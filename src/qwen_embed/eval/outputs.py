"""The output folder of an evaluation: checked before any work, resumable, and kept free of stale files.

An evaluation writes a few named files (runs, reports, plots, its resumable files) into one folder and
records them in `qwen-embed-outputs.json` there, per command. Rules:

- The folder is checked before the dataset is read or a model is loaded: its parent must be a writable
  folder (the default `eval-results/<dataset>/<model>` is created with its parents).
- The record is what makes a folder an evaluation's: a folder without it is used only while it is empty
  (temporary siblings aside), whatever the names of the files in it: a `scores.json` or `cache/` that no
  evaluation recorded is the user's, and is never adopted. Such a folder is refused in one line listing
  its files unless `overwrite`.
- A folder with the record is reused: the files the record lists and the names evaluations write
  (`OWN_PATTERNS`: results, the corpus cache, the rerank's resumable scores, temporary siblings) are the
  evaluation's; anything else is refused unless `overwrite`, and even then only the evaluation's own
  files are replaced.
- A run writes the record (`claim_output_dir`) before its first file, so a run interrupted at any point
  leaves a folder the same command resumes in: the corpus cache (`cache/`) and the rerank scores
  (`files.ResumableJsonl`'s `rerank.partial.jsonl.partial` and its `.partial.meta.json`) are kept until
  the results are written.
- After a run, the files the same command wrote last time and did not write this time (a re-run with
  other `--dim`s) are removed; only files listed in the record are ever removed.
- A run that fails before writing anything (a bad candidates file, a model that does not load) leaves no
  folder behind: the folders `prepare_output_dir` made are removed again while they hold nothing but
  the run's own empty record (`remove_if_empty`).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from ..files import OutputExistsError, check_output_dir, remove_path, resumable_files, write_json_atomic

RECORD = "qwen-embed-outputs.json"
CACHE = "cache"  # `eval retrieval`'s corpus embeddings: shards, kept so an interrupted run resumes
RERANK_SCORES = "rerank.partial.jsonl"  # `eval rerank`'s resumable scores (a `files.ResumableJsonl` target)
TEMP = ".*.tmp-*"  # `files.temp_sibling`: an atomic write under way, or one a kill left


OWN_PATTERNS = (RECORD, "run.trec", "run.dim*.trec", "scores.json", "summary.md", "ndcg_vs_dim.png", CACHE,
                "rerank.trec", "rerank_scores.json", "rerank_summary.md", "rerank_delta.png",
                *resumable_files(RERANK_SCORES), TEMP)


def _named_as_own(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in OWN_PATTERNS)


def _not_ours(folder: Path) -> list[str]:
    """The entries of `folder` no evaluation wrote (see the module docstring), sorted."""
    if not (folder / RECORD).is_file():  # no record: nothing in it is an evaluation's but temporary siblings
        return sorted(e.name for e in folder.iterdir() if not fnmatch.fnmatchcase(e.name, TEMP))
    recorded = {n for names in read_record(folder).values() for n in names}
    return sorted(e.name for e in folder.iterdir() if e.name not in recorded and not _named_as_own(e.name))


def _refusal(folder: Path, others: list[str]) -> str:
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    if (folder / RECORD).is_file():
        return (f"output folder {folder} holds files an evaluation did not write ({shown}); choose a new "
                f"--output-dir, or pass --overwrite to write there anyway (only the evaluation's own files are "
                f"replaced).")
    named = [n for n in others if _named_as_own(n)]
    then = (f"{', '.join(named[:3])}{', ...' if len(named) > 3 else ''} would be replaced" if named
            else "they are left as they are")
    return (f"output folder {folder} holds files an evaluation did not write ({shown}): it has no {RECORD}; "
            f"choose a new --output-dir, or pass --overwrite to write there anyway ({then}).")


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
    if folder.is_dir() and not overwrite and (others := _not_ours(folder)):
        raise OutputExistsError(_refusal(folder, others))
    if not folder.exists():
        folder.mkdir()
        made.append(folder)
    return folder


def claim_output_dir(folder: Path, command: str) -> None:
    """Write the record into `folder` (when it has none) before `command` writes its first file there, so that
    a run interrupted at any point leaves a folder that is resumed, not refused. It lists no file of
    `command` until `record_outputs`."""
    if not (folder / RECORD).is_file():
        write_json_atomic(folder / RECORD, {command: []})


def remove_if_empty(made: list[Path]) -> None:
    """Remove the folders a failed run made (`prepare_output_dir`'s `made`), innermost first, each only while
    it holds nothing but an empty record (the claim of a run that wrote nothing): what the run or anyone else
    wrote there stays (a partial cache resumes)."""
    for folder in reversed(made):
        try:
            if [e.name for e in folder.iterdir()] == [RECORD] and not any(read_record(folder).values()):
                (folder / RECORD).unlink()
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
