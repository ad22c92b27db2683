"""TREC-format qrels and run files: read, validate, write.

qrels: `qid iter docno rel` per line (whitespace separated; `iter` is ignored, as by trec_eval).
run:   `qid Q0 docno rank score run_name` per line. trec_eval ignores the rank column and orders each
query's documents by score descending, then by docno descending (`comp_sim_docno` in trec_eval's
form_res_rels.c); `sorted_docs` and `write_run` use that order, so a run we write reads back to the
same ranking under trec_eval. Like trec_eval, a document named twice for one query is an error.

In memory: `Qrels = {qid: {docno: rel}}` and `Run = {qid: {docno: score}}`, the shapes pytrec_eval takes.

Numbers are read by one strict parser (`parse_grade`, `parse_score`; BEIR's qrels reader uses them too):
ASCII decimal only, never what Python's int() / float() also take (`1_0` read as 10, Arabic-Indic `٣` as
3, `nan`, `inf`, `1e999`). A grade is an integer within +-MAX_GRADE: the metrics count documents per
level up to the largest one, so a grade of 10**22 would need that many counters.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import InputError
from ..files import atomic_file
from ..jsonl import text_lines
from ..textio import DEFAULT_RUN_NAME as DEFAULT_RUN_NAME  # one TREC rule for every output; here for eval's callers
from ..textio import check_run_name as check_run_name

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
MAX_GRADE = 1000  # TREC and BEIR grades are 0..4
_INT = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_grade(text: str, where: str) -> int:
    """A relevance grade: an ASCII integer within +-MAX_GRADE, else an InputError saying so at `where`."""
    if not _INT.fullmatch(text):
        raise InputError(f"{where}: relevance {text[:40]!r} is not an integer (ASCII digits, e.g. 0, 1, 2).")
    value = int(text)
    if abs(value) > MAX_GRADE:
        raise InputError(f"{where}: relevance {text[:40]} is out of range: grades are integers from -{MAX_GRADE} to "
                         f"{MAX_GRADE} (TREC and BEIR use 0..4); fix the grade on that line.")
    return value


def parse_score(text: str, where: str) -> float:
    """A score: an ASCII decimal number (`12`, `-0.5`, `3e-4`) that is finite as a float, else an InputError."""
    if not _DECIMAL.fullmatch(text):
        raise InputError(f"{where}: score {text[:40]!r} is not a decimal number (ASCII digits, '.', an exponent; "
                         "no nan, inf, '_' or other scripts' digits).")
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"{where}: score {text[:40]} overflows a float (largest {1.8e308:.1e}); rescale the scores.")
    return value


@dataclass
class RunFile:
    """A run as read from disk: the scores and the run name of its last column."""

    scores: Run
    name: str


def numbered_lines(path: str | os.PathLike[str], what: str) -> Iterable[tuple[int, str]]:
    """(line number, line) for each line of a UTF-8 text file that is not blank; numbers count every line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {p} does not exist or is not a file.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} file {p} is not UTF-8 text (byte {e.start}).") from None
    for n, line in enumerate(text_lines(text), 1):
        if line.strip():
            yield n, line


def _lines(path: str | os.PathLike[str], what: str) -> Iterable[tuple[int, list[str]]]:
    for n, line in numbered_lines(path, what):
        yield n, line.split()


def read_qrels(path: str | os.PathLike[str]) -> Qrels:
    """Read a TREC qrels file into {qid: {docno: rel}}; duplicate (qid, docno) pairs are an error."""
    qrels: Qrels = {}
    for n, f in _lines(path, "qrels"):
        if len(f) != 4:
            raise InputError(f"{path}:{n}: a qrels line has 4 fields 'qid iter docno rel', got {len(f)}.")
        qid, _, doc, rel = f
        value = parse_grade(rel, f"{path}:{n}")
        judged = qrels.setdefault(qid, {})
        if doc in judged:
            raise InputError(f"{path}:{n}: document {doc!r} is judged twice for query {qid!r}; keep one line.")
        judged[doc] = value
    if not qrels:
        raise InputError(f"qrels file {path} holds no judgments.")
    return qrels


def read_run_file(path: str | os.PathLike[str]) -> RunFile:
    """Read a TREC run (6 columns) into scores and the run name; duplicate documents are an error."""
    run: Run = {}
    name = ""
    for n, f in _lines(path, "run"):
        if len(f) != 6:
            raise InputError(f"{path}:{n}: a run line has 6 fields 'qid Q0 docno rank score run', got {len(f)}.")
        qid, _, doc, _, score, name = f
        value = parse_score(score, f"{path}:{n}")
        docs = run.setdefault(qid, {})
        if doc in docs:
            raise InputError(f"{path}:{n}: document {doc!r} is listed twice for query {qid!r}; keep one line.")
        docs[doc] = value
    if not run:
        raise InputError(f"run file {path} holds no results.")
    return RunFile(run, name)


def read_run(path: str | os.PathLike[str]) -> Run:
    """Read a TREC run into {qid: {docno: score}}."""
    return read_run_file(path).scores


def sorted_docs(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """trec_eval's ranking: score descending, ties broken by docno descending."""
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)


def truncate_run(run: Mapping[str, Mapping[str, float]], depth: int) -> Run:
    """The top `depth` documents of each query, in trec_eval's order."""
    return {q: dict(sorted_docs(d)[:depth]) for q, d in run.items()}


def write_run_lines(f: IO[str], run: Mapping[str, Mapping[str, float]], name: str = DEFAULT_RUN_NAME) -> None:
    """Write a run in TREC format, each query's documents in trec_eval's order with ranks from 1."""
    check_run_name(name)
    for qid in run:
        for rank, (doc, score) in enumerate(sorted_docs(run[qid]), 1):
            f.write(f"{qid} Q0 {doc} {rank} {score!r} {name}\n")


def write_run(path: str | os.PathLike[str], run: Mapping[str, Mapping[str, float]],
              name: str = DEFAULT_RUN_NAME) -> None:
    """Write a run file atomically (scores keep full float precision, so they read back exactly)."""
    with atomic_file(path) as f:
        write_run_lines(f, run, name)


def write_qrels(path: str | os.PathLike[str], qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write qrels in TREC format (`qid 0 docno rel`), atomically."""
    with atomic_file(path) as f:
        for qid, docs in qrels.items():
            for doc, rel in docs.items():
                f.write(f"{qid} 0 {doc} {rel}\n")
