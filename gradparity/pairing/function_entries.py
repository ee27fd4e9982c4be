"""The pairing step of ``compare_function``: each mapped ``gp.tap`` value against the
reference module's output (or dL/d(output)), ours' loss against the reference's, and each
parameter gradient against the reference's, all in ours' layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradparity.comparison.diff import failed_row
from gradparity.comparison.function_taps import aligned_tap
from gradparity.core.address import Address, Kind
from gradparity.core.plan import Entry, TensorPair
from gradparity.pairing.function_align import tap_conversion
from gradparity.pairing.params import ParamPair, to_ours
from gradparity.reference.layout import IDENTITY
from gradparity.sides.function_reference import FunctionReference
from gradparity.sides.function_run import ReferenceRun, UserRun


def tap_entries(
    side: FunctionReference, run: UserRun, ref: ReferenceRun, batch: int
) -> tuple[list[Entry], list[Entry]]:
    """(forward taps in forward order, gradient taps in backward order). A tap holding
    something other than real numbers (complex values, text) is a ``raised`` row."""
    order = {m: i for i, (m, _) in enumerate(side.model.named_modules())}
    fwd: list[tuple[tuple[int, int], Entry]] = []
    bwd: list[tuple[tuple[int, int], Entry]] = []
    for tap, (kind, module, call) in side.tap_specs.items():
        entry: Entry
        if tap in run.bad_taps:  # complex or text: a finding, never compared as real
            entry = failed_row("chain", tap, "tap", {**run.bad_taps[tap], "quantity": kind})
            entry.module, entry.module_index = module, order[module]
        elif tap not in run.taps:  # grads raised before reaching it
            continue
        else:
            ours, theirs = run.taps[tap], ref.taps[tap]
            conversion = tap_conversion(ours.shape, theirs.shape, side.columns)
            aligned = aligned_tap(ours, theirs, side.columns)
            what = "output" if kind == Kind.OUTPUT else "dL/d(output)"
            called = module if call is None else f"{module}@{call}"
            shown = f"{called} {what} {theirs.shape}: {conversion or 'no layout fits'}"
            entry = TensorPair(
                "chain", tap, "tap", kind, ours, theirs if aligned is None else aligned,
                batch_size=batch, module=module, module_index=order[module], keep_arrays=True,
                shown_conversion=shown,
            )  # fmt: skip
        (fwd if kind == Kind.OUTPUT else bwd).append(((order[module], call or 0), entry))
    fwd.sort(key=lambda t: t[0])
    bwd.sort(key=lambda t: t[0], reverse=True)
    return [e for _, e in fwd], [e for _, e in bwd]


def param_entries(
    fn: str, side: FunctionReference, run: UserRun, ref: ReferenceRun, pairs: list[ParamPair],
    depth: dict[str, int], batch: int,
) -> list[Entry]:  # fmt: skip
    """One entry per parameter, deepest (closest to the output) first."""
    if run.grads is None:
        return []
    entries: list[Entry] = []
    for p in sorted(pairs, key=lambda p: -depth[p.key]):
        if p.key in run.bad_grads:  # complex: a finding, never compared as real
            entries.append(failed_row("chain", fn, "parameter", run.bad_grads[p.key]))
            continue
        expected = to_ours(ref.grads[p.torch_name], p)
        layout = "columns" if side.columns and p.conversion == IDENTITY else p.conversion
        entries.append(
            TensorPair(
                "chain", fn, "parameter", Address(fn, Kind.GRAD, p.key).quantity,
                run.grads[p.key], expected,
                batch_size=batch, param_shape=p.ours_shape, conversion=layout,
                shown_conversion=p.conversion, reference_parameter=p.torch_name,
                keep_arrays=True,
            )
        )  # fmt: skip
    return entries


@dataclass
class FunctionPairing:
    """The pairing step: taps in forward order, the loss, gradient taps in backward order,
    then the parameters deepest first (the order the function locator reads them in)."""

    fn: str
    side: FunctionReference
    batch: int

    def __call__(self, captures: dict[str, Any]) -> list[Entry]:
        run, ref = captures["run"], captures["reference"]
        fwd, bwd = tap_entries(self.side, run, ref, self.batch)
        loss: list[Entry] = []
        if self.side.ours_loss is not None:
            ours_loss, ref_loss = np.array(self.side.ours_loss), np.array(ref.loss)
            loss = [TensorPair("chain", "loss", "loss", "output", ours_loss, ref_loss)]
        params = param_entries(
            self.fn, self.side, run, ref, captures["pairs"], captures["depth"], self.batch
        )
        return fwd + loss + bwd + params
