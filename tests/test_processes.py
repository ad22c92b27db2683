"""qwen_embed.processes with cheap child processes (python -c without torch, sh, sleep): a child holding its
`lifeline` end is left alone while the parent lives and, once the parent is gone (its end closed, or the
parent killed), runs `on_orphan`, stops itself with SIGTERM and is ended with status 1 after the grace period
when it ignores that; how an exit status reads (`exit_text`) and which count as killed from outside, from real
children ended by real signals; `skip_final_gc` leaving the objects alive then to no collection; and
`child_context`'s start method and preload. No forkserver is started here (its server imports torch)."""

from __future__ import annotations

import gc
import importlib.util
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from qwen_embed.processes import (
    PRELOAD,
    child_context,
    exit_text,
    killed_from_outside,
    lifeline,
    skip_final_gc,
)
from tests.procs import alive
from tests.threads import subprocess_env

# A child holding the reading end of a lifeline (its fd in argv[1]); argv[2] is how it takes SIGTERM: "orderly"
# (a handler that stops it with status 0), "ignore", or "default" (SIGTERM ends it); argv[3] the grace period;
# argv[4] "fail" makes on_orphan raise. It prints "ready", then each thing that happens to it.
CHILD = r"""
import signal, sys, time
from multiprocessing.connection import Connection
from qwen_embed.processes import exit_with_parent

fd, how, grace, fail = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4] == "fail"

def orderly(signum, frame):
    print("SIGTERM: orderly stop", flush=True)
    sys.exit(0)

if how == "orderly":
    signal.signal(signal.SIGTERM, orderly)
elif how == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

def on_orphan():
    print("on_orphan", flush=True)
    if fail:
        raise RuntimeError("cleanup failed")

exit_with_parent(Connection(fd, writable=False), grace_s=grace, on_orphan=on_orphan)
print("ready", flush=True)
time.sleep(30)
print("still running after 30 s", flush=True)
"""


def start_child(how: str, grace_s: float = 5.0, fail: bool = False) -> tuple[subprocess.Popen[str], Connection]:
    """The CHILD with one end of a real lifeline; returns it (once ready) and the parent's end, held by this
    process only."""
    children_end, parents_end = lifeline(child_context())
    fd = children_end.fileno()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(fd), how, str(grace_s), "fail" if fail else "ok"],
                            pass_fds=[fd], stdout=subprocess.PIPE, text=True, env=subprocess_env())
    children_end.close()
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc, parents_end


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; any still running at its end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- lifeline and exit_with_parent ------------------------------------------------------------------------------
def test_lifeline_is_a_one_way_pipe_that_reads_eof_once_the_parents_end_is_closed() -> None:
    children_end, parents_end = lifeline(child_context())
    assert children_end.readable and not children_end.writable
    assert parents_end.writable and not parents_end.readable
    assert not children_end.poll(0)  # nothing is ever sent
    parents_end.close()
    with pytest.raises(EOFError):
        children_end.recv()
    children_end.close()


def test_a_child_is_left_alone_while_its_parent_lives_then_stops_in_order(
        children: list[subprocess.Popen[str]]) -> None:
    proc, parents_end = start_child("orderly")
    children.append(proc)
    time.sleep(0.1)
    assert proc.poll() is None
    parents_end.close()  # the parent is gone
    out, _ = proc.communicate(timeout=10)
    assert (proc.returncode, out) == (0, "on_orphan\nSIGTERM: orderly stop\n")  # its cleanup first, then SIGTERM


def test_a_child_that_ignores_sigterm_is_ended_with_status_1_after_the_grace_period(
        children: list[subprocess.Popen[str]]) -> None:
    proc, parents_end = start_child("ignore", grace_s=0.2)
    children.append(proc)
    start = time.monotonic()
    parents_end.close()
    out, _ = proc.communicate(timeout=10)
    assert (proc.returncode, out) == (1, "on_orphan\n")
    assert time.monotonic() - start >= 0.2


def test_a_failing_on_orphan_does_not_keep_the_child_alive(children: list[subprocess.Popen[str]]) -> None:
    proc, parents_end = start_child("default", fail=True)
    children.append(proc)
    parents_end.close()
    out, _ = proc.communicate(timeout=10)
    assert (proc.returncode, out) == (-signal.SIGTERM, "on_orphan\n")


