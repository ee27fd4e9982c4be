"""``gp.tap(name, array)``: record an intermediate inside user code during a comparison.

Outside a comparison ``tap`` only returns its argument (one context-variable read, about 80 ns),
so taps can stay in the code for good. A name tapped several times in one call (a tap inside a
loop) becomes ``name[0]``, ``name[1]``, ... in call order; a name tapped once keeps its plain
name. Each recorded tap also records its call site (file, line), so a root cause between two
taps can name the lines between them. A gradient tap, ``tap("z1", dz1, grad=True)``, is the
gradient of the forward tap of the same name; it is recorded apart (``TapLog.grad_taps``), and
the autodiff reference compares it with the exact gradient of that forward value.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

import numpy as np

from gradparity.core.records import BadValue, real_array

T = TypeVar("T")


class TapLog(list[tuple[str, "np.ndarray | BadValue"]]):
    """The forward taps of one recording, (name, copy) in call order; ``sites``: each one's
    call site, (file, line), in the same order. ``grad_taps`` and ``grad_sites``: the same for
    gradient taps (``tap(..., grad=True)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.sites: list[tuple[str, int]] = []
        self.grad_taps: list[tuple[str, np.ndarray | BadValue]] = []
        self.grad_sites: list[tuple[str, int]] = []

    def record(self, name: str, value: object, grad: bool, site: tuple[str, int]) -> None:
        """Keep a copy of ``value`` (or the ``BadValue`` saying why it is not an array of real
        numbers) under ``name``, with its call site."""
        try:
            copy: np.ndarray | BadValue = real_array(value, f"tap {name!r}", name)
        except BadValue as exc:
            copy = exc
        if grad:
            self.grad_taps.append((name, copy))
            self.grad_sites.append(site)
        else:
            self.append((name, copy))
            self.sites.append(site)


# Per thread and per asyncio task: comparisons running side by side never share a log.
_active: ContextVar[TapLog | None] = ContextVar("gradparity_taps", default=None)


def tap(name: str, array: T, grad: bool = False) -> T:
    """Record a copy of ``array`` under ``name`` while gradparity runs this code; return
    ``array`` unchanged (so ``a = gp.tap("a1", sigmoid(z))`` works inline). With
    ``grad=True``, ``array`` is the gradient of the loss with respect to the forward value
    tapped as ``name`` (``gp.tap("z1", dz1, grad=True)`` is dL/dz1); the autodiff reference
    compares it with the exact one. In the autodiff run (on tensors) a forward tap keeps its
    tensor so its exact gradient is known, and gradient taps are ignored. A value that is not
    an array of real numbers (text, complex values) is recorded as the ``BadValue`` that says
    so: the comparison reports it on that tap, the user's code runs on."""
    log = _active.get()
    if log is not None:
        caller = sys._getframe(1)
        log.record(str(name), array, grad, (caller.f_code.co_filename, caller.f_lineno))
    return array


@contextmanager
def recording(log: TapLog | None = None) -> Iterator[TapLog]:
    """Collect every ``tap`` made inside the block into ``log`` (a new ``TapLog`` by default),
    as (name, copy) in call order (and their call sites); an enclosing recording gets none of
    them and resumes afterwards."""
    log = TapLog() if log is None else log
    token = _active.set(log)
    try:
        yield log
    finally:
        _active.reset(token)


def named(log: list[tuple[str, T]]) -> dict[str, T]:
    """The recorded taps by final name, in call order: a repeated name gets [i] suffixes."""
    counts: dict[str, int] = {}
    for name, _ in log:
        counts[name] = counts.get(name, 0) + 1
    seen: dict[str, int] = {}
    out: dict[str, T] = {}
    for name, value in log:
        if counts[name] == 1:
            out[name] = value
        else:
            out[f"{name}[{seen.get(name, 0)}]"] = value
            seen[name] = seen.get(name, 0) + 1
    return out


def follow_map(recorded: dict[str, T], wanted: list[str]) -> dict[str, T]:
    """``recorded`` with a tap made once under ``name`` renamed ``name[0]`` where ``wanted``
    asks for that (a loop that ran once, e.g. a network with one hidden layer)."""
    return {
        f"{n}[0]" if f"{n}[0]" in wanted and n not in wanted else n: v for n, v in recorded.items()
    }


def sites(log: TapLog) -> dict[str, tuple[str, int]]:
    """The call site (file, line) of each recorded tap, by the final name ``named`` gives."""
    return named([(name, site) for (name, _), site in zip(log, log.sites, strict=True)])


def grad_taps(log: TapLog) -> dict[str, np.ndarray | BadValue]:
    """The recorded gradient taps by final name (numbered as ``named`` numbers forward taps)."""
    return named(log.grad_taps)


def grad_sites(log: TapLog) -> dict[str, tuple[str, int]]:
    """The call site (file, line) of each gradient tap, by the final name ``grad_taps`` gives."""
    return named([(n, site) for (n, _), site in zip(log.grad_taps, log.grad_sites, strict=True)])
