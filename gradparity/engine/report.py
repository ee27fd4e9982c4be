"""``build_report``: the one place a ``Report`` is built, with the same meta block for every
report."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gradparity import __version__
from gradparity.core.plan import Context
from gradparity.report.report import Report

# The keys every report's meta starts and ends with (``meta_block`` fills them).
COMMON_META = ("model", "seed", "batch_size", "dtype", "gradparity", "numpy", "torch")


def meta_block(
    name: str, seed: int, batch_size: int | None, dtype: str, extra: dict[str, Any]
) -> dict[str, Any]:
    """What every report says about its run: the model, seed, batch size and dtype, then what
    the front end adds, then the versions of the software that ran it (last: a reader compares
    the results above them)."""
    return {
        "model": name,
        "seed": seed,
        "batch_size": batch_size,
        "dtype": dtype,
        **extra,
        "gradparity": __version__,
        "numpy": np.__version__,
        "torch": torch.__version__,
    }


def build_report(ctx: Context) -> Report:
    """The report of a run, of the plan's ``report_type``: the rows, root causes, warnings and
    notes the stages left in ``ctx``; arrays kept only for the places of root causes (they feed
    the plots)."""
    plan = ctx.plan
    blamed = {(f.layer, f.quantity) for f in ctx.root_causes}
    report_type = plan.report_type or Report
    report: Report = report_type(
        dtype=plan.dtype,
        tolerance=plan.tolerance,
        rows=ctx.rows,
        root_causes=ctx.root_causes,
        warnings=ctx.warnings,
        notes=ctx.notes,
        arrays={place: values for place, values in ctx.arrays.items() if place in blamed},
        meta=meta_block(plan.name, plan.seed, plan.batch_size, plan.dtype, plan.meta),
        **{**plan.fields, **ctx.fields},
    )
    return report
