"""`qwen_embed.threads`: how many torch threads a process may use.

References: the standard library (`os.sched_getaffinity` for the affinity mask, `math.ceil` for the
rounding), hand-written cgroup files in the kernel's formats (v2 `cpu.max` "QUOTA PERIOD" or
"max PERIOD"; v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, -1 meaning no quota) with hand-worked
quotients, `torch.get_num_threads()` for what is in effect, and the module docstring's contract: an
explicit count is applied and remembered, None applies the default unless a count was chosen before or
OMP_NUM_THREADS is set; a bad count is an InputError of one line giving the value, the limit (the cores)
and the fix. Every test restores torch's thread count and the remembered choice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from qwen_embed import threads
from qwen_embed.errors import InputError


@pytest.fixture
def restore(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No remembered choice during the test; torch's thread count as it was afterwards."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", None)
    yield
    torch.set_num_threads(before)


def cgroup(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


V1 = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@pytest.mark.parametrize(("files", "want"), [
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "200000 100000"}, 2.0),
    ({"cpu.max": "50000 100000\n"}, 0.5),
    ({"cpu.max": "max 100000\n"}, None),
    *[({f"{d}/cpu.cfs_quota_us": "250000\n", f"{d}/cpu.cfs_period_us": "100000\n"}, 2.5) for d in V1],
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "100000\n"}, None),  # no period: not a quota
    ({"cpu.max": "max 100000\n", "cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
], ids=["v2-1.5", "v2-2", "v2-half", "v2-max", *[f"v1-{d}" for d in V1], "v1-unlimited", "v1-no-period",
        "v2-wins", "none"])
def test_cgroup_cpu_limit(tmp_path: Path, files: dict[str, str], want: float | None) -> None:
    assert threads.cgroup_cpu_limit(cgroup(tmp_path, files)) == want


@pytest.mark.parametrize(("membership", "files", "want"), [
    # v2: the quota written on this process's own cgroup (systemd-run -p CPUQuota=150%), none at the root
    ("0::/system.slice/job.scope\n", {"system.slice/job.scope/cpu.max": "150000 100000\n"}, 1.5),
    # ... or on a cgroup above it; the smallest quota on the way up wins
    ("0::/a/b/c\n", {"a/cpu.max": "300000 100000", "a/b/cpu.max": "max 100000", "a/b/c/cpu.max": "max 100000"},
     3.0),
    ("0::/a/b\n", {"cpu.max": "400000 100000", "a/cpu.max": "100000 100000", "a/b/cpu.max": "250000 100000"}, 1.0),
    ("0::/a/b\n", {"a/b/cpu.max": "max 100000", "a/cpu.max": "max 100000"}, None),
    # a sibling's quota is not ours
    ("0::/mine\n", {"theirs/cpu.max": "100000 100000", "mine/cpu.max": "max 100000"}, None),
    # v1: the cpu controller's line gives the path (a container without its own cgroup namespace: its path
    # does not exist under the mount, whose root is the container's cgroup)
    ("12:memory:/x\n4:cpu,cpuacct:/docker/abc\n", {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "50000",
                                                  "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000"}, 0.5),
    ("4:cpu,cpuacct:/docker/abc\n", {"cpu/cpu.cfs_quota_us": "200000", "cpu/cpu.cfs_period_us": "100000"}, 2.0),
    ("4:cpuacct,cpu:/k/p\n", {"cpu/k/cpu.cfs_quota_us": "-1", "cpu/k/cpu.cfs_period_us": "100000",
                               "cpu/k/p/cpu.cfs_quota_us": "75000", "cpu/k/p/cpu.cfs_period_us": "100000"}, 0.75),
    ("0::/../../etc\n", {"cpu.max": "100000 100000"}, 1.0),  # no step outside the mount
], ids=["v2-own", "v2-parent", "v2-smallest", "v2-unlimited", "v2-sibling", "v1-own", "v1-namespace-root",
        "v1-nested", "dots"])
def test_cgroup_cpu_limit_of_a_nested_cgroup(tmp_path: Path, membership: str, files: dict[str, str],
                                            want: float | None) -> None:
    assert threads.cgroup_cpu_limit(cgroup(tmp_path, files), membership) == want


def test_cgroup_paths_of_this_process_are_read_from_proc() -> None:
    """On this machine, /proc/self/cgroup's own lines give the paths the limit is read from."""
    text = Path("/proc/self/cgroup").read_text()
    v2, v1 = threads._cgroup_paths(text)
    lines = text.splitlines()
    assert (f"0::{v2}" in lines) or (v2 == "/" and not any(ln.startswith("0::") for ln in lines))
    assert v1 == "/" or any(ln.endswith(f":{v1}") and "cpu" in ln.split(":")[1].split(",") for ln in lines)


