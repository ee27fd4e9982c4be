"""The rows of a function comparison's taps: each ``gp.tap`` value against the reference
module's output (or dL/d(output)) it is mapped to, brought into ours' layout first. A tap
holding something other than real numbers (complex values, text) is a ``raised`` row."""

from __future__ import annotations

import numpy as np

from gradparity.comparison.diff import compare_tensor, failed_row
from gradparity.core.address import Kind
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.pairing.function_align import tap_conversion
from gradparity.reference.layout import to_ours_layout
from gradparity.sides.function_run import ReferenceRun, UserRun


def aligned_tap(ours: np.ndarray, ref: np.ndarray, columns: bool) -> np.ndarray | None:
    """The reference's value in the layout of ours' tap; None when no layout fits."""
    conversion = tap_conversion(ours.shape, ref.shape, columns)
    return None if conversion is None else to_ours_layout(ref, conversion, ours.shape)


def tap_rows(
    tap_specs: dict[str, tuple[str, str, int | None]],
    run: UserRun,
    ref: ReferenceRun,
    tol: Tolerance,
    *,
    columns: bool,
    batch: int,
    order: dict[str, int],
    arrays: dict[tuple[str, str], dict[str, np.ndarray]],
) -> tuple[list[Row], list[Row]]:
    """(forward taps in forward order, gradient taps in backward order); the values behind
    each compared row go into ``arrays``. ``order``: the reference's module -> position."""
    fwd: list[tuple[tuple[int, int], Row]] = []  # ((module position, call), row), to sort
    bwd: list[tuple[tuple[int, int], Row]] = []
    for tap, (kind, module, call) in tap_specs.items():
        if tap in run.bad_taps:  # complex or text: a finding, never compared as real
            row = failed_row("chain", tap, "tap", {**run.bad_taps[tap], "quantity": kind})
        elif tap not in run.taps:  # grads raised before reaching it
            continue
        else:
            ours, theirs = run.taps[tap], ref.taps[tap]
            conversion = tap_conversion(ours.shape, theirs.shape, columns)
            aligned = aligned_tap(ours, theirs, columns)
            aligned = theirs if aligned is None else aligned
            row = compare_tensor("chain", tap, "tap", kind, ours, aligned, tol, batch_size=batch)
            arrays[(tap, kind)] = {"ours": ours, "reference": aligned}
            what = "output" if kind == Kind.OUTPUT else "dL/d(output)"
            where = module if call is None else f"{module}@{call}"
            row.conversion = f"{where} {what} {theirs.shape}: {conversion or 'no layout fits'}"
        row.module, row.module_index = module, order[module]
        (fwd if kind == Kind.OUTPUT else bwd).append(((order[module], call or 0), row))
    fwd.sort(key=lambda t: t[0])
    bwd.sort(key=lambda t: t[0], reverse=True)
    return [r for _, r in fwd], [r for _, r in bwd]
