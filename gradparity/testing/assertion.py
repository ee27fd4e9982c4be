"""``assert_parity``: ``compare`` as a test assertion, failing with the fix in its first line.

The failure message follows ``torch.testing.assert_close``: the root cause (place, what is
wrong, how to fix it) first, then the numbers of its isolated run, then a short table of the
rows that diverged. The full report travels on the exception as ``.report``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradparity.core import escape, losses
from gradparity.core.address import place
from gradparity.core.errors import InputError
from gradparity.core.finding import Finding, also_line
from gradparity.core.metrics import first_largest
from gradparity.core.row import Row
from gradparity.core.source import where
from gradparity.core.validate import check_seed, prepare_input
from gradparity.pipelines.function import compare_function
from gradparity.pipelines.layers import compare
from gradparity.report import tables
from gradparity.report.folder import check_target
from gradparity.report.report import Report
from gradparity.sides.preflight import dry_run
from gradparity.sides.setup import reference_copy

_TABLE_COLUMNS = ("mode", "layer", "quantity", "status", "diagnosis", "max_abs", "max_rel")


class ParityError(AssertionError):
    """Raised by assert_parity; ``.report`` is the full Report."""

    report: Report

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report

    def __reduce__(self) -> tuple[type[ParityError], tuple[str, Report]]:
        # The default reduce re-calls __init__ with args only, which lacks the report; this
        # keeps the error usable across processes (multiprocessing, pytest-xdist).
        return type(self), (str(self), self.report)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _shape(shape: list[int] | None) -> str:
    return "missing" if shape is None else str(tuple(shape))


def _index(index: tuple[int, ...] | list[int]) -> str:
    return str(tuple(int(i) for i in index))


def _evidence_row(report: Report, finding: Finding) -> Row | None:
    """The row behind a finding: its isolate row if there is one, else its own mode's."""
    rows = [r for r in report.rows if (r.layer, r.quantity) == (finding.layer, finding.quantity)]
    for mode in ("isolate", finding.mode):
        for row in rows:
            if row.mode == mode:
                return row
    return None


