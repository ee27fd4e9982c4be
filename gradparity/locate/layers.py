"""Locate stage: row statuses and root causes.

A root cause is a layer quantity that diverges in isolation (the layer was fed the reference's
exact input and upstream gradient). In the chain run, a divergence at a root cause keeps that
status, one that follows an earlier divergence is ``inherited``, and the first divergence with
no root cause behind it stays ``diverged`` and is reported as a chain finding. An isolated
gradient that the referee finds consistent with ours' own diverging forward is ``inherited``
from that forward, not a second root cause.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type hints only: gradparity.comparison.diff loads torch
    from gradparity.comparison.diff import Row
    from gradparity.engine.plan import Context


@dataclass
class Finding:
    """A place to fix: which layer and quantity, what is wrong (label + numbers), and advice."""

    layer: str
    quantity: str
    diagnosis: str
    detail: dict = field(default_factory=dict)
    message: str = ""
    mode: str = "isolate"
    step: int | None = None
    problem: str = ""  # the message's "what is wrong" part, without place and fix
    fix: str = ""  # the message's advice part

    def as_dict(self) -> dict:
        return asdict(self)


def place(layer: str, quantity: str) -> str:
    """How a person names a quantity: "fc2.b" for grad:b, "fc2.b update" for param:b,
    "fc2.W exp_avg" for state:W.exp_avg, "fc2 output" otherwise."""
    kind, _, name = quantity.partition(":")
    if kind == "grad":
        return f"{layer}.{name}"
    if kind == "param":
        return f"{layer}.{name} update"
    if kind == "state":
        return f"{layer}.{name.replace('.', ' ', 1)}"
    return f"{layer} {quantity}"


def finding_from_row(row: Row, mode: str) -> Finding:
    text = row.message or "values differ from the reference"
    fix = f"; {row.fix}" if row.fix else ""
    detail = dict(row.detail)
    if row.max_abs is not None:
        detail.setdefault("max_abs", row.max_abs)
        detail.setdefault("mismatch_frac", row.mismatch_frac)
    return Finding(
        row.layer,
        row.quantity,
        row.diagnosis or "unexplained",
        detail,
        f"{place(row.layer, row.quantity)}: {text}{fix}",
        mode,
        problem=text,
        fix=row.fix,
    )


def locate(chain_rows: list[Row], isolate_rows: list[Row]) -> list[Finding]:
    """Set every row's status (in place) and return the root causes.

    chain_rows must be in propagation order: outputs in forward order, then gradients in
    backward order (loss first).
    """
    roots: list[Finding] = []
    blamed = set()
    for row in isolate_rows:
        if row.diverged and row.detail.get("follows_forward"):
            row.status = "inherited"  # consistent with ours' own (diverging) forward
        elif row.diverged:
            row.status = "root_cause"
            blamed.add((row.layer, row.quantity))
            roots.append(finding_from_row(row, "isolate"))
    upstream_diverged = False
    for row in chain_rows:
        if not row.diverged:
            continue
        if (row.layer, row.quantity) in blamed:
            row.status = "root_cause"
        elif upstream_diverged:
            row.status = "inherited"
        else:
            row.status = "diverged"
            if not isolate_rows or not blamed:
                roots.append(finding_from_row(row, "chain"))
        upstream_diverged = True
    return roots


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