@pytest.mark.parametrize(("affinity", "limit", "want"), [
    (6, None, 6), (6, 2.5, 3), (6, 0.2, 1), (6, 100.0, 6), (1, None, 1), (2, 1.0, 1), (64, 2.0, 2),
])
def test_available_cores_is_affinity_capped_by_quota(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     affinity: int, limit: float | None, want: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)))
    root = cgroup(tmp_path, {"cpu.max": f"{int(limit * 100000)} 100000" if limit else "max 100000"})
    assert threads.available_cores(root) == want == max(1, min(affinity, math.ceil(limit) if limit else affinity))


def test_available_cores_of_this_process() -> None:
    """On this machine: never more than the affinity mask, at least one."""
    assert 1 <= threads.available_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("cores", "processes", "want"), [
    (6, 1, 6), (6, 2, 3), (6, 4, 1), (6, 8, 1), (6, 0, 6), (6, -3, 6), (1, 2, 1), (16, 3, 5),
])
def test_default_threads_divides_cores(monkeypatch: pytest.MonkeyPatch, cores: int, processes: int, want: int) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda root=None: cores)
    assert threads.default_threads(processes) == want


@pytest.mark.parametrize("bad", [0, -1, 1.5, 2.0, "2", None, True, False])
def test_check_threads_refuses_in_one_line(monkeypatch: pytest.MonkeyPatch, bad: object) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda root=None: 5)
    with pytest.raises(InputError) as info:
        threads.check_threads(bad)  # type: ignore[arg-type]
    msg = str(info.value)
    assert "\n" not in msg and f"threads={bad!r}" in msg and "5 cores" in msg and "threads=5" in msg, msg


@pytest.mark.parametrize("good", [1, 2, 512])
def test_check_threads_accepts_positive_ints(good: int) -> None:
    assert threads.check_threads(good) == good


def test_set_threads_applies_and_remembers(restore: None) -> None:
    assert threads.set_threads(3) == 3 == torch.get_num_threads() == threads._chosen
    with pytest.raises(InputError):
        threads.set_threads(0)
    assert torch.get_num_threads() == 3 == threads._chosen  # a refused count changes nothing


def test_use_threads_default_when_nothing_chosen(monkeypatch: pytest.MonkeyPatch, restore: None) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda root=None: 4)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.use_threads() == 4 == torch.get_num_threads()
    assert threads.use_threads(processes=2) == 2 == torch.get_num_threads()
    assert threads._chosen is None  # the default is not a choice


@pytest.mark.parametrize("omp", ["1", "3"])
def test_use_threads_leaves_the_users_omp_setting(monkeypatch: pytest.MonkeyPatch, restore: None, omp: str) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda root=None: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    torch.set_num_threads(2)  # what the process runs with
    assert threads.use_threads() == 2 == torch.get_num_threads()


def test_empty_omp_setting_is_no_setting(monkeypatch: pytest.MonkeyPatch, restore: None) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda root=None: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "")
    assert threads.use_threads() == 4


def test_an_explicit_count_wins_and_stays(monkeypatch: pytest.MonkeyPatch, restore: None) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda root=None: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.use_threads(3) == 3 == torch.get_num_threads()  # explicit beats OMP_NUM_THREADS
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.use_threads() == 3  # the later default does not undo the choice
    assert threads.use_threads(None, processes=4) == 3
    assert threads.use_threads(1) == 1 == torch.get_num_threads()


@pytest.mark.parametrize("bad", [0, -2, True])
def test_use_threads_refuses_a_bad_count_and_changes_nothing(restore: None, bad: int) -> None:
    torch.set_num_threads(2)
    with pytest.raises(InputError, match=rf"threads={bad!r} must be a positive integer"):
        threads.use_threads(bad)
    assert torch.get_num_threads() == 2 and threads._chosen is None


def test_use_threads_takes_a_numpy_count_as_the_int_it_is(restore: None) -> None:
    import numpy as np

    got = threads.use_threads(np.int64(1))  # type: ignore[arg-type]
    assert got == 1 == torch.get_num_threads() and type(threads._chosen) is int
