"""report.html: one self-contained page (inline CSS, plots as data URIs, no network).

Order follows what a reader needs: the verdict, the root causes with their fix, the layer
table (problems first, ok rows collapsed), the plots, then the run details. ``fragment`` gives
the same sections as one element with its style scoped to it, for a Jupyter notebook
(``Report._repr_html_``).
"""

from __future__ import annotations

import base64
import json
import re

from gradparity.core import escape, losses
from gradparity.core.address import place
from gradparity.core.finding import Finding, also_line
from gradparity.core.rounding import json_value
from gradparity.core.row import DISPLAY_COLUMNS, Row
from gradparity.core.source import source_text, where
from gradparity.core.status import STATUS_RANK, Status
from gradparity.report import tables

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1d232b; line-height: 1.45; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { border-bottom: 1px solid #d6dbe1;
       padding-bottom: .2rem; margin-top: 2rem; }
.verdict { padding: .8rem 1rem; border-radius: 6px; font-size: 1.15rem; font-weight: 600; }
.verdict.ok { background: #e6f4e6; border-left: 6px solid #2f8f3a; }
.notice { background: #fff6dd; border-left: 6px solid #d49b00; border-radius: 6px;
          padding: .5rem 1rem; } .loss { color: #555; margin: .4rem 0; }
.verdict.bad { background: #fbe9e9; border-left: 6px solid #c62828; }
.finding { border: 1px solid #e3c2c2; border-left: 6px solid #c62828; border-radius: 6px;
           padding: .6rem 1rem; margin: .8rem 0; background: #fffafa; }
.finding.warning { border-left-color: #d49b00; border-color: #ecd9a6; background: #fffdf5; }
.finding h3 { margin: 0 0 .3rem 0; font-size: 1.1rem; }
.label { display: inline-block; font-family: ui-monospace, monospace; font-size: .85rem;
         background: #1d232b; color: #fff; border-radius: 4px; padding: 0 .45rem;
         margin-left: .5rem; vertical-align: middle; }
.fix { background: #eef5ff; border-radius: 4px; padding: .35rem .6rem; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: .8rem; margin: .5rem 0; }
th, td { border: 1px solid #d6dbe1; padding: .2rem .45rem; text-align: left; }
th { background: #f1f3f6; } td { font-variant-numeric: tabular-nums; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #d6dbe1; }
figcaption { color: #555; font-size: .9rem; }
pre { background: #f6f8fa; padding: .5rem; overflow-x: auto; font-size: .8rem; }
dt { font-weight: 600; } dd { margin: 0 0 .4rem 1rem; }
details summary { cursor: pointer; color: #2a5db0; }
tr.root_cause { background-color: #f8d0d0; font-weight: 600; }
tr.diverged { background-color: #fbe3c8; } tr.inherited { background-color: #fdf6d2; }
tr.ok { background-color: #e6f4e6; } tr.minor { background-color: #e3f1f6; }
"""


_e = escape.html


def _finding(f: Finding, kind: str = "") -> str:
    problem = f.problem or f.message
    fix = f'<p class="fix"><strong>Fix:</strong> {_e(f.fix)}</p>' if f.fix else ""
    detail = json.dumps(json_value(f.detail), indent=1, default=str, sort_keys=True)
    return (
        f'<article class="finding {kind}"><h3>{_e(place(f.layer, f.quantity))}'
        f'<span class="label">{_e(f.diagnosis)}</span></h3>'
        f'<p class="message">{_e(problem)}</p>{fix}{_listed(f)}{_source(f.source)}'
        f"<details><summary>numbers ({_e(f.mode)} mode)</summary><pre>{_e(detail)}</pre>"
        "</details></article>"
    )


def _listed(f: Finding) -> str:
    """The finding's other quantities (``also_line``), when it lists any."""
    return f'<p class="also">{_e(also_line(f))}</p>' if f.quantities else ""


def _source(source: dict | None) -> str:
    """Where to read: ``file:line`` and the first lines there (read now; none when the file
    is not readable from here)."""
    if not source:
        return ""
    lines = source_text(source)
    width = len(str(lines[-1][0])) if lines else 0
    code = "\n".join(f"{n:>{width}}  {text}" for n, text in lines)
    shown = f'<pre class="source">{_e(code)}</pre>' if lines else ""
    return f'<p class="where"><strong>Source:</strong> {_e(where(source))}</p>{shown}'


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return tables.number(value)
    if isinstance(value, (list, tuple)):
        return _e(tuple(value))
    return _e(value)


def _rows_table(rows: list[Row]) -> str:
    """A plain HTML table (each row coloured by its status class): every cell escaped, and
    the same bytes for the same rows (no generated ids)."""
    stepped = any(r.step is not None for r in rows)
    columns = ["step", *DISPLAY_COLUMNS] if stepped else DISPLAY_COLUMNS
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for r in rows:
        d = r.as_dict()
        cells = "".join(f"<td>{_cell(d[c])}</td>" for c in columns)
        body.append(f'<tr class="{_e(r.status)}">{cells}</tr>')
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def layer_tables(rows: list[Row]) -> str:
    """Problem rows first (all statuses but ok), ok rows collapsed under a summary; at most
    ``tables.HTML_PROBLEM_ROWS`` and ``tables.HTML_OK_ROWS`` of them."""
    ranked = sorted((r for r in rows if r.status != Status.OK), key=lambda r: STATUS_RANK[r.status])
    problems, more_problems = tables.first(ranked, tables.HTML_PROBLEM_ROWS)
    ok_rows, more_ok = tables.first([r for r in rows if r.status == Status.OK], tables.HTML_OK_ROWS)
    parts = []
    if problems:
        parts.append(_rows_table(problems))
        if more_problems:
            parts.append(f"<p>... {more_problems} more problem rows in table.csv</p>")
    if ok_rows:
        more = f"<p>... {more_ok} more ok rows in table.csv</p>" if more_ok else ""
        parts.append(
            f"<details{'' if problems else ' open'}><summary>{len(ok_rows) + more_ok} ok rows"
            f"</summary>{_rows_table(ok_rows)}{more}</details>"
        )
    return "\n".join(parts)


def _figure(name: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure id="{_e(name)}"><img alt="{_e(caption)}" src="data:image/png;base64,'
        f'{data}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _scoped(css: str, scope: str) -> str:
    """``css`` with every selector inside ``scope`` (``body`` becomes ``scope`` itself), so a
    report shown inside another page (a notebook) styles nothing else of it."""

    def rule(match: re.Match) -> str:
        selectors = (s.strip() for s in match.group(1).split(","))
        scoped = (scope if s == "body" else f"{scope} {s}" for s in selectors)
        return f"{', '.join(scoped)} {{{match.group(2)}}}"

    rules = re.finditer(r"([^{}]+?)\s*\{([^{}]*)\}", css)
    return "\n".join(rule(m) for m in rules)


SCOPE = "gradparity-report"
SCOPED_CSS = _scoped(CSS, f".{SCOPE}")


def render(report, plots: list[tuple[str, bytes, str]]) -> str:
    """The page for ``report``; ``plots`` are (file name, PNG bytes, caption)."""
    name = report.meta.get("model", "model")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>gradparity report: {_e(name)}</title><style>{CSS}</style></head><body>"
        + "\n".join(_sections(report, plots))
        + "</body></html>\n"
    )


def fragment(report, plots: list[tuple[str, bytes, str]]) -> str:
    """The page's content as one element to place inside another page (a Jupyter
    notebook's output): the same sections, with the style scoped to the element."""
    return (
        f'<div class="{SCOPE}"><style>{SCOPED_CSS}</style>'
        + "\n".join(_sections(report, plots))
        + "</div>\n"
    )


def _sections(report, plots: list[tuple[str, bytes, str]]) -> list[str]:
    """The page's sections, in reading order."""
    name = report.meta.get("model", "model")
    if report.ok:
        verdict = f'<p class="verdict ok">{_e(report.verdict())}</p>'
    else:
        first = report.root_causes[0] if report.root_causes else None
        lead = f": fix {_e(place(first.layer, first.quantity))} first" if first else ""
        verdict = f'<p class="verdict bad">{_e(report.verdict())}{lead}</p>'
    sections = [f"<h1>gradparity report: {_e(name)}</h1>", verdict]
    loss, unchecked = losses.loss_line(report.meta), losses.unchecked_notice(report.meta)
    if loss:
        sections.append(f'<p class="loss">{_e(loss)}</p>')
    if unchecked:
        sections.append(f'<p class="notice"><strong>Not checked:</strong> {_e(unchecked)}</p>')
    if report.root_causes:
        sections.append(
            '<section id="root-causes"><h2>Root causes</h2>'
            + "".join(_finding(f) for f in report.root_causes)
            + "</section>"
        )
    if report.minor:
        sections.append(
            '<section id="minor"><h2>Minor differences</h2>'
            + "".join(_finding(f, "minor") for f in report.minor)
            + "</section>"
        )
    if report.warnings:
        sections.append(
            '<section id="warnings"><h2>Warnings</h2>'
            + "".join(_finding(f, "warning") for f in report.warnings)
            + "</section>"
        )
    first = {k: v for k, v in report.first_divergence.items() if v}
    if first:
        items = "".join(
            f"<li>{_e(k)}: {_e(place(v['layer'], v['quantity']))}</li>" for k, v in first.items()
        )
        sections.append(
            '<section id="first-divergence"><h2>First divergence in the chain run'
            f"</h2><ul>{items}</ul></section>"
        )
    sections.append(f'<section id="layers"><h2>Layers</h2>{layer_tables(report.rows)}</section>')
    if plots:
        sections.append(
            '<section id="plots"><h2>Plots</h2>'
            + "".join(_figure(*p) for p in plots)
            + "</section>"
        )
    details = {
        "dtype": report.dtype,
        "tolerance": json.dumps(report.tolerance.as_dict()),
        **json_value(report.meta),  # as report.json stores it: a reload renders the same
    }
    items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in details.items())
    items += "".join(f"<dt>layout</dt><dd>{_e(c)}</dd>" for c in report.conversions)
    items += "".join(f"<dt>note</dt><dd>{_e(n)}</dd>" for n in report.notes)
    sections.append(f'<section id="run-details"><h2>Run details</h2><dl>{items}</dl></section>')
    return sections
