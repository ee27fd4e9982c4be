"""Locate stage: row statuses and root causes.

A root cause is a layer quantity that diverges in isolation (the layer was fed the reference's
exact input and upstream gradient). In the chain run, a divergence at a root cause keeps that
status, one that follows an earlier divergence is ``inherited``, and the first divergence with
no root cause behind it stays ``diverged`` and is reported as a chain finding. An isolated
gradient that the referee finds consistent with ours' own diverging forward is ``inherited``
from that forward, not a second root cause; so is an isolated gradient of a layer whose forward
output has another shape than the reference's (``locate.forward_shapes``). A layer is one root
cause however many of its quantities diverge: its forward ``output`` if that diverges, else its
first diverging quantity, with the others listed. Inside a tree the innermost module wrong in
isolation is the root cause: a container (``block1``) whose child (``block1.fc1``) is blamed
inherits its divergence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gradparity.core.address import GRADIENT_KINDS, kind_of
from gradparity.core.finding import Finding, finding_from_row, group_finding
from gradparity.core.row import Row
from gradparity.core.source import source_of
from gradparity.core.status import Status
from gradparity.locate.forward_shapes import forward_shape_mismatches, inherit_from_forward_shape
from gradparity.pairing.tree import inner_root

if TYPE_CHECKING:
    from gradparity.core.plan import Context


def locate(chain_rows: list[Row], isolate_rows: list[Row]) -> list[Finding]:
    """Set every row's status (in place) and return the root causes.

    chain_rows must be in propagation order: outputs in forward order, then gradients in
    backward order (loss first).
    """
    roots: list[Finding] = []
    blamed = set()
    per_layer: dict[str, list[Row]] = {}
    following: dict[str, list[Row]] = {}
    misshaped = forward_shape_mismatches(isolate_rows)
    for row in isolate_rows:
        if row.diverged and row.layer in misshaped and kind_of(row.quantity) in GRADIENT_KINDS:
            inherit_from_forward_shape(row, misshaped[row.layer])
            following.setdefault(row.layer, []).append(row)
        elif row.diverged and row.follows_forward:
            row.status = Status.INHERITED  # consistent with ours' own (diverging) forward
            following.setdefault(row.layer, []).append(row)
        elif row.diverged:
            row.status = Status.ROOT_CAUSE
            blamed.add((row.layer, row.quantity))
            per_layer.setdefault(row.layer, []).append(row)
    for container in [layer for layer in per_layer if inner_root(layer, set(per_layer))]:
        for row in per_layer.pop(container):  # the innermost wrong module is the root cause
            row.status = Status.INHERITED
            blamed.discard((row.layer, row.quantity))
    roots += [
        group_finding(_headline_first(rows), "isolate", following.get(layer, []))
        for layer, rows in per_layer.items()
    ]
    upstream_diverged = False
    for row in chain_rows:
        if not row.diverged:
            continue
        if (row.layer, row.quantity) in blamed:
            row.status = Status.ROOT_CAUSE
        elif upstream_diverged:
            row.status = Status.INHERITED
        else:
            row.status = Status.DIVERGED
            if not isolate_rows or not blamed:
                roots.append(finding_from_row(row, "chain"))
        upstream_diverged = True
    return roots


def _headline_first(rows: list[Row]) -> list[Row]:
    """A layer's diverging rows, its forward output first (a forward bug explains the rest
    more often than not), the others in their order."""
    return sorted(rows, key=lambda r: r.quantity != "output")


def first_divergence(chain_rows: list[Row]) -> dict:
    """The first diverging output (forward order) and gradient (backward order) of the chain."""
    found: dict = {"forward": None, "backward": None}
    for row in chain_rows:
        kind = "forward" if row.quantity == "output" else "backward"
        if row.diverged and found[kind] is None:
            found[kind] = {"layer": row.layer, "quantity": row.quantity}
    return found


def locate_layers(ctx: Context) -> None:
    """The locator of ``compare``: statuses of the chain and isolate rows, their root causes,
    and the chain's first divergence."""
    chain = ctx.rows_of("chain")
    ctx.root_causes += locate(chain, ctx.rows_of("isolate"))
    ctx.fields["first_divergence"] = first_divergence(chain)


def source_locator(
    layers: dict[str, Any], code: Callable[[Any, str], Any]
) -> Callable[[Context], None]:
    """A locator giving each root cause of a layer in ``layers`` (name -> ours' layer) the
    source of the code behind its quantity (``code(layer, quantity)``): backward for a
    gradient, forward for an output."""

    def add_sources(ctx: Context) -> None:
        for found in ctx.root_causes:
            layer = layers.get(found.layer)
            if layer is not None and found.source is None:
                found.source = source_of(code(layer, found.quantity))

    return add_sources
