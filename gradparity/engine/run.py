"""``run(plan)``: run sides -> pair -> compare -> evidence -> locate -> build report."""

from __future__ import annotations

import numpy as np

from gradparity.comparison.diff import compare_tensor, diagnose_row
from gradparity.core.plan import Captures, Context, Entry, Plan, Side, TensorPair
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.engine.guard import gather
from gradparity.engine.report import build_report
from gradparity.report.report import Report
from gradparity.sides.numpy_runner import NumpyRunner


def numpy_side(runner: NumpyRunner, x: np.ndarray, target: np.ndarray, key: str) -> Side:
    """The side that runs ours' code through ``runner`` on (x, target) and captures its record
    as ``key``."""

    def side(captures: Captures) -> None:
        captures[key] = runner.run(x, target)

    return side


def compare_pair(pair: TensorPair, tol: Tolerance, diagnosed: bool = True) -> Row:
    """The one compare step, for one tensor pair (a diverging one left undiagnosed where
    ``diagnosed`` is False: ``diagnose_pair``)."""
    row = compare_tensor(
        pair.mode,
        pair.layer,
        pair.type_name,
        pair.quantity,
        pair.ours,
        pair.reference,
        tol,
        batch_size=pair.batch_size,
        upstream=pair.upstream,
        param_shape=pair.param_shape,
        conversion=pair.conversion,
        diagnosed=diagnosed,
    )
    if pair.shown_conversion is not None:
        row.conversion = pair.shown_conversion
    row.detail.update(pair.detail)
    row.module, row.module_index = pair.module, pair.module_index
    row.reference_parameter = pair.reference_parameter
    row.step = pair.step
    return row


def diagnose_pair(row: Row, pair: TensorPair, tol: Tolerance) -> None:
    """The diagnosis ``compare_pair(..., diagnosed=False)`` left out."""
    assert pair.ours is not None  # a pair ours never produced has nothing to diagnose
    ours = np.asarray(pair.ours)
    diagnose_row(
        row, ours, pair.reference, tol, pair.batch_size, pair.upstream, pair.param_shape,
        pair.conversion,
    )  # fmt: skip


def diagnose_named_chain_rows(ctx: Context, waiting: list[tuple[Row, TensorPair]]) -> None:
    """Diagnose the chain rows the locate stage can name: the first divergence of the chain,
    and each place that also diverges alone (isolate mode); the others are inherited."""
    alone = {(r.layer, r.quantity) for r in ctx.rows_of("isolate") if r.diverged}
    first = next((r for r in ctx.rows_of("chain") if r.diverged), None)
    for row, pair in waiting:
        if row is first or (row.layer, row.quantity) in alone:
            diagnose_pair(row, pair, pair.tolerance or ctx.tolerance)


def compare_entries(entries: list[Entry], ctx: Context) -> None:
    """Compare every tensor pair, by its own tolerance or else the run's, into ``ctx.rows``
    (rows already judged pass through), keeping the values of the pairs that ask for it in
    ``ctx.arrays``. With the plan's ``lazy_chain_diagnosis``, diverging chain rows are
    diagnosed afterwards, only where they can be named (``diagnose_named_chain_rows``)."""
    waiting: list[tuple[Row, TensorPair]] = []
    for entry in entries:
        if isinstance(entry, Row):
            ctx.rows.append(entry)
            continue
        later = ctx.plan.lazy_chain_diagnosis and entry.mode == "chain"
        row = compare_pair(entry, entry.tolerance or ctx.tolerance, diagnosed=not later)
        if later and row.diverged and entry.ours is not None and row.diagnosis is None:
            waiting.append((row, entry))
        if entry.keep_arrays and entry.ours is not None:
            ctx.arrays[(row.layer, row.quantity)] = {
                "ours": entry.ours,
                "reference": entry.reference,
            }
        ctx.rows.append(row)
    diagnose_named_chain_rows(ctx, waiting)


def execute(plan: Plan) -> Context:
    """Every stage but the report's: the context the report is built from."""
    captures: Captures = {}
    for side in plan.sides:
        side(captures)
    notes = [*plan.notes, *captures.pop("notes", [])]
    tolerance = captures.pop("tolerance", plan.tolerance)
    ctx = Context(plan, captures, rows=[], tolerance=tolerance, notes=notes)
    compare_entries(plan.pair(captures), ctx)
    for evidence in plan.evidence:
        gather(evidence, ctx)
    for locator in plan.locators:
        locator(ctx)
    return ctx


def run(plan: Plan) -> Report:
    """Run ``plan`` through every stage and build its report."""
    return build_report(execute(plan))
