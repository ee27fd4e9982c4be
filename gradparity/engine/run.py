"""``run(plan)``: run sides -> pair -> compare -> evidence -> locate -> build report."""

from __future__ import annotations

import numpy as np

from gradparity.comparison.diff import compare_tensor
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


def compare_pair(pair: TensorPair, tol: Tolerance) -> Row:
    """The one compare step, for one tensor pair."""
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
    )
    if pair.shown_conversion is not None:
        row.conversion = pair.shown_conversion
    row.detail.update(pair.detail)
    row.module, row.module_index = pair.module, pair.module_index
    row.reference_parameter = pair.reference_parameter
    row.step = pair.step
    return row


def compare_entries(entries: list[Entry], ctx: Context) -> None:
    """Compare every tensor pair, by its own tolerance or else the run's, into ``ctx.rows``
    (rows already judged pass through), keeping the values of the pairs that ask for it in
    ``ctx.arrays``."""
    for entry in entries:
        if isinstance(entry, Row):
            ctx.rows.append(entry)
            continue
        row = compare_pair(entry, entry.tolerance or ctx.tolerance)
        if entry.keep_arrays and entry.ours is not None:
            ctx.arrays[(row.layer, row.quantity)] = {
                "ours": entry.ours,
                "reference": entry.reference,
            }
        ctx.rows.append(row)


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
