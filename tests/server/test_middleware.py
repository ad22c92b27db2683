"""The Guard middleware on its own: a request the server cancels at the end of its drain time."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from qwen_embed.server.middleware import Guard


def guarded_route_in_flight(draining: bool) -> tuple[list[Message], list[tuple[str, int]], Any]:
    """Run a Guard over a route that never ends (as one whose texts are being tokenized), then cancel it as
    uvicorn does when the graceful timeout runs out. Returns what was sent, the counted requests and the
    outcome (None, or the exception the Guard let through)."""
    sent: list[Message] = []
    counted: list[tuple[str, int]] = []
    state = SimpleNamespace(draining=False, metrics=SimpleNamespace(count_request=lambda r, s: counted.append((r, s))),
                            settings=SimpleNamespace(api_key=None, public_paths=(), max_payload_bytes=1 << 20))

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.Event().wait()

    async def main() -> Any:
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> Message:
            if messages:
                return messages.pop(0)
            await asyncio.Event().wait()  # the client stays connected
            raise AssertionError

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {"type": "http", "path": "/v1/embeddings", "headers": [(b"content-length", b"2")]}
        task = asyncio.ensure_future(Guard(route, state)(scope, receive, send))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        state.draining = draining  # SIGTERM (State.begin_drain), then the drain time runs out:
        task.cancel()
        try:
            await task
        except BaseException as e:  # the outcome is what the test looks at
            return e
        return None

    return sent, counted, asyncio.run(main())


def test_a_request_cancelled_when_the_drain_time_runs_out_is_answered_503() -> None:
    sent, counted, outcome = guarded_route_in_flight(draining=True)
    assert outcome is None
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 503
    assert (b"connection", b"close") in sent[0]["headers"]
    error = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["error"]
    assert error["code"] == "shutting_down" and "drain time ran out" in error["message"], error
    assert counted == [("other", 503)]


def test_a_cancelled_request_outside_a_drain_stays_cancelled() -> None:
    sent, _, outcome = guarded_route_in_flight(draining=False)
    assert isinstance(outcome, asyncio.CancelledError) and sent == []
