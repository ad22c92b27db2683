"""Running the app under uvicorn with the server's connection limits and its drain.

- `GuardedH11Protocol` (uvicorn's h11 protocol plus three limits): a client must send a request's
  headers within --header-timeout seconds of its first byte (or of connecting), a body may not stall
  longer than --body-timeout seconds between reads (slowloris, a Content-Length larger than the body
  sent) nor trickle in: it must arrive within --body-timeout seconds plus one second per MIN_BODY_RATE
  bytes received (Apache's mod_reqtimeout rule: a chunked body sent a byte at a time never ends
  otherwise), and beyond --max-connections open connections a new one is answered 503 and closed at once,
  so the process stays under its file-descriptor limit instead of failing accept() with EMFILE.
- `DrainingServer` (uvicorn's Server): on SIGTERM / SIGINT the app is told first (`State.begin_drain`:
  /health and new requests answer 503 with `Connection: close`, the batchers run what was accepted
  and fail what is left at the deadline with 503), the listener closes (new connections are refused,
  never accepted and dropped), and kept-alive connections stay open a moment (`LINGER_S`, less once none
  is left open), so that a request already on its way on one is answered (with `Connection: close`) rather
  than cut off; then uvicorn closes the idle connections and waits for the handlers, all within
  --graceful-timeout. A signal that comes before the start completed stops the warm-up that holds it up
  (`State.stop_starting`: a worker of `serve --workers` waiting on a model process that is gone or slow),
  as uvicorn would only act on it once the start is over.
- Accept errors (EMFILE) are logged once per `QUIET_S` seconds, not once per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import ServerSettings

log = logging.getLogger("qwen_embed.server")
LINGER_S = 0.5
LINGER_POLL_S = 0.02
QUIET_S = 10.0
DRAIN_MARGIN_S = 0.5  # the batchers give up this long before uvicorn does, so that their 503s go out
MIN_BODY_RATE = 500  # bytes per second a body must keep up, over its first --body-timeout seconds
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: 109\r\n\r\n"
        b'{"error":{"message":"too many connections; retry later.","type":"service_unavailable",'
        b'"param":null,"code":null}}')


def guarded_protocol(settings: ServerSettings) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the header / body timeouts and the connection cap of `settings`."""
    header_s, body_s, cap = settings.header_timeout, settings.body_timeout, settings.max_connections

    class GuardedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _body_deadline: float | None = None  # loop time by which the body must be complete

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= cap:
                transport.write(BUSY)
                transport.close()
                return
            super().connection_made(transport)
            self._arm(header_s)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.transport is not None:  # None: refused over the cap, never counted
                super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            theirs = self.conn.their_state
            if theirs is h11.SEND_BODY:
                now = self.loop.time()
                if self._body_deadline is None:
                    self._body_deadline = now + body_s
                self._body_deadline += len(data) / MIN_BODY_RATE  # each byte buys time at the minimum rate
                self._arm(min(body_s, self._body_deadline - now))  # each read restarts the stall clock
            else:
                self._body_deadline = None
                if theirs is h11.IDLE:  # a request head, not complete yet
                    if self._timer is None:
                        self._arm(header_s)  # its first byte starts the header clock
                else:
                    self._disarm()  # the request is read: the app works on it

        def on_response_complete(self) -> None:
            self._disarm()
            super().on_response_complete()

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(max(0.0, seconds), self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self.transport.close()

    return GuardedH11Protocol


class DrainingServer(uvicorn.Server):
    """uvicorn's Server that tells the app to drain before it closes connections (module docstring)."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[float], None] | None = None,
                 on_stop_starting: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self.on_drain = on_drain
        self.on_stop_starting = on_stop_starting
        self._last_quiet = 0.0

    def handle_exit(self, sig: int, frame: Any) -> None:
        """uvicorn's signal handler; a signal before the start completed also stops what holds it up (the
        app's warm-up: `on_stop_starting`), since uvicorn only looks at the signal once the start is over."""
        super().handle_exit(sig, frame)
        if not self.started and self.on_stop_starting is not None:
            self.on_stop_starting()

    async def startup(self, sockets: Any = None) -> None:
        asyncio.get_running_loop().set_exception_handler(self._quiet)
        await super().startup(sockets)

    def _quiet(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            now = time.monotonic()
            if now - self._last_quiet >= QUIET_S:
                self._last_quiet = now
                log.warning("accept failed: %s; lower --max-connections below the file-descriptor limit "
                            "(ulimit -n)", exc)
            return
        loop.default_exception_handler(context)

    async def shutdown(self, sockets: Any = None) -> None:
        total = float(self.config.timeout_graceful_shutdown or 30)
        if self.on_drain is not None:
            self.on_drain(max(0.1, total - LINGER_S - DRAIN_MARGIN_S))
        for server in self.servers:  # new connections are refused from now on
            server.close()
        # kept-alive ones get their next answer with `Connection: close`; with none left open, no request can
        # still arrive (the listener is closed): the linger ends there (an idle server stops at once)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_S
        while self.server_state.connections and loop.time() < deadline:
            await asyncio.sleep(LINGER_POLL_S)
        self.config.timeout_graceful_shutdown = max(1, int(total - LINGER_S))
        await super().shutdown(sockets)


def raise_fd_limit(connections: int, spare: int = 256) -> int:
    """Raise the soft file-descriptor limit (up to the hard one) to hold `connections` plus `spare` (model
    files, pipes, logs); returns the limit in force, and logs a warning when it is still too low."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + spare
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        log.warning("the file-descriptor limit (%d) is below --max-connections %d plus %d spare; lower "
                    "--max-connections or raise `ulimit -n`", soft, connections, spare)
    return int(soft)


def uvicorn_config(app: Any, settings: ServerSettings, **kw: Any) -> uvicorn.Config:
    """The uvicorn config of `settings` (protocol with limits, keep-alive, graceful timeout)."""
    return uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                          timeout_graceful_shutdown=settings.graceful_timeout, access_log=False,
                          timeout_keep_alive=settings.keep_alive, http=guarded_protocol(settings),
                          h11_max_incomplete_event_size=64 * 1024, **kw)


def serve_app(app: Any, settings: ServerSettings, sockets: list[socket.socket] | None = None) -> bool:
    """Run `app` (a server app: `app.state.qe` drains) under `DrainingServer` until SIGTERM / Ctrl-C, on
    `sockets` when given (a worker of `serve --workers`), else on settings.host:port; True when it had
    started."""
    raise_fd_limit(settings.max_connections)
    server = DrainingServer(uvicorn_config(app, settings), on_drain=app.state.qe.begin_drain,
                            on_stop_starting=app.state.qe.stop_starting)
    # uvicorn re-raises the signal it shut down on after a clean exit; with this handler in place,
    # that re-raise is a no-op and a SIGTERM ends with status 0.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run(sockets=sockets)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return bool(server.started)