def _greatest(
    ours: np.ndarray, ref: np.ndarray, report: Report
) -> tuple[tuple[int, ...], tuple[int, ...], float]:
    """(index of the greatest absolute difference, index of the greatest relative one,
    allowed error at the first), as ``metrics.tensor_diff`` measures them."""
    errors = report.tolerance.errors(ours, ref)
    err, magnitude = errors.error, np.abs(np.asarray(ref, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(magnitude > 0, err / magnitude, np.where(err > 0, np.inf, 0.0))
    at_abs, at_rel = first_largest(err), first_largest(rel)
    return at_abs, at_rel, float(errors.allowed[at_abs])


def _value_block(report: Report, finding: Finding, row: Row) -> list[str]:
    """The assert_close-style numbers of one diverging row."""
    if row.diagnosis == "raised":
        return [f"Raised: {row.message}"]
    if row.max_abs is None:  # no values to compare; a missing gradient is told in line 1
        if row.shape_ours == row.shape_ref:
            return []
        return [f"Shapes: ours {_shape(row.shape_ours)}, reference {_shape(row.shape_ref)}"]
    numel = math.prod(row.shape_ref or [])
    count = round((row.mismatch_frac or 0.0) * numel)
    pct = 100.0 * count / numel if numel else 0.0
    lines = [f"Mismatched elements: {count} / {numel} ({pct:.1f}%)"]
    values = report.arrays.get((finding.layer, finding.quantity), {})
    if row.mode == "isolate" and "ours" in values:  # the isolate probe's own arrays
        ours, ref = values["ours"], values["reference"]
        at_abs, at_rel, allowed = _greatest(ours, ref, report)
        lines += [
            f"Greatest absolute difference: {_fmt(row.max_abs)} at index {_index(at_abs)} "
            f"(ours {_fmt(float(ours[at_abs]))}, reference {_fmt(float(ref[at_abs]))}; "
            f"up to {allowed:.2g} allowed)",
            f"Greatest relative difference: {_fmt(row.max_rel)} at index {_index(at_rel)}",
        ]
    else:  # values not kept (e.g. a merged report): the row's worst element stands in
        lines += [
            f"Greatest absolute difference: {_fmt(row.max_abs)}",
            f"Greatest relative difference: {_fmt(row.max_rel)}",
        ]
        if row.worst_index is not None:
            lines.append(
                f"Worst element against its tolerance: index {_index(row.worst_index)} (ours "
                f"{_fmt(row.ours_at_worst)}, reference {_fmt(row.ref_at_worst)}; up to "
                f"{_fmt(row.allowed_at_worst)} allowed)"
            )
    return lines


def _table(rows: list[Row], max_rows: int) -> list[str]:
    """Fixed-width table of the non-ok rows, isolate rows first."""
    bad = sorted((r for r in rows if r.diverged), key=lambda r: r.mode != "isolate")
    if not bad:
        return []
    shown, hidden = tables.first(bad, max_rows)
    cells = [
        [_fmt(d[c]) if c.startswith("max_") else str(d[c] or "-") for c in _TABLE_COLUMNS]
        for d in (r.as_dict() for r in shown)
    ]
    return tables.fixed_width(_TABLE_COLUMNS, cells) + ([f"... {hidden} more"] if hidden else [])


def _at(finding: Finding) -> str:
    """The " (at file:line)" after a root cause whose code has source, else nothing."""
    return f" (at {where(finding.source)})" if finding.source else ""


def _also(finding: Finding) -> list[str]:
    """The line listing a finding's other quantities, when it lists any."""
    return [f"    {also_line(finding)}"] if finding.quantities else []


def failure_message(report: Report, max_rows: int = tables.FAILURE_MESSAGE_ROWS) -> str:
    """Why ``report`` is not ok, for a test failure: the first root cause's message (place,
    what is wrong, the fix) on line 1 (under ``strict`` with no root cause, the first minor
    difference's), the other root causes, the minor differences after them, that cause's
    numbers, whether the user's own loss went unchecked (gradparity's default ran on ours'
    side), the chain run's first divergence and a table of at most ``max_rows`` non-ok rows."""
    roots, minor = report.root_causes, report.minor
    if roots:
        lines = [f"gradparity: {roots[0].message}{_at(roots[0])}", *_also(roots[0])]
        for f in roots[1:]:
            lines += [f"  - [{f.diagnosis}] {f.message}{_at(f)}", *_also(f)]
    elif minor and report.strict:
        lines = [f"gradparity: minor difference (strict): {minor[0].message}{_at(minor[0])}"]
        minor = minor[1:]
    else:
        lines = ["gradparity: ours and the reference diverge, but no single root cause was found"]
    lines += [f"  - minor [{f.diagnosis}] {f.message}{_at(f)}" for f in minor]
    lines += [f"  ! {w.message}" for w in report.warnings]
    row = _evidence_row(report, roots[0]) if roots else None
    if row is not None and row.diverged:
        lines += _value_block(report, roots[0], row)
    unchecked = losses.unchecked_notice(report.meta)
    lines += [f"Not checked: {unchecked}"] if unchecked else []
    tol = report.tolerance
    lines.append(f"Tolerance: rtol {tol.rtol:g}, atol {tol.atol:g} ({report.dtype})")
    first = [
        f"{kind} at {place(v['layer'], v['quantity'])}"
        for kind, v in report.first_divergence.items()
        if v
    ]
    if first:
        lines.append(f"first divergence in the chain run: {', '.join(first)}")
    lines += _table(report.rows, max_rows)
    return "\n".join(map(escape.terminal, lines))  # names must not drive the terminal


def default_target(reference: torch.nn.Module, x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Random integer classes of the reference's output width, one per example of x (for the
    default softmax cross-entropy).

    The width comes from running a float64 copy of ``reference`` on ``x``; the reference
    itself is left as it was.
    """
    seed = check_seed(seed)
    arr = prepare_input(x, "float64")
    model, _ = reference_copy(reference, "float64")
    output = dry_run(model, arr, torch.float64)
    assert output is not None  # dry_run needs a tensor by default, so returns one
    return np.random.default_rng(seed).integers(0, output.shape[-1], size=int(arr.shape[0]))


def check_report_dir(report_dir: Any) -> None:
    """report_dir: None or a folder path (str or os.PathLike) a report can be saved into,
    refused before anything runs (``folder.check_target``)."""
    if report_dir is not None and not isinstance(report_dir, (str, os.PathLike)):
        raise InputError(
            "report_dir must be a folder path (str or pathlib.Path), got "
            f"{type(report_dir).__name__}"
        )
    if report_dir is not None:
        check_target(report_dir)


def assert_parity(
    ours: Any,
    reference: torch.nn.Module | str,
    x: Any,
    target: Any = None,
    *,
    report_dir: str | os.PathLike | None = None,
    **options: Any,
) -> Report:
    """Run gradparity.compare(ours, reference, x, target, **options); return the report when
    ok, else raise ParityError(failure_message(report)). report_dir: save the full report
    there on failure.

    Without ``target``, ``default_target(reference, x, seed)`` supplies random classes (for
    the default softmax cross-entropy); with ``reference="autodiff"`` there is no model to
    take them from, so ``target`` is required. Bad input raises ``InputError`` as ``compare``
    does.
    """
    __tracebackhide__ = True  # pytest: show the caller's line, not this frame
    check_report_dir(report_dir)
    if target is None:
        if isinstance(reference, str):
            raise InputError(
                f"reference {reference!r} needs a target: there is no torch model to draw "
                "random classes from"
            )
        target = default_target(reference, x, options.get("seed", 0))
    return _passed(compare(ours, reference, x, target, **options), report_dir)


def _passed(report: Report, report_dir: str | os.PathLike | None) -> Report:
    """``report`` when ok, else ParityError (the report saved to ``report_dir`` if given)."""
    __tracebackhide__ = True
    if report.ok:
        return report
    message = failure_message(report)
    if report_dir is not None:
        try:  # the divergence is the news: a folder that became unusable must not hide it
            saved = report.save(report_dir)
            message += f"\nfull report: {Path(saved) / 'report.md'}"
        except InputError as exc:
            message += f"\nreport not saved: {exc}"
    raise ParityError(message, report)


def assert_function_parity(
    grads: Any,
    params: Any,
    reference: torch.nn.Module | None,
    x: Any,
    target: Any,
    *,
    report_dir: str | os.PathLike | None = None,
    **options: Any,
) -> Report:
    """``gradparity.compare_function(grads, params, reference, x, target, **options)`` as an
    assertion: the report when ok, else ParityError with the root cause on line 1."""
    __tracebackhide__ = True
    check_report_dir(report_dir)
    return _passed(compare_function(grads, params, reference, x, target, **options), report_dir)
