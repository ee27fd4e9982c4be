"""Progress of a long central-difference run on a terminal: one line on stderr, rewritten in
place ("central differences: W1 120/400 entries, 3.1 s"), at most ``1 / INTERVAL`` updates a
second, cleared at the end. Written only when the stream is a terminal (never into a pipe, a
log file or pytest's capture) and ``GRADPARITY_PROGRESS`` is not "0"."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from gradparity.evidence.central_difference import Moved

INTERVAL = 0.1  # seconds between two writes of the line
ENV = "GRADPARITY_PROGRESS"  # "0" silences the line


def wanted(stream: TextIO) -> bool:
    """Whether a progress line goes to ``stream``: a terminal, and not silenced by ``ENV``."""
    if os.environ.get(ENV, "").strip() == "0":
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed or detached stream
        return False


class Progress:
    """The progress line of one run; a context manager that clears it on exit. ``stream``:
    default ``sys.stderr`` as it is when the run starts; ``clock``: seconds, monotonic."""

    def __init__(
        self,
        label: str = "central differences",
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.clock = label, clock
        self.stream = sys.stderr if stream is None else stream
        self.enabled = wanted(self.stream)
        self.start = self.last_write = clock()
        self.shown = 0  # characters of the line on screen now

    def update(self, name: str, done: int, total: int) -> None:
        """Say that ``done`` of ``total`` entries or directions of ``name`` are measured; the
        line is rewritten only when ``INTERVAL`` has passed since the last write."""
        now = self.clock()
        if not self.enabled or now - self.last_write < INTERVAL:
            return
        line = f"{self.label}: {name} {done}/{total} entries, {now - self.start:.1f} s"
        self._write(line)
        self.last_write = now

    def counting(self, name: str, moved: Moved, total: int) -> Moved:
        """``moved`` that reports each finished central difference (two calls) of ``name``
        as one of ``total``."""
        calls = 0

        def counted(step):
            nonlocal calls
            value = moved(step)
            calls += 1
            if calls % 2 == 0:
                self.update(name, calls // 2, total)
            return value

        return counted

    def clear(self) -> None:
        """Remove the line from the terminal (nothing when none was written)."""
        if self.shown:
            self._write("")

    def _write(self, line: str) -> None:
        # Spaces over the old line's tail, then back to the line's start: no terminal codes.
        padding = " " * max(0, self.shown - len(line))
        try:
            self.stream.write(f"\r{line}{padding}" + ("" if line else "\r"))
            self.stream.flush()
        except (OSError, ValueError):  # the terminal went away: the run goes on
            self.enabled = False
        self.shown = len(line)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()
