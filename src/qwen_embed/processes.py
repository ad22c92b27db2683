"""How qwen-embed starts its child processes: `child_context()`.

Model processes (`serve --model-processes`, `serve --workers`), HTTP workers and the workers of a
`DevicePool` are started with multiprocessing's `forkserver` method: on the first child, the parent
starts one small server process that imports torch and the model code once (`PRELOAD`, ~2 s of CPU),
and every child is then forked from that server. A child therefore gets what `spawn` would give it (a
fresh process with no threads, CUDA state, sockets or locks of the parent: the server is single-threaded,
holds no sockets and never touches CUDA; its arguments are pickled as with `spawn`) without paying the
import again: a model process that died is serving again sooner, and `serve --workers N` with M model
processes imports torch once instead of N + M times.

Two rules follow. A child's environment is the server's, a copy of the parent's environment when its
first child started: set what the children need in the environment before starting any (as the
supervisor does with PROMETHEUS_MULTIPROC_DIR), or pass it as an argument; nothing in `PRELOAD` reads
such a variable at import time. And a child's parent process is the fork server, which lives as long as
any child does, so a child cannot tell that the process that started it is gone from its parent pid: it
holds the receiving end of a `lifeline()` instead and calls `exit_with_parent` on it.

A child ends with `os._exit` once its target returns (the fork server's way, as with `fork`): its stdout and
stderr are flushed, but no `atexit` handler runs and there is no final garbage collection. A process that
ends the ordinary way (a command, the serve process) calls `skip_final_gc()` when its work is done instead:
the interpreter's last collection walks every object torch and the model made (0.5 s to seconds of CPU).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext

ORPHAN_GRACE_S = 5.0  # a child whose parent is gone: time for its orderly stop before it is ended

# imported once by the fork server, so that no child imports them itself; none of them starts a thread or
# reads a variable that a parent sets for its children (prometheus_client does: it is left to each child)
PRELOAD = ("torch", "qwen_embed.embedder", "qwen_embed.reranker", "qwen_embed.server.model_process")


def child_context() -> ForkServerContext:
    """The multiprocessing context every qwen-embed child process is started with (module docstring)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # takes effect when the server starts (this process's first child)
    return ctx


def lifeline(ctx: ForkServerContext) -> tuple[Connection, Connection]:
    """(the children's end, the parent's end) of a pipe on which nothing is ever sent. The parent keeps its end
    open until it exits and hands the other to its children: that end reads EOF once the parent is gone,
    whether it exited or was killed (no other process holds the parent's end)."""
    return ctx.Pipe(duplex=False)


def exit_with_parent(lifeline_end: Connection, grace_s: float = ORPHAN_GRACE_S,
                     on_orphan: Callable[[], object] | None = None) -> None:
    """Once the parent holding the other end of the `lifeline` is gone, send this process SIGTERM (its own
    orderly stop), and end it (status 1) if it still runs `grace_s` seconds later: whatever it was doing
    then (starting up, waiting on a model process that went with the parent) has no one left to serve. A
    daemon thread waits for it. `on_orphan` runs first: what the parent would have cleaned up (its errors
    are ignored: the process ends either way)."""
    def wait() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline_end.recv()
        if on_orphan is not None:
            with contextlib.suppress(Exception):
                on_orphan()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=wait, daemon=True, name="exit-with-parent").start()


OUTSIDE_SIGNALS = (signal.SIGKILL, signal.SIGTERM)  # what the OOM killer and an operator send


def killed_from_outside(exitcode: int | None) -> bool:
    """Whether a child's exit code says that a signal from outside ended it (not a crash of its own, such
    as SIGSEGV or SIGABRT, nor an exit of its own, which a replacement would repeat)."""
    return exitcode is not None and exitcode < 0 and -exitcode in OUTSIDE_SIGNALS


def exit_text(exitcode: int | None) -> str:
    """How a child ended, for a message: "exited with code 1", "was killed by SIGKILL" ("was killed by signal 40"
    for a signal without a name, such as a real-time one)."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def skip_final_gc() -> None:
    """This process is about to exit: let the interpreter skip its last garbage collection (module docstring).

    Call it only once every output is written and closed: objects alive now are never collected, so a
    finalizer that only a collection would run does not run."""
    gc.freeze()
