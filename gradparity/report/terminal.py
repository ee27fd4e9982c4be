"""Terminal rendering of a report: verdict, a compact table of the problem rows, root causes.

Colour only when writing to a TTY and ``NO_COLOR`` is unset (https://no-color.org).
"""

from __future__ import annotations

import os
from typing import TextIO

from gradparity.core import escape
from gradparity.core.address import place
from gradparity.core.finding import also_line
from gradparity.core.row import Row
from gradparity.core.source import where
from gradparity.core.status import STATUS_RANK, Status
from gradparity.report import tables

_COLOURS = {
    "root_cause": "31;1",
    "diverged": "33;1",
    "inherited": "33",
    "minor": "36",
    "ok": "32",
}


def use_colour(stream: TextIO) -> bool:
    """True when ``stream`` is a terminal and NO_COLOR is unset or empty (no-color.org)."""
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def _paint(text: str, status: str, colour: bool) -> str:
    return f"\033[{_COLOURS[status]}m{text}\033[0m" if colour else text


def _num(value: float | None) -> str:
    return "" if value is None else tables.number(value)


def _table(rows: list[Row], colour: bool) -> list[str]:
    header = ("mode", "place", "status", "diagnosis", "max_abs", "max_rel")
    cells = [
        (
            r.mode,
            escape.terminal(place(r.layer, r.quantity)),
            r.status,
            r.diagnosis or "",
            _num(r.max_abs),
            _num(r.max_rel),
        )
        for r in rows
    ]
    head, *lines = tables.fixed_width(header, cells)
    return [head, *(_paint(line, row.status, colour) for line, row in zip(lines, rows))]


def problem_lines(report, colour: bool = False) -> list[str]:
    """What follows the verdict line of a divergence: the problem rows (root causes first,
    at most ``tables.TERMINAL_ROWS``), then each root cause's message with its fix, each
    minor finding's (after every root cause) and each warning. ``Report.summary`` shows the
    same lines, never coloured."""
    problems = sorted(
        (r for r in report.rows if r.status != Status.OK), key=lambda r: STATUS_RANK[r.status]
    )
    shown, hidden = tables.first(problems, tables.TERMINAL_ROWS)
    lines = ["  " + line for line in _table(shown, colour)]
    if hidden:
        lines.append(f"  ... {hidden} more problem rows in the report")
    for i, f in enumerate(report.root_causes, 1):
        lines.append(escape.terminal(f"{i}. [{f.diagnosis}] {f.message}"))
        if f.quantities:
            lines.append(escape.terminal(f"   {also_line(f)}"))
        if f.source:
            lines.append(escape.terminal(f"   at {where(f.source)}"))
    for i, f in enumerate(report.minor, 1):
        lines.append(escape.terminal(f"minor {i}. [{f.diagnosis}] {f.message}"))
    lines += [escape.terminal(f"warning: {w.message}") for w in report.warnings]
    return lines


def render(report, colour: bool = False) -> str:
    """Verdict line, the loss each side ran (``Report.loss_lines``); for a divergence, the
    problem rows (root causes first, at most ``tables.TERMINAL_ROWS``) and each root cause's
    message with its fix."""
    name = report.meta.get("model", "model")
    if report.ok:
        head, *rest = report.summary().split("\n")  # summary() escapes its lines
        return "\n".join([_paint(head, "ok", colour), *rest])
    lines = [_paint(escape.terminal(f"{name}: {report.verdict()}"), "root_cause", colour)]
    lines += [escape.terminal(f"  {line}") for line in report.loss_lines()]
    return "\n".join([*lines, *problem_lines(report, colour)])
