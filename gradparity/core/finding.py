"""``Finding``: a place to fix, as report.json lists it under root causes and warnings."""

from __future__ import annotations

from collections.abc import Sequence
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
    # The other diverging quantities this finding stands for (``quantity_entry``): the same
    # layer's or tap span's, and those possibly inherited from it. report.json leaves it out
    # when empty.
    quantities: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = asdict(self)
        if out["source"] is None:
            del out["source"]
        if not out["quantities"]:
            del out["quantities"]
        return out

    def listed(self, relation: str) -> list[dict]:
        """The listed quantities with ``relation`` (see ``RELATIONS``)."""
        return [q for q in self.quantities if q.get("relation", SAME_PLACE) == relation]


# How a listed quantity relates to its finding's headline: diverging at the same place (layer
# or tap span), differing only because ours' forward does (the referee's verdict), or diverging
# nearer the input than the headline, so possibly only because of it.
SAME_PLACE, FOLLOWS_FORWARD, POSSIBLY_INHERITED = (
    "same_place",
    "follows_forward",
    "possibly_inherited",
)
RELATIONS = {
    SAME_PLACE: "also",
    FOLLOWS_FORWARD: "following the forward",
    POSSIBLY_INHERITED: "possibly inherited",
}


def quantity_entry(row: Row, relation: str = SAME_PLACE) -> dict:
    """How a finding lists another diverging quantity: its place, label, error statistics and
    ``relation`` to the headline (one of ``RELATIONS``)."""
    return {
        "layer": row.layer,
        "quantity": row.quantity,
        "diagnosis": row.diagnosis or "unexplained",
        "relation": relation,
        "max_abs": row.max_abs,
        "max_rel": row.max_rel,
        "mismatch_frac": row.mismatch_frac,
    }


def listed_place(entry: dict, headline_layer: str) -> str:
    """A listed quantity's place, the layer left out when it is the headline's."""
    if entry["layer"] == headline_layer:
        return entry["quantity"]
    return place(entry["layer"], entry["quantity"])


def also_line(found: Finding) -> str:
    """The renderers' line after a finding's message: "also: grad:W (scaled), grad:b
    (unexplained)", then those following the forward and the possibly inherited ones; "" when
    it lists nothing."""
    parts = []
    for relation, words in RELATIONS.items():
        entries = found.listed(relation)
        if entries:
            listed = ", ".join(
                f"{listed_place(q, found.layer)} ({q['diagnosis']})" for q in entries
            )
            parts.append(f"{words}: {listed}")
    return "; ".join(parts)


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


def group_finding(rows: list[Row], mode: str, following: Sequence[Row] = ()) -> Finding:
    """One finding for ``rows``, the diverging quantities of one layer or tap span: the
    first row is the headline, the others are listed in ``quantities``, then ``following``
    (rows that differ only because ours' forward does)."""
    found = finding_from_row(rows[0], mode)
    found.quantities = [quantity_entry(r) for r in rows[1:]]
    found.quantities += [quantity_entry(r, FOLLOWS_FORWARD) for r in following]
    return found


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
