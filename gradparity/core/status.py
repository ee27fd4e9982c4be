"""The status of a compared tensor, as report.json writes it."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """What the pipeline concluded about one row; the value is the word report.json writes.

    ``DIVERGED``: out of tolerance (and, once located, the first divergence of a chain that
    isolation does not explain); ``ROOT_CAUSE``: a place to fix; ``INHERITED``: diverged only
    because something upstream did.
    """

    OK = "ok"
    DIVERGED = "diverged"
    ROOT_CAUSE = "root_cause"
    INHERITED = "inherited"

    def __str__(self) -> str:
        return self.value


# Problems first: the order every rendering sorts rows in.
STATUS_RANK = {Status.ROOT_CAUSE: 0, Status.DIVERGED: 1, Status.INHERITED: 2, Status.OK: 3}
