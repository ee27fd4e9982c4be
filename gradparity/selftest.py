"""Run the known-bug corpus: inject each bug, compare against the torch mirror, and score
whether gradparity found it at the right place (localized) with the right label (diagnosed)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from gradparity.api import compare
from gradparity.bugs import BUGS, Bug
from gradparity.reference import mirror, mirror_loss
from gradparity.report import Report


@dataclass
class BugResult:
    """What one injected bug produced, in the ``--format json`` schema."""

    name: str
    layer: str
    quantity: str
    expected_diagnosis: str
    found: list[dict] = field(default_factory=list)
    localized: bool = False
    diagnosed: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def compare_setup(model, loss, x, target, seed: int = 0, name: str | None = None) -> Report:
    """``compare`` of an ours model against its torch mirror, with the mirrored loss."""
    return compare(
        model,
        mirror(model),
        x,
        target,
        ours_loss=loss,
        reference_loss=mirror_loss(loss),
        seed=seed,
        name=name,
    )


def run_bug(bug: Bug, seed: int = 0) -> BugResult:
    """Localized: the expected (layer, quantity) is a root cause and no other layer is blamed.
    Diagnosed: that root cause carries the expected label."""
    model, loss, x, target = bug.build(seed)
    report = compare_setup(model, loss, x, target, seed=seed, name=bug.name)
    found = [
        {"layer": f.layer, "quantity": f.quantity, "diagnosis": f.diagnosis, "message": f.message}
        for f in report.root_causes
    ]
    hits = [f for f in found if (f["layer"], f["quantity"]) == (bug.layer, bug.quantity)]
    localized = bool(hits) and all(f["layer"] == bug.layer for f in found)
    diagnosed = any(f["diagnosis"] == bug.diagnosis for f in hits)
    return BugResult(bug.name, bug.layer, bug.quantity, bug.diagnosis, found, localized, diagnosed)


def run_corpus(names: list[str] | None = None, seed: int = 0) -> list[BugResult]:
    """Every bug of the corpus (or the named ones); unknown names raise KeyError."""
    by_name = {b.name: b for b in BUGS}
    unknown = [n for n in names or [] if n not in by_name]
    if unknown:
        raise KeyError(f"unknown bug(s) {unknown}; choose from {', '.join(by_name)}")
    return [run_bug(by_name[n], seed) for n in names or by_name]


def format_table(results: list[BugResult]) -> str:
    """Plain-text table: bug, expected, found, localized, diagnosed; totals last."""
    header = ("bug", "expected", "found", "localized", "diagnosed")
    lines = []
    for r in results:
        found = ", ".join(f"{f['layer']} {f['quantity']} [{f['diagnosis']}]" for f in r.found)
        lines.append(
            (
                r.name,
                f"{r.layer} {r.quantity} [{r.expected_diagnosis}]",
                found or "-",
                "yes" if r.localized else "NO",
                "yes" if r.diagnosed else "no",
            )
        )
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    text = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *lines]
    ]
    n = len(results)
    loc = sum(r.localized for r in results)
    diag = sum(r.diagnosed for r in results)
    text.append(
        f"\n{n} bugs: {loc} localized ({100 * loc / n:.0f}%), "
        f"{diag} diagnosed ({100 * diag / n:.0f}%)"
    )
    return "\n".join(text)
