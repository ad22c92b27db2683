"""How many CPU threads torch may use: the cores this process may run on, shared among its siblings.

torch's own default is the machine's core count (OpenMP honours the affinity mask but not a cgroup
CPU quota), so a container limited to 2 CPUs on a 64-core host starts 64 threads, and several torch
processes on one machine each start one per core. Spinning OpenMP threads that outnumber the cores
slow everything down badly (measured here: a tiny model at 2.8k tokens/s with two threads on two
loaded cores against 75k with one). So:

- `available_cores()`: the affinity mask (`os.sched_getaffinity`), capped by the cgroup quota
  (v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`) of this process's cgroup or any above it,
  rounded up.
- `default_threads(processes)`: those cores divided among `processes` sibling processes (the workers
  of a multi-device job) or models that run at once (a server with an embedder and a reranker).
- `use_threads(threads)`: what `Embedder/Reranker.from_pretrained(threads=...)` calls. An explicit
  count is applied (torch.set_num_threads is process-wide) and remembered; None applies the default
  unless a count was chosen before in this process or OMP_NUM_THREADS is set (the user's choice).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from .errors import InputError, whole_number

CGROUP_ROOT = Path("/sys/fs/cgroup")
_chosen: int | None = None  # the last explicit count in this process


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _membership() -> str:
    return _read(Path("/proc/self/cgroup")) or ""


def _cgroup_paths(membership: str) -> tuple[str, str]:
    """This process's cgroup in the v2 hierarchy and in v1's cpu controller, from /proc/self/cgroup lines
    ("0::/a/b" for v2, "4:cpu,cpuacct:/a/b" for v1); "/" where a hierarchy is not listed."""
    v2 = v1 = "/"
    for line in membership.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _levels(base: Path, path: str) -> list[Path]:
    """base/path and each folder above it up to base: every cgroup whose quota bounds this one."""
    parts = [p for p in path.split("/") if p not in ("", ".", "..")]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _smallest(quotas: list[float | None]) -> float | None:
    limited = [q for q in quotas if q is not None]
    return min(limited) if limited else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """CPUs allowed by the cgroup quota (e.g. 1.5), or None when there is no quota.

    The quota of this process's own cgroup and of every cgroup above it counts (the smallest wins): a
    `systemd-run -p CPUQuota=150%` unit or a container without its own cgroup namespace sits below the
    root, where no quota is written. `membership` is /proc/self/cgroup's text (read when None)."""
    v2_path, v1_path = _cgroup_paths(_membership() if membership is None else membership)
    v2 = [text for d in _levels(root, v2_path) if (text := _read(d / "cpu.max")) is not None]
    if v2:  # "max 100000" or "150000 100000"
        quotas: list[float | None] = []
        for text in v2:
            quota, _, period = text.partition(" ")
            quotas.append(int(quota) / int(period) if quota != "max" and period else None)
        return _smallest(quotas)
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        found: list[float | None] = []
        for d in _levels(root / sub, v1_path):
            quota_s, period_s = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
            if quota_s is not None and period_s is not None:
                us, period_us = int(quota_s), int(period_s)
                found.append(us / period_us if us > 0 and period_us > 0 else None)
        if found:
            return _smallest(found)
    return None


def available_cores(root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use: the affinity mask, capped by the cgroup quota (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def default_threads(processes: int = 1) -> int:
    """The available cores divided among `processes` that run at once (at least 1 each)."""
    return max(1, available_cores() // max(1, processes))


def check_threads(threads: int) -> int:
    """A thread count given by the user: a positive integer."""
    n = whole_number(threads, 1)
    if n is None:
        raise InputError(f"threads={threads!r} must be a positive integer (this process may use "
                         f"{available_cores()} cores); pass e.g. threads={available_cores()}.", param="threads")
    return n


def set_threads(threads: int) -> int:
    """Use exactly `threads` torch threads in this process from now on (remembered as the user's choice)."""
    global _chosen
    _chosen = check_threads(threads)
    torch.set_num_threads(_chosen)
    return _chosen


def use_threads(threads: int | None = None, processes: int = 1) -> int:
    """Apply `threads`, or with None the default (unless chosen before or OMP_NUM_THREADS is set).

    Returns the torch thread count now in effect."""
    if threads is not None:
        return set_threads(threads)
    if _chosen is None and not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(default_threads(processes))
    return torch.get_num_threads()