# The parent: starts CHILD with a lifeline end, prints the child's pid, and waits to be killed.
PARENT = r"""
import subprocess, sys, time
from qwen_embed.processes import child_context, lifeline

children_end, parents_end = lifeline(child_context())
fd = children_end.fileno()
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(fd), "orderly", "5", "ok"], pass_fds=[fd])
children_end.close()
print(child.pid, flush=True)
time.sleep(30)
"""


def test_a_child_stops_when_its_parent_is_killed(children: list[subprocess.Popen[str]]) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, text=True,
                              env=subprocess_env())
    children.append(parent)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert parent.stdout.readline() == "ready\n"  # the child writes to the same pipe
    parent.send_signal(signal.SIGKILL)
    out, _ = parent.communicate(timeout=10)  # the pipe ends when the child, its last writer, has ended too
    assert out == "on_orphan\nSIGTERM: orderly stop\n"
    deadline = time.monotonic() + 5
    while alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not alive(child_pid)


# -- how a child ended ----------------------------------------------------------------------------------------
def _default_interrupts() -> None:
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def ended_by(sig: int) -> int:
    """The exit status of a real child ended by signal `sig` (Popen's returncode: -sig, as multiprocessing's
    exitcode). The child takes the signal's default action: a shell that starts a job in the background (as CI
    does) makes it ignore SIGINT and SIGQUIT, and an ignored disposition survives exec."""
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=_default_interrupts)
    proc.send_signal(sig)
    return proc.wait(timeout=10)


@pytest.mark.parametrize(("sig", "outside", "text"), [
    (signal.SIGKILL, True, "was killed by SIGKILL"),
    (signal.SIGTERM, True, "was killed by SIGTERM"),
    (signal.SIGSEGV, False, "was killed by SIGSEGV"),  # a crash of its own
    (signal.SIGINT, False, "was killed by SIGINT"),
])
def test_a_child_killed_by_a_signal(sig: signal.Signals, outside: bool, text: str) -> None:
    code = ended_by(sig)
    assert code == -sig
    assert (killed_from_outside(code), exit_text(code)) == (outside, text)


def test_a_child_killed_by_a_signal_without_a_name() -> None:
    """Real-time signals have no name in `signal.Signals` (only SIGRTMIN and SIGRTMAX do): such a child was
    still killed by a signal, not "exited with code -40"."""
    sig = signal.SIGRTMIN + 6
    code = ended_by(sig)
    assert code == -sig
    assert exit_text(code) == f"was killed by signal {sig}" and not killed_from_outside(code)


@pytest.mark.parametrize("status", [0, 1, 3])
def test_a_child_that_exited(status: int) -> None:
    code = subprocess.run(["sh", "-c", f"exit {status}"]).returncode
    assert (killed_from_outside(code), exit_text(code)) == (False, f"exited with code {status}")


def test_a_child_still_running_has_no_exit_code() -> None:
    assert not killed_from_outside(None)


# -- skip_final_gc --------------------------------------------------------------------------------------------
def test_skip_final_gc_leaves_what_is_alive_now_to_no_collection() -> None:
    finalized: list[str] = []

    class Cycle:
        def __init__(self, name: str) -> None:
            self.name, self.me = name, self  # a reference cycle: only a collection frees it

        def __del__(self) -> None:
            finalized.append(self.name)

    was_enabled = gc.isenabled()
    gc.disable()  # no automatic collection in between
    try:
        Cycle("before")  # garbage already, not yet collected
        skip_final_gc()
        Cycle("after")
        gc.collect()
    finally:
        if was_enabled:
            gc.enable()
    assert finalized == ["after"]


# -- child_context ----------------------------------------------------------------------------------------------
def test_child_context_is_forkserver_with_the_preload() -> None:
    from multiprocessing import forkserver

    ctx = child_context()
    assert ctx.get_start_method() == "forkserver"
    assert forkserver._forkserver._preload_modules == list(PRELOAD)  # type: ignore[attr-defined]


@pytest.mark.parametrize("module", PRELOAD)
def test_every_preloaded_module_exists(module: str) -> None:
    """The fork server imports these; a missing one would fail every child's start."""
    assert importlib.util.find_spec(module) is not None
