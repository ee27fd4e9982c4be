"""Several models' reports as one: the command line checks more than one model at a time."""

from __future__ import annotations

from gradparity.core.finding import Finding
from gradparity.core.row import Row
from gradparity.report.report import Report


def merge_reports(reports: list[Report]) -> Report:
    """One report over several models: layer names become "model/layer"."""
    rows: list[Row] = []
    roots: list[Finding] = []
    warnings: list[Finding] = []
    minor: list[Finding] = []
    for rep in reports:
        prefix = f"{rep.meta.get('model', 'model')}/"
        for r in rep.rows:
            rows.append(Row(**{**r.as_dict(), "layer": prefix + r.layer}))
        for bucket, found in (
            (roots, rep.root_causes),
            (warnings, rep.warnings),
            (minor, rep.minor),
        ):
            bucket += [Finding(**{**f.as_dict(), "layer": prefix + f.layer}) for f in found]
    arrays = {
        (f"{rep.meta.get('model', 'model')}/{layer}", quantity): values
        for rep in reports
        for (layer, quantity), values in rep.arrays.items()
    }
    first = reports[0]
    return Report(
        parts=list(reports),
        arrays=arrays,
        dtype=first.dtype,
        tolerance=first.tolerance,
        rows=rows,
        root_causes=roots,
        warnings=warnings,
        minor=minor,
        strict=any(r.strict for r in reports),
        conversions=[c for rep in reports for c in rep.conversions],
        notes=[n for rep in reports for n in rep.notes],
        meta={
            "model": "+".join(r.meta.get("model", "model") for r in reports),
            **{k: v for k, v in first.meta.items() if k != "model"},
        },
    )
