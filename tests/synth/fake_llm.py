"""An OpenAI-compatible chat-completions server for tests: 127.0.0.1 only, scripted by tags in the passage.

The passage of each prompt carries a tag `[case:NAME]`; the server answers the configuration prompt
and the query prompt of that passage as the case says (valid JSON, malformed JSON, options outside the
lists, slow, 429, 500, a dropped connection, always 500, ...). Every request is logged (its prompt and
its stage), so tests count what was sent. Built on the standard library's http.server: nothing of the
code under test is used to decide the replies.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CASE = re.compile(r"\[case:(\w+)(?:#(\d+))?\]")
FIRST_CANDIDATE = re.compile(r"^1\. (.+)$", re.MULTILINE)


class FakeLLM:
    """A scripted server on 127.0.0.1; `url` is its base URL (…/v1)."""

    def __init__(self, *, api_key: str | None = None, timeout_sleep: float = 1.0, delay: float = 0.0,
                 models_route: bool = True) -> None:
        self.api_key = api_key
        self.models_route = models_route  # answer GET /v1/models (vLLM does); else 404
        self.gets = 0  # GET requests received
        self.timeout_sleep = timeout_sleep  # how long a "slow" reply takes (longer than the client timeout)
        self.delay = delay  # added to every reply
        self.log: list[tuple[str, str]] = []  # (stage, prompt) of every request received
        self.attempts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def prompts(self, stage: str | None = None) -> list[str]:
        with self.lock:
            return [p for s, p in self.log if stage is None or s == stage]

    # -- the script ------------------------------------------------------------------------------
    def reply(self, stage: str, prompt: str, attempt: int) -> tuple[str, Any]:
        """("ok", text) | ("status", code) | ("slow", text) | ("drop", None)."""
        m = CASE.search(prompt)
        case, n = (m.group(1), m.group(2) or "0") if m else ("valid", "0")
        if stage == "config":
            character = FIRST_CANDIDATE.search(prompt)
            assert character is not None, prompt
            good = {"Character": character.group(1), "Question_Type": "acquire_knowledge", "Difficulty": "university"}
            first = attempt == 1
            if case == "malformed":
                return "ok", "Sure! Character: the nurse, Question_Type: summary {"
            if case == "badopt":
                return "ok", json.dumps({**good, "Question_Type": "opinion"})
            if case == "badchar":
                return "ok", json.dumps({**good, "Character": "a wizard from another story"})
            if case == "slow" and first:
                return "slow", json.dumps(good)
            if case == "ratelimit" and attempt <= 2:
                return "status", 429
            if case == "error" and first:
                return "status", 500
            if case == "drop" and first:
                return "drop", None
            if case == "dead":
                return "status", 500
            if case == "toolong":
                return "status", 400
            if case == "think":
                return "ok", "<think>\nthe nurse fits\n</think>\n```json\n" + json.dumps(good) + "\n```"
            return "ok", json.dumps(good)
        if case == "empty":
            return "ok", json.dumps({"Query": "  "})
        if case == "copy":
            words = prompt.split("**Passage**:\n", 1)[1].split()[:9]
            return "ok", json.dumps({"Query": " ".join(words)})
        return "ok", json.dumps({"Query": f"which study reports the {case} finding number {n}"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(data)

            def do_GET(self) -> None:
                with fake.lock:
                    fake.gets += 1
                if not (fake.models_route and self.path.endswith("/models")):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                elif fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._send(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
                else:
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0,
                                                                 "owned_by": "test"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                prompt = body["messages"][0]["content"]
                stage = "config" if "select the appropriate option" in prompt else "query"
                with fake.lock:
                    fake.log.append((stage, prompt))
                    fake.attempts[prompt] += 1
                    attempt = fake.attempts[prompt]
                if fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._send(401, {"error": {"message": "Incorrect API key provided", "type": "auth"}})
                    return
                kind, value = fake.reply(stage, prompt, attempt)
                time.sleep(fake.delay)
                if kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if kind == "status":
                    self._send(value, {"error": {"message": f"scripted {value}"}})
                    return
                if kind == "slow":
                    time.sleep(fake.timeout_sleep)
                self._send(200, {
                    "id": "cmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": value}}],
                    "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(value.split()),
                              "total_tokens": len(prompt.split()) + len(value.split())},
                })

        return Handler
