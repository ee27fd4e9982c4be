"""report.md: verdict and root causes first, then the tables (problems first), the plots and
the run details. Every text a user controls is escaped (``escape.markdown``)."""

from __future__ import annotations

import json
from typing import Any, Protocol

from gradparity.core import escape, losses
from gradparity.core.address import place
from gradparity.core.finding import Finding, also_line
from gradparity.core.rounding import json_value
from gradparity.core.row import DISPLAY_COLUMNS, Row
from gradparity.core.status import STATUS_RANK, Status
from gradparity.core.tolerance import Tolerance
from gradparity.report import tables


class Report(Protocol):
    """What report.md is drawn from: ``gradparity.report.report.Report`` (a protocol, since
    that module imports this one)."""

    dtype: str
    tolerance: Tolerance
    rows: list[Row]
    root_causes: list[Finding]
    minor: list[Finding]
    warnings: list[Finding]
    first_divergence: dict[str, Any]
    conversions: list[str]
    notes: list[str]
    meta: dict[str, Any]

    def verdict(self) -> str: ...


_COLUMNS = [c for c in DISPLAY_COLUMNS if c not in ("mode", "type")]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return tables.number(value)
    return escape.markdown(value)


def rows_table(rows: list[Row]) -> list[str]:
    """The rows of one mode as a Markdown table: problem rows first (at most
    ``tables.MARKDOWN_PROBLEM_ROWS``), then ok rows (at most ``tables.MARKDOWN_OK_ROWS``)."""
    ordered = sorted(rows, key=lambda r: STATUS_RANK[r.status])
    problems, more_problems = tables.first(
        [r for r in ordered if r.status != Status.OK], tables.MARKDOWN_PROBLEM_ROWS
    )
    ok_rows, more_ok = tables.first(
        [r for r in ordered if r.status == Status.OK], tables.MARKDOWN_OK_ROWS
    )
    cells = [[_cell(d[c]) for c in _COLUMNS] for d in (r.as_dict() for r in problems + ok_rows)]
    lines = tables.markdown(_COLUMNS, cells)
    if more_problems:
        lines.append(f"\n... and {more_problems} more problem rows (see table.csv)")
    if more_ok:
        lines.append(f"\n... and {more_ok} more ok rows (see table.csv)")
    return lines


def render(report: Report, plot_files: list[str] | None = None) -> str:
    """report.md of ``report``; ``plot_files`` are file names under plots/."""
    md = escape.markdown
    out = [f"# gradparity report: {md(report.meta.get('model', 'model'))}", ""]
    out += [f"**{md(report.verdict())}**", ""]
    loss, unchecked = losses.loss_line(report.meta), losses.unchecked_notice(report.meta)
    out += [md(loss), ""] if loss else []
    out += [f"**Not checked:** {md(unchecked)}", ""] if unchecked else []
    if report.root_causes:
        out += ["## Root causes", ""]
        for i, f in enumerate(report.root_causes, 1):
            out.append(f"{i}. `{f.diagnosis}` {md(f.message)}")
            out += [f"   - {md(also_line(f))}"] if f.quantities else []
        out.append("")
    if report.minor:
        out += ["## Minor differences", ""]
        out += [f"{i}. `{f.diagnosis}` {md(f.message)}" for i, f in enumerate(report.minor, 1)]
        out.append("")
    if report.warnings:
        out += ["## Warnings", ""]
        out += [f"- `{w.diagnosis}` {md(w.message)}" for w in report.warnings]
        out.append("")
    first = {k: v for k, v in report.first_divergence.items() if v}
    if first:
        out += ["## First divergence in the chain run", ""]
        out += [f"- {k}: {md(place(v['layer'], v['quantity']))}" for k, v in first.items()]
        out.append("")
    for mode in dict.fromkeys(["isolate", "chain", *(r.mode for r in report.rows)]):
        rows = [r for r in report.rows if r.mode == mode]
        if rows:
            out += [f"## {md(mode)} rows", "", *rows_table(rows), ""]
    if plot_files:  # file names are safe_name()s: [A-Za-z0-9_.-] only
        out += ["## Plots", ""] + [f"![{md(f)}](plots/{f})" for f in plot_files] + [""]
    out += [
        "## Run details",
        "",
        f"- dtype: {md(report.dtype)}",
        f"- tolerance: {md(json.dumps(json_value(report.tolerance.as_dict(), rounded=False)))}",
    ]
    # The meta block as report.json stores it, so a reloaded report renders the same text.
    out += [f"- {md(k)}: {md(v)}" for k, v in json_value(report.meta).items()]
    out += [f"- layout: {md(c)}" for c in report.conversions]
    out += [f"- note: {md(n)}" for n in report.notes]
    return "\n".join(out) + "\n"
