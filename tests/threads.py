"""Torch on one thread in the test process and in every process a test starts (2 threads on 2 shared cores
made a 20-step training test 10x slower)."""

from __future__ import annotations

import os

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a process a test starts: this one's, torch on one thread, plus `extra`."""
    return {**os.environ, **ONE_THREAD, **extra}
