"""The response cache: every reply paid for is kept, keyed by the prompt, so a re-run never pays twice.

An append-only JSONL file `{"key", "text", "prompt_tokens", "completion_tokens"}`, one line per reply,
flushed as each reply arrives (from the generator's worker threads, under a lock). The key is the
SHA-256 `fingerprint` of the generator's identity (model and sampling settings) and the prompt, so a
cache is shared safely between runs and outputs, and a change of model or temperature misses.
Failed requests are never cached.

Loading departs from `files.recover_jsonl` (which stops at the first unreadable line and cuts the file
there): a cache may be shared by runs appending at once, so a line torn by a kill can be followed by
another run's good lines. Each complete line is read on its own: an unreadable one (or one whose `key`
or `text` is not a string) is skipped and counted in `skipped`, every later good line is kept, and only
a torn last line (no newline at the end) is cut off. Lines are written with `ensure_ascii=True`, so a
reply holding a lone surrogate (a server's JSON escape `\\ud800`) is stored and read back exactly.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import IO, Any

from ..errors import InputError
from ..files import fingerprint
from .generators import Completion, token_count


class CacheClosedError(RuntimeError):
    """A reply was put into a cache after `close` (a bug in the caller, not a user error)."""


def read_entry(raw: bytes) -> tuple[str, Completion] | None:
    """One complete cache line as (key, cached reply), or None when it is not a readable entry."""
    try:
        obj = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("key"), str) or not isinstance(obj.get("text"), str):
        return None
    return obj["key"], Completion(obj["text"], token_count(obj.get("prompt_tokens", 0)),
                                  token_count(obj.get("completion_tokens", 0)), cached=True)


class ResponseCache:
    """Replies by prompt, loaded from and appended to one JSONL file."""

    def __init__(self, path: str | os.PathLike[str], namespace: dict[str, Any]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise InputError(f"cache {self.path} is a folder; give a file name (default: OUTPUT.cache.jsonl).")
        if not self.path.parent.is_dir():
            raise InputError(f"cache {self.path}: its folder {self.path.parent} does not exist; create it first.")
        self.namespace = namespace
        self.entries: dict[str, Completion] = {}
        self.skipped = 0  # unreadable complete lines met on loading (their replies are asked again)
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()
        self._f: IO[str] | None = None  # opened on the first reply, so a run that got none leaves no file
        self._closed = False

    def _load(self) -> None:
        """Every readable complete line (a later line of a key wins); cut a torn last line off."""
        end = 0  # bytes up to the end of the last complete line
        torn = False
        with open(self.path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    torn = True  # a kill mid-write: only ever the last line
                    break
                end += len(raw)
                entry = read_entry(raw)
                if entry is None:
                    self.skipped += not raw.isspace()
                    continue
                self.entries[entry[0]] = entry[1]
        if torn:
            with open(self.path, "r+b") as f:
                f.truncate(end)

    def key(self, prompt: str) -> str:
        """The cache key of a prompt under this generator identity."""
        return fingerprint(self.namespace, prompt)

    def get(self, prompt: str) -> Completion | None:
        """The cached reply to `prompt`, or None."""
        return self.entries.get(self.key(prompt))

    def put(self, prompt: str, completion: Completion) -> None:
        """Append one reply (thread-safe); failed completions (text None) are ignored."""
        if completion.text is None:
            return
        key = self.key(prompt)
        line = json.dumps({"key": key, "text": completion.text, "prompt_tokens": completion.prompt_tokens,
                           "completion_tokens": completion.completion_tokens}, ensure_ascii=True) + "\n"
        with self._lock:
            if self._closed:
                raise CacheClosedError(f"put into the response cache {self.path} after close; put every reply "
                                       f"before closing the cache.")
            if self._f is None:
                self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._f.write(line)
            self._f.flush()
            self.entries[key] = Completion(completion.text, completion.prompt_tokens, completion.completion_tokens,
                                           cached=True)

    def close(self) -> None:
        """Flush to disk and close."""
        with self._lock:
            self._closed = True
            if self._f is not None:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
                self._f = None

    def __len__(self) -> int:
        return len(self.entries)
