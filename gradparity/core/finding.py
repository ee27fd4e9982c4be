"""``Finding``: a place to fix, as report.json lists it under root causes and warnings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from gradparity.core.address import place
from gradparity.core.row import Row


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
    # Where to read in the user's code: {"file", "first_line", "last_line"} (core.source);
    # None for code without source. report.json leaves it out when None.
    source: dict | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        if out["source"] is None:
            del out["source"]
        return out


def finding_detail(row: Row) -> dict:
    """What a finding made from ``row`` shows as ``detail``: the row's own numbers, the
    reference's names for the place (a tap's module, a parameter) and the error statistics."""
    detail = dict(row.detail)
    if row.module is not None:
        detail["module"], detail["module_index"] = row.module, row.module_index
    if row.reference_parameter is not None:
        detail["reference_parameter"] = row.reference_parameter
    if row.max_abs is not None:
        detail.setdefault("max_abs", row.max_abs)
        detail.setdefault("mismatch_frac", row.mismatch_frac)
    return detail


def finding_from_row(row: Row, mode: str) -> Finding:
    """The finding a diverging row reports, found in ``mode`` ("isolate" or "chain")."""
    text = row.message or "values differ from the reference"
    fix = f"; {row.fix}" if row.fix else ""
    return Finding(
        row.layer,
        row.quantity,
        row.diagnosis or "unexplained",
        finding_detail(row),
        f"{place(row.layer, row.quantity)}: {text}{fix}",
        mode,
        problem=text,
        fix=row.fix,
    )
