"""The one renderer of plain-text and Markdown tables, and how many rows each place shows.

Every text table of gradparity (the terminal, a test's failure message, report.md) is drawn
here; report.html draws its own markup but takes its limits from here too. Rows past a limit
are counted in a closing line that says where the rest is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from gradparity.core.rounding import round_sig

# How many rows each place shows, and why that many.
# A test's failure message: the root cause is its first line; a few rows place it in the run
# without burying the message in a CI log.
FAILURE_MESSAGE_ROWS = 8
# The terminal after `gradparity check`: verdict, table and root causes fit one 24-line screen.
TERMINAL_ROWS = 12
# report.md: every problem of a real network, while the page still renders on a code host.
MARKDOWN_PROBLEM_ROWS = 200
# report.md's ok rows are context only; table.csv holds them all.
MARKDOWN_OK_ROWS = 30
# report.html: more problems than Markdown (a browser scrolls a long table without trouble).
HTML_PROBLEM_ROWS = 300
# report.html's ok rows sit collapsed under a summary; table.csv holds them all.
HTML_OK_ROWS = 100

Item = TypeVar("Item")


def first(items: Sequence[Item], limit: int) -> tuple[list[Item], int]:
    """The first ``limit`` items and how many were left out."""
    return list(items[:limit]), max(0, len(items) - limit)


def number(value: float) -> str:
    """A statistic in three significant digits, of the value as report.json stores it (six
    significant digits), so a report reloaded from report.json renders the same text."""
    return f"{round_sig(value):.3g}"


def fixed_width(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a plain-text table: each column padded to its widest cell, columns two spaces
    apart, trailing spaces dropped; the header first. Cells are strings (already escaped)."""
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *cells]]


def markdown(header: Sequence[str], cells: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a Markdown (pipe) table; cells are strings already escaped for Markdown."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in cells]
