"""The response cache: every reply paid for is kept, keyed by the prompt, so a re-run never pays twice.

An append-only JSONL file `{"key", "text", "prompt_tokens", "completion_tokens"}`, one line per reply,
flushed as each reply arrives (from the generator's worker threads, under a lock). The key is the
SHA-256 `fingerprint` of the generator's identity (model and sampling settings) and the prompt, so a
cache is shared safely between runs and outputs, and a change of model or temperature misses. On
opening, a torn last line (a kill mid-write) is cut off. Failed requests are never cached.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import IO, Any

from ..errors import InputError
from ..files import fingerprint, recover_jsonl
from .generators import Completion


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
        self._lock = threading.Lock()
        if self.path.exists():
            self._load()
        self._f: IO[str] | None = None  # opened on the first reply, so a run that got none leaves no file
        self._closed = False

    def _load(self) -> None:
        def entry(obj: Any) -> tuple[str, Completion]:
            return obj["key"], Completion(obj["text"], int(obj.get("prompt_tokens", 0)),
                                          int(obj.get("completion_tokens", 0)), cached=True)

        self.entries.update(recover_jsonl(self.path, entry))

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
                           "completion_tokens": completion.completion_tokens}, ensure_ascii=False) + "\n"
        with self._lock:
            assert not self._closed, "put after close"
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
