"""Light tasks for ``gradparity.corpus.parallel`` tests: importable by name in a spawned worker
(they load neither torch nor the harness, so a pool of them starts in well under a second)."""

from __future__ import annotations

import os
import time


def report_where(name: str, seed: int) -> tuple[str, int, int, str | None]:
    """(name, seed, the process id, OMP_NUM_THREADS there); "slow" finishes last."""
    if name == "slow":
        time.sleep(1.0)
    return name, seed, os.getpid(), os.environ.get("OMP_NUM_THREADS")


def dies_on_die(name: str, seed: int) -> str:
    """Ends its worker process abruptly for "die" (as a segfault or the OOM killer would)."""
    if name == "die":
        os._exit(3)
    time.sleep(0.2)  # the others are still running when "die" breaks the pool
    return name


def raises_on_bad(name: str, seed: int) -> str:
    """Raises for "bad"."""
    if name == "bad":
        raise ValueError("no such layer 'fc9'")
    return name
