"""The status of a compared tensor, as report.json writes it."""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """What the pipeline concluded about one row; the value is the word report.json writes.

    ``DIVERGED``: out of tolerance (and, once located, the first divergence of a chain that
    isolation does not explain); ``ROOT_CAUSE``: a place to fix; ``INHERITED``: diverged only
    because something upstream did; ``MINOR``: a difference small against the tensor's scale and
    consistent with a small constant (an epsilon): named and listed after root causes, but ``ok``
    stays True unless the comparison is ``strict``.
    """

    OK = "ok"
    DIVERGED = "diverged"
    ROOT_CAUSE = "root_cause"
    INHERITED = "inherited"
    MINOR = "minor"

    def __str__(self) -> str:
        return self.value


# Problems first: the order every rendering sorts rows in.
STATUS_RANK = {
    Status.ROOT_CAUSE: 0,
    Status.DIVERGED: 1,
    Status.INHERITED: 2,
    Status.MINOR: 3,
    Status.OK: 4,
}
