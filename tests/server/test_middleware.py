"""The Guard middleware on its own: a request the server cancels at the end of its drain time, and when an
answer is counted."""

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


def test_an_answer_is_counted_before_its_last_byte_is_sent() -> None:
    """A process killed right after it answered (serve --workers: SIGKILL to a worker) has already counted
    that answer: the count comes before the response's last body part is handed to the server, not after."""
    counted: list[tuple[str, int]] = []
    at_send: list[tuple[str, bool, int]] = []  # (message type, more body, requests counted when it was sent)
    state = SimpleNamespace(draining=False, metrics=SimpleNamespace(count_request=lambda r, s: counted.append((r, s))),
                            settings=SimpleNamespace(api_key=None, public_paths=(), max_payload_bytes=1 << 20))

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        scope["route"] = SimpleNamespace(path="/v1/embeddings")  # as the router sets it
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"[1, ", "more_body": True})
        await send({"type": "http.response.body", "body": b"2]", "more_body": False})

    async def main() -> None:
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> Message:
            if messages:
                return messages.pop(0)
            await asyncio.Event().wait()
            raise AssertionError

        async def send(message: Message) -> None:
            at_send.append((message["type"], message.get("more_body", False), len(counted)))

        scope = {"type": "http", "path": "/v1/embeddings", "headers": [(b"content-length", b"2")]}
        await Guard(route, state)(scope, receive, send)  # type: ignore[arg-type]

    asyncio.run(main())
    assert at_send == [("http.response.start", False, 0), ("http.response.body", True, 0),
                       ("http.response.body", False, 1)]
    assert counted == [("/v1/embeddings", 200)]  # once
