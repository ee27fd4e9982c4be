"""Run independent named tasks (the selftest's bugs) in a pool of worker processes.

Workers are started with "spawn" on every platform: forking a parent that has already started
torch's thread pool can deadlock, and spawn behaves the same on Linux, macOS and Windows. Only
a task's name and the seed cross the process boundary (never a model or a closure), so the task
function must be importable by name. A task that raises, or a worker process that dies, becomes
a ``Crash`` in that task's place; the other results are kept and come back in the order given.
A spawned worker imports the caller's main module again, so a script that starts a pool must do
so under ``if __name__ == "__main__":`` (otherwise every worker dies at start).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TypeVar

from gradparity.core.errors import InputError, describe_error

R = TypeVar("R")


@dataclass(frozen=True)
class Crash:
    """A task that gave no result: ``reason`` is one line, ``details`` its traceback if any."""

    reason: str
    details: str = ""


def resolve_jobs(jobs: object) -> int:
    """The number of worker processes for ``jobs``: a whole number >= 1 as given, 0 or "auto"
    for every CPU (``os.cpu_count()``). Anything else raises ``InputError``."""
    whole = isinstance(jobs, int) and not isinstance(jobs, bool)  # True is not a count
    if jobs == "auto" or (whole and jobs == 0):
        return os.cpu_count() or 1
    if whole and isinstance(jobs, int) and jobs > 0:
        return jobs
    raise InputError(
        f"jobs must be a whole number >= 0 or 'auto' (0 and auto: every CPU), not {jobs!r}"
    )


def parse_jobs(text: str) -> int:
    """``--jobs``'s text as a worker count (``resolve_jobs``): "auto", "0" or a whole number."""
    value: object = text  # not a number: refused by resolve_jobs, quoting the text
    if text != "auto":
        with contextlib.suppress(ValueError):
            value = int(text)
    return resolve_jobs(value)


def guarded(task: Callable[[str, int], R], name: str, seed: int) -> R | Crash:
    """``task(name, seed)``, or a ``Crash`` naming the exception it raised, with its traceback."""
    try:
        return task(name, seed)
    except Exception as exc:  # one bad task must not cost the others their results
        return Crash(f"raised {describe_error(exc)}", "".join(traceback.format_exception(exc)))


# Read by torch's OpenMP pool and NumPy's BLAS when they load. A spawned worker loads torch only
# after its initializer runs; NumPy's BLAS may be loaded before, by the caller's main module
# (the gradparity command imports NumPy), and then keeps its own thread count.
ONE_THREAD = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def one_thread_per_worker() -> None:
    """Worker start-up: torch computes on one thread, so N workers use N cores, not N x cores.
    Only the worker's own environment is set; torch is not imported for it."""
    for variable in ONE_THREAD:
        os.environ[variable] = "1"
    torch = sys.modules.get("torch")  # loaded already when the parent's main module imports it
    if torch is not None:
        torch.set_num_threads(1)


def run_tasks(
    task: Callable[[str, int], R], names: list[str], seed: int, jobs: int
) -> list[R | Crash]:
    """``task(name, seed)`` for each name, ``jobs`` at a time in worker processes (in this
    process when one worker is enough); one entry per name, in the order of ``names``."""
    workers = min(jobs, len(names))
    if workers <= 1:
        return [guarded(task, name, seed) for name in names]
    results: dict[int, R | Crash] = {}
    pending = list(range(len(names)))
    size = workers
    while pending:
        # A dead worker breaks the whole pool and cuts off every unfinished task with it, so
        # the unfinished run again in a fresh pool. When a pool broke before anything finished,
        # the first of them runs alone: alone, only the task that kills its worker fails.
        batch = pending if size > 1 else pending[:1]
        outcomes = _in_pool(task, {i: names[i] for i in batch}, seed, size)
        finished = {i: r for i, r in outcomes.items() if not isinstance(r, _Unfinished)}
        if size == 1:
            finished = {i: _settled(r) for i, r in outcomes.items()}
        results |= finished
        size = workers if finished else 1
        pending = [i for i in pending if i not in results]
    return [results[i] for i in range(len(names))]


class _Unfinished(Crash):
    """A task whose pool broke before it finished: not yet known to be the one that broke it."""


def _settled(result: R | Crash) -> R | Crash:
    """A task that ran alone: if its pool broke, its own worker died."""
    if isinstance(result, _Unfinished):
        return Crash(result.reason, result.details)
    return result


def _in_pool(
    task: Callable[[str, int], R], names: dict[int, str], seed: int, workers: int
) -> dict[int, R | Crash]:
    """Each named task in a fresh spawn pool of ``workers`` processes; a task cut off by a dead
    worker is an ``_Unfinished``."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, context, one_thread_per_worker) as pool:
        futures = {i: pool.submit(guarded, task, name, seed) for i, name in names.items()}
        return {i: _outcome(future) for i, future in futures.items()}


def _outcome(future: Future[R | Crash]) -> R | Crash:
    """A finished task's result; a task whose worker died, or whose result could not be sent
    back, as a crash."""
    try:
        return future.result()
    except BrokenProcessPool:
        return _Unfinished(
            "its worker process died (killed, out of memory, a crash in C code, or a calling "
            "script without if __name__ == '__main__':)"
        )
    except Exception as exc:  # e.g. a result that cannot be pickled back to this process
        return Crash(f"raised {describe_error(exc)}", "".join(traceback.format_exception(exc)))
