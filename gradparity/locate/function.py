"""Locate stage of a function comparison: the locator plug-in setting statuses and root causes.

Taps run like a chain: forward taps in forward order, the loss, then gradient taps in backward
order. The first that diverges is a root cause, the place where the bug is (between it and
the tap before it that agrees); every later divergence is ``inherited``. Diverging parameter
gradients are grouped per layer, one root cause each (``locate.function_groups``); the deepest
(closest to the output) is marked, since a backward bug shows first there and spreads towards
the input, and without gradient taps the layers nearer the input are listed under it as
possibly inherited. A gradient tap named as the bug's place explains the parameters its delta
reaches (its module's and those before it): their rows are ``inherited``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradparity.core.address import place
from gradparity.core.finding import Finding, finding_from_row
from gradparity.core.labels import BATCH_REDUCTION
from gradparity.core.metrics import tensor_diff
from gradparity.core.plan import Context
from gradparity.core.row import Row
from gradparity.core.source import assignment_of, source_of, source_span
from gradparity.core.status import Status
from gradparity.core.tolerance import Tolerance
from gradparity.evidence.lint_findings import aliased, gradient_shape, mutation, raised, raised_row
from gradparity.locate.function_groups import (
    forward_rooted,
    param_name,
    per_layer,
    tapped_roots,
    untapped_roots,
)
from gradparity.sides.function_run import UserRun

NUMERIC_REFERENCE = "central differences of loss_fn"  # meta["reference"] without a model


def _per_element_factor(values: dict[str, np.ndarray]) -> str | None:
    """Words for ours = f * reference with f positive but different per element: what a
    wrong local (activation) derivative does to a delta, while a wrong matrix mixes signs."""
    ours, ref = values.get("ours"), values.get("reference")
    if ours is None or ref is None or np.shape(ours) != np.shape(ref):
        return None
    keep = np.abs(ref) > 1e-9 * np.abs(ref).max()
    if keep.sum() < 2:
        return None
    ratio = ours[keep] / ref[keep]
    low, high = float(ratio.min()), float(ratio.max())
    if low <= 0 or high < 1.01 * low:
        return None
    return (
        f"ours / reference is positive everywhere but varies element by element (from {low:.3g} "
        f"to {high:.3g}): a per-element factor is off, as with a wrong activation derivative"
    )


def _tap_finding(row: Row, backward: bool, before: str | None, values: dict) -> Finding:
    found = finding_from_row(row, "chain")
    factor = _per_element_factor(values) if backward and row.diagnosis == "unexplained" else None
    if factor is not None:
        found.problem = f"{factor}; {found.problem}"
        found.fix = (
            "check the local derivative this delta is multiplied by (sigmoid: s * (1 - s) of "
            "this layer's z; tanh: 1 - tanh(z)**2; ReLU: z > 0)"
        )
    order = "backward" if backward else "forward"
    kind = "gradient tap" if backward else "forward tap"
    if row.type == "loss":
        agree = f"the forward taps up to {before} agree, so " if before else ""
        found.problem += (
            f"; {agree}loss_fn and the reference's loss compute different costs (the batch "
            "reduction, a 0.5 factor, a penalty term)"
        )
        found.fix = "make loss_fn and reference_loss compute the same cost"
    elif before is None:
        where = (
            "the cost derivative or the output layer's delta"
            if backward
            else "the first layer's lines"
        )
        found.problem += f"; the first {kind} in {order} order already diverges: look at {where}"
    else:
        found.problem += (
            f"; the first {kind} to diverge in {order} order, while {before} before it agrees: "
            f"the bug is in the lines that compute {row.layer} from {before}"
        )
    found.message = f"{place(row.layer, row.quantity)}: {found.problem}" + (
        f"; {found.fix}" if found.fix else ""
    )
    return found


def _batch_convention(
    backward: list[Row], param_rows: list[Row], arrays: dict, tol: Tolerance
) -> str | None:
    """Accept gradient taps that are exactly N times dL/d(output), the deltas of code that
    applies the 1/N of a mean loss in dW and db instead, when that convention is vouched for:
    some such tap's module owns weights (else any parameter; all parameters, for a module
    without one) whose gradients all agree. A bias off by N then gets the advice for this
    convention. A note when any tap was accepted."""
    candidates = []
    for row in backward:
        if row.diagnosis != BATCH_REDUCTION or row.ours_reduction != "sum":
            continue
        n = row.batch_size
        values = arrays[(row.layer, row.quantity)]
        d = tensor_diff(values["ours"], values["reference"] * n, tol)
        if d.ok:
            candidates.append((row, n, d))

    def owned(row: Row) -> list[Row]:
        module = row.module
        mine = [
            r for r in param_rows
            if (r.reference_parameter or "").rpartition(".")[0] == module
        ]  # fmt: skip
        weights = [r for r in mine if len(r.shape_ref or []) >= 2]
        return weights or mine or param_rows

    vouched = any(
        owned(row) and not any(r.diverged for r in owned(row)) for row, _, _ in candidates
    )
    if not vouched:
        return None
    for row, n, d in candidates:
        row.status, row.diagnosis, row.message, row.fix = Status.OK, None, "", ""
        row.max_abs, row.max_rel, row.cosine, row.mismatch_frac = (
            d.max_abs,
            d.max_rel,
            d.cosine,
            d.mismatch_frac,
        )
        row.detail = {"batch_convention": n}
    for row in param_rows:
        if row.diagnosis == BATCH_REDUCTION and row.ours_reduction == "sum":
            row.fix = (
                f"divide it by the batch size ({row.batch_size}) as the weight "
                "gradients are: the deltas here carry no 1/N (with examples as columns, "
                "db = dZ.sum(axis=1, keepdims=True) / m)"
            )
    return (
        f"gradient taps {[r.layer for r, _, _ in candidates]} hold {candidates[0][1]} (the batch "
        "size) times dL/d(output): the deltas carry no 1/N, which is applied in the weight and "
        f"bias gradients instead (as in dW = dZ @ A.T / m); they were compared with the "
        f"reference's times {candidates[0][1]}"
    )


def _between(
    sites: dict[str, tuple[str, int]],
    before: str | None,
    tap: str,
    whole: Callable[[], dict | None],
) -> dict | None:
    """The lines between the agreeing tap ``before`` and the diverging ``tap`` (from the
    function's first line when no tap agrees); the function's own lines (``whole()``, read
    only here) when the tap's site is unknown."""
    site = sites.get(tap)
    if site is None or not os.path.isfile(site[0]):  # unknown, or code compiled from a string
        return whole()
    file, line = site
    start = sites.get(before) if before is not None else None
    if start is not None and start[0] == file:
        return source_span(file, min(start[1], line), max(start[1], line))
    lines = whole() if start is None else None
    if lines is not None and source_span(file, line)["file"] == lines["file"]:
        return source_span(file, min(lines["first_line"], line), line)
    return source_span(file, line)


def _tap_roots(
    forward: list[Row],
    backward: list[Row],
    arrays: dict,
    sites: dict[str, tuple[str, int]] | None = None,
    whole: Callable[[], dict | None] = lambda: None,
    grad_sites: dict[str, tuple[str, int]] | None = None,
) -> list[Finding]:
    """The chain of taps (forward, loss, then gradients): the first divergence is the root
    cause, the later ones ``inherited``; statuses set in place. A tap's root cause gets the
    lines between the bracketing taps (``sites``: tap name -> call site; ``grad_sites``:
    those of gradient taps, where they have their own names, ``gp.tap(..., grad=True)``)."""
    roots: list[Finding] = []
    agreeing: dict[bool, str | None] = {False: None, True: None}
    for row in forward + backward:
        is_backward = row.quantity != "output"
        if not row.diverged:
            agreeing[is_backward] = row.layer
        elif roots:
            row.status = Status.INHERITED
        else:
            row.status = Status.ROOT_CAUSE
            values = arrays.get((row.layer, row.quantity), {})
            found = _tap_finding(row, is_backward, agreeing[is_backward], values)
            if row.type != "loss":
                at = (grad_sites or sites) if is_backward else sites
                found.source = _between(at or {}, agreeing[is_backward], row.layer, whole)
            roots.append(found)
    return roots


def _finding_at(row: Row | None, findings: list[Finding]) -> Finding | None:
    """The finding ``row`` heads, if any."""
    at = None if row is None else (row.layer, row.quantity)
    return next((f for f in findings if (f.layer, f.quantity) == at), None)


def _param_roots(
    diverging: list[Row],
    param_rows: list[Row],
    forward: list[Row],
    backward: list[Row],
    tap_roots: list[Finding],
    depth: dict[str, int],
    by_name: bool = False,
) -> tuple[list[Finding], str | None]:
    """(root causes, a note naming the deepest): the diverging gradients grouped per layer
    (``locate.function_groups``), after a root cause in ``forward`` (forward taps and the
    loss) or among the gradient taps ``backward``, if any; statuses set in place.
    ``by_name``: taps pair by name (autodiff), which the advice says."""
    layers = per_layer(diverging, depth)
    forward_root = _finding_at(
        next((r for r in forward if r.status == Status.ROOT_CAUSE), None), tap_roots
    )
    if forward_root is not None:
        roots = forward_rooted(layers, forward_root)
    elif backward:
        root_tap = next((r for r in backward if r.status == Status.ROOT_CAUSE), None)
        roots = tapped_roots(layers, backward, _finding_at(root_tap, tap_roots))
    else:
        roots = untapped_roots(layers, param_rows, depth, by_name)
    if not layers:
        return roots, None
    names = [param_name(r) for r in layers[0].rows]
    reach = any(r.status == Status.ROOT_CAUSE for r in backward)
    return roots, (
        f"deepest diverging parameter(s), closest to the output: {', '.join(names)}"
        + ("; their gradients follow from the gradient tap named above" if reach else "")
    )


def _tap_notes(
    run: UserRun, mapped: set[str], has_reference: bool, diverging: bool, any_gradient_tap: bool
) -> tuple[list[dict], list[str]]:
    """(unmapped taps as {"name", "shape"}, notes about taps)."""
    unmapped = [{"name": t, "shape": list(v.shape)} for t, v in run.taps.items() if t not in mapped]
    notes = []
    if unmapped:
        listed = ", ".join(f"{u['name']} {tuple(u['shape'])}" for u in unmapped[:30])
        how = (
            "pair them with tap_map={name: 'MODULE' or 'grad:MODULE'}"
            if has_reference
            else "taps are compared only with a reference model"
        )
        notes.append(f"unmapped taps ({how}): {listed}" + (" ..." if len(unmapped) > 30 else ""))
    if diverging and not any_gradient_tap and has_reference:
        notes.append(
            "to narrow a gradient bug down to a few lines, tap the deltas "
            "(gp.tap('delta', delta)) and map them to 'grad:MODULE' in tap_map"
        )
    return unmapped, notes


def _first(rows: list[Row]) -> dict | None:
    return next(({"layer": r.layer, "quantity": r.quantity} for r in rows if r.diverged), None)


@dataclass
class FunctionLocator:
    """The locator of a function comparison: statuses, root causes, notes, warnings, the
    first divergence and the unmapped taps. Reads the rows in the pairing's order (forward
    taps and the loss, gradient taps in backward order, parameters deepest first), ours'
    ``run`` and the parameters' ``depth`` (name -> position towards the output)."""

    fn: str
    mapped: set[str]  # the taps tap_map names
    has_reference: bool
    code: Any = field(default=None, compare=False)  # the user's function, for source lines
    by_name: bool = False  # taps pair by name (the autodiff reference), with no tap_map

    def __call__(self, ctx: Context) -> None:
        run: UserRun = ctx.captures["run"]
        depth: dict[str, int] = ctx.captures["depth"]
        forward = [r for r in ctx.rows if r.type == "loss" or _is_tap(r, backward=False)]
        backward = [r for r in ctx.rows if _is_tap(r, backward=True)]
        param_rows = [r for r in ctx.rows if r.type == "parameter"]
        roots: list[Finding] = []
        if run.error is not None:
            threw = raised(self.fn, run.error, "chain", of="function")
            ctx.rows.insert(0, raised_row(threw))
            roots.append(threw)
            ctx.notes.append(f"{self.fn} raised, so no gradient could be compared")
        convention = _batch_convention(backward, param_rows, ctx.arrays, ctx.tolerance)
        if convention is not None:
            ctx.notes.append(convention)
        whole = _lazy_source(self.code)
        roots += _tap_roots(forward, backward, ctx.arrays, run.tap_sites, whole, run.grad_tap_sites)
        diverging = [r for r in param_rows if r.diverged]
        param_found, deepest_note = _param_roots(
            diverging, param_rows, forward, backward, roots, depth, self.by_name
        )
        roots += param_found
        ctx.notes += [deepest_note] if deepest_note else []
        # A function that changes its inputs invalidates what follows: say so first.
        params = frozenset(depth)
        roots[:0] = [
            mutation(self.fn, what, "chain", of="function", params=params) for what in run.mutated
        ]
        unmapped, tap_notes = _tap_notes(
            run, self.mapped, self.has_reference and not self.by_name, bool(diverging),
            bool(backward) or self.by_name,
        )  # fmt: skip
        for found in roots:
            if found.source is None and found.layer not in run.tap_sites:
                found.source = _assigning(self.code, found) or whole()
        ctx.root_causes += roots
        ctx.notes += tap_notes
        # Aliased gradients, and gradients whose shape only an update's broadcast accepts.
        ctx.warnings += [aliased(self.fn, a, "chain", of="function") for a in run.aliases]
        ctx.warnings += [
            gradient_shape(self.fn, r.quantity, r.mode, compared=r)
            for r in param_rows
            if r.broadcasts
        ]
        ctx.fields["first_divergence"] = {
            "forward": _first(forward),
            "backward": _first(backward + diverging),
        }
        ctx.fields["unmapped_taps"] = unmapped


def _lazy_source(code: Any) -> Callable[[], dict | None]:
    """The function's own lines (``source_of``), read at the first call only: reading and
    tokenizing the source costs milliseconds, and only a root cause without a closer line
    (a tap's site, the statement assigning a gradient) needs them."""
    return functools.cache(lambda: None if code is None else source_of(code))


def _assigning(code: Any, found: Finding) -> dict | None:
    """The statement of the user's function that assigns a diverging parameter gradient."""
    if code is None or not found.quantity.startswith("grad:"):
        return None
    return assignment_of(code, found.quantity.removeprefix("grad:"))


def _is_tap(row: Row, backward: bool) -> bool:
    return row.type == "tap" and (row.quantity != "output") == backward
