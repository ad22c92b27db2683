"""The Guard: a pure ASGI middleware in front of every route.

It checks the API key (constant time), refuses a body over the size limit (from Content-Length, and
while a chunked body is read), counts requests by route and status (an answer before its last byte is
sent, so that a process killed right after answering has counted it), adds x-total-time, marks
responses `Connection: close` while the server drains, and cancels the request's work when its client
disconnects after sending the body (the handler task is cancelled, so its queued batches are skipped
and its remaining batches never run; counted with status 499, nginx's "client closed request").
A request still in the route when the drain time runs out (cancelled by the server, e.g. while it is
tokenized, before any batcher holds it) is answered 503 `shutting_down`, as the batchers answer theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .batcher import ShuttingDown
from .errors import PayloadTooLarge, api_error_response, as_api_error, error_response
from .state import State

CLIENT_CLOSED = 499


class Guard:
    """Auth, body size limit, request metrics, x-total-time, disconnect cancellation."""

    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app = app
        self.state = state
        key = state.settings.api_key
        self.key = key.encode() if key else None
        self.public = set(state.settings.public_paths)
        self.limit = state.settings.max_payload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        counted = False
        state = self.state

        def count() -> None:
            nonlocal counted
            if not counted:
                counted = True
                state.metrics.count_request(getattr(scope.get("route"), "path", "other"), status)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-total-time", f"{(time.perf_counter() - start) * 1000:.3f}".encode()))
                if state.draining:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                count()  # before the last byte leaves: an answer a client has is counted, even if the process dies next
            await send(message)

        try:
            denial = self.check(scope, scope["path"])
            if denial is not None:
                await denial(scope, receive, send_wrapper)
                return
            if await self.run_watched(scope, receive, send_wrapper):
                status = CLIENT_CLOSED
        finally:
            count()  # no complete answer sent (499, or an error that left the app)

    async def run_watched(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Run the app; cancel it when the client disconnects after its body was read. True when it did."""
        body_read = asyncio.Event()
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLarge(self.limit)
                if not message.get("more_body", False):
                    body_read.set()
            return message

        answered = started = False

        async def sent(message: Message) -> None:
            nonlocal answered, started
            started = True
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True

        task = asyncio.ensure_future(self.app(scope, limited, sent))
        gone = False

        async def watch() -> None:
            nonlocal gone
            await body_read.wait()
            message = await receive()  # after the body: http.disconnect (client gone, or response complete)
            if message["type"] == "http.disconnect" and not answered and not task.done():
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await task
        except asyncio.CancelledError:
            if gone:
                pass
            elif self.state.draining and not started:  # the drain time ran out while the route had it
                await drain_ran_out(scope, receive, send)
            else:
                raise
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        return gone

    def check(self, scope: Scope, path: str) -> Response | None:
        headers = dict(scope["headers"])
        if self.key is not None and path not in self.public:
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if not auth:
                return error_response(401, "missing API key: send the header `Authorization: Bearer <key>`.",
                                      {"WWW-Authenticate": "Bearer"})
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return error_response(401, "invalid API key.", {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return error_response(400, f"Content-Length {length[:40]!r} is not a number.")
            if n > self.limit:
                return error_response(413, f"the request body has {n} bytes, over the {self.limit}-byte limit; "
                                      "send fewer or shorter inputs.")
        return None


async def drain_ran_out(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer a request that the server cancelled at the end of its drain time as the batchers do (503)."""
    error = as_api_error(ShuttingDown("the server is shutting down and its drain time ran out before this request "
                                      "reached the model; retry on another replica."))
    assert error is not None
    await api_error_response(error)(scope, receive, send)
