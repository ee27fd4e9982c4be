"""Locate stage for the minor tier: findings whose every row is minor move from the root causes
to ``ctx.fields["minor"]`` (listed after root causes; ``ok`` stays True unless strict), and
their rows get the status ``minor``.

Two kinds of minor: a difference small against the tensor's scale (``evidence.minor``), and a
difference with no effect: a tap (``compare_function``) or a layer's isolated input gradient
(``compare``) that differs while everything downstream of it and every parameter gradient
agrees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gradparity.core.finding import POSSIBLY_INHERITED, Finding, finding_from_row
from gradparity.core.labels import NO_EFFECT, UNEXPLAINED
from gradparity.core.row import Row
from gradparity.core.status import Status
from gradparity.evidence.minor import is_minor, mark_generic, small_difference, uneven

if TYPE_CHECKING:
    from gradparity.core.plan import Context

NO_EFFECT_WORDS = "no effect on the gradients"


def _rows_of(finding: Finding, rows: list[Row]) -> list[Row]:
    """The diverging rows ``finding`` stands for: its layer's rows of its mode that are root
    causes (or its own row, for a chain finding), one quantity or a layer's group."""
    quantities = [finding.quantity] + [
        q["quantity"] for q in finding.quantities if q.get("relation") != POSSIBLY_INHERITED
    ]
    return [
        r
        for r in rows
        if r.layer == finding.layer
        and r.mode == finding.mode
        and r.quantity in quantities
        and r.diverged
        and r.status != Status.INHERITED
    ]


def _minor_finding(finding: Finding, own: list[Row]) -> Finding:
    """``finding`` rebuilt from its (now minor) first row, keeping its source and quantities."""
    rebuilt = finding_from_row(own[0], finding.mode)
    rebuilt.source, rebuilt.step = finding.source, finding.step
    rebuilt.quantities = finding.quantities
    return rebuilt


def separate_minor(ctx: Context) -> None:
    """Move each root cause whose rows are all minor to ``ctx.fields["minor"]``; a row not yet
    judged that is small, smooth and uneven gets the generic epsilon hint here
    (``small_difference``, ``uneven``), so every pipeline has the tier. Rows at the same place
    in other modes follow."""
    minor: list[Finding] = ctx.fields.setdefault("minor", [])
    kept: list[Finding] = []
    for finding in ctx.root_causes:
        own = _rows_of(finding, ctx.rows)
        for row in own:
            rel = None if is_minor(row) else small_difference(row, ctx.tolerance)
            if rel is not None and uneven(row, rel):
                mark_generic(row, rel)
        if not own or not all(is_minor(r) for r in own):
            kept.append(finding)
            continue
        labels = {(r.layer, r.quantity): r.diagnosis for r in own}
        for row in ctx.rows:
            if (row.layer, row.quantity) in labels and row.status == Status.ROOT_CAUSE:
                row.status, row.diagnosis = Status.MINOR, labels[(row.layer, row.quantity)]
        for row in own:
            row.status = Status.MINOR
        minor.append(_minor_finding(finding, own))
    ctx.root_causes[:] = kept


def _no_effect(row: Row) -> None:
    """Mark ``row`` minor for having no effect: label ``no_effect`` unless it has a more
    specific one, whose message then says so."""
    row.detail["minor"] = {"no_effect": True}
    if row.diagnosis in (None, UNEXPLAINED):
        row.diagnosis = NO_EFFECT
        row.message = (
            f"differs here, but what follows and every parameter gradient agree: {NO_EFFECT_WORDS}"
        )
        row.fix = "nothing to fix for these gradients; check the code if this value is used"
    else:
        row.message = f"{row.message}; {NO_EFFECT_WORDS}"


def tap_without_effect(ctx: Context) -> None:
    """``compare_function``: a tap root cause whose next tap (same direction) agrees while
    every parameter gradient agrees is minor (runs before ``separate_minor``)."""
    params = [r for r in ctx.rows if r.type == "parameter"]
    if not params or any(r.diverged for r in params):
        return
    taps = [r for r in ctx.rows if r.type == "tap"]
    for i, row in enumerate(taps):
        if row.status != Status.ROOT_CAUSE:
            continue
        backward = row.quantity != "output"
        later = [r for r in taps[i + 1 :] if (r.quantity != "output") == backward]
        if later and not later[0].diverged:
            _no_effect(row)


def layer_without_effect(ctx: Context) -> None:
    """``compare``: a layer's isolated input gradient that diverges while, in the chain, the
    input gradient of the layer below it and every parameter gradient agree is minor (runs
    before ``separate_minor``): whatever differs is blocked before it reaches a parameter, as
    a ReLU blocks a pool's gradient at tied zeros. A first layer is never judged so: its input
    gradient reaches no layer that could show the effect."""
    chain = ctx.rows_of("chain")
    if any(r.diverged for r in chain if r.quantity.startswith("grad:")):
        return
    order = list(dict.fromkeys(r.layer for r in chain if r.layer != "loss"))
    input_grads = {r.layer: r for r in chain if r.quantity == "grad_input"}
    for row in ctx.rows_of("isolate"):
        if row.status != Status.ROOT_CAUSE or row.quantity != "grad_input":
            continue
        at = order.index(row.layer) if row.layer in order else 0
        below = input_grads.get(order[at - 1]) if at > 0 else None
        if below is not None and not below.diverged:
            _no_effect(row)
