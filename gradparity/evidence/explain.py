"""Evidence plug-ins of ``compare`` for the rows that diverge in isolation: the values behind
them, stale caches, the Jacobian probe and the referee's verdict. Each runs only where
something diverged, so a clean run pays nothing. They read the isolate run's probes from
``ctx.captures["probes"]`` (see ``sides.isolation``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradparity.comparison.diff import reference_grad
from gradparity.core.address import Address
from gradparity.core.labels import RAISED, STALE
from gradparity.core.plan import Context
from gradparity.core.records import LayerRecord
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.evidence import jacobian, referee
from gradparity.evidence.input_lists import growing_lists, reset_advice
from gradparity.evidence.jacobian_labels import add_jacobian
from gradparity.evidence.repeats import repeat_label
from gradparity.sides import run_torch
from gradparity.sides.isolation import Probe


def _ours_value(rec: LayerRecord, quantity: str) -> np.ndarray | None:
    key = Address.parse(quantity).name  # None for grad_input
    return rec.grad_input if key is None else rec.grads.get(key)


def _diverging(ctx: Context, gradients_only: bool = True) -> Iterator[tuple[Row, Probe]]:
    """(row, its probe) for each isolate row that diverged without raising (running
    statistics have their own probe, ``running_stats``)."""
    probes: dict[str, Probe] = ctx.captures["probes"]
    chosen = [
        row
        for row in ctx.rows_of("isolate")
        if row.diverged
        and row.diagnosis != RAISED
        and not row.quantity.startswith("buffer:")
        and not (gradients_only and row.quantity == "output")
    ]
    for row in ctx.each_probed(chosen):
        yield row, probes[row.layer]


def keep_values(ctx: Context) -> None:
    """Ours' and the reference's value (ours' layout) behind each diverging row, for plots."""
    for row, probe in _diverging(ctx, gradients_only=False):
        if row.quantity == "output":
            ours, ref = probe.ours.output, probe.ref.output
        else:
            ours = _ours_value(probe.ours, row.quantity)
            ref = reference_grad(probe.pair, probe.ref, row.quantity)
        values = {} if ours is None else {"ours": np.asarray(ours), "reference": np.asarray(ref)}
        ctx.arrays[(row.layer, row.quantity)] = values


@dataclass
class StaleProbe:
    """A gradient that equals the reference's gradient at the warm-up input: backward used an
    input cached by an earlier forward call."""

    tdtype: torch.dtype

    def __call__(self, ctx: Context) -> None:
        for row, probe in _diverging(ctx):
            if row.layer == "loss" or probe.upstream is None:  # the loss has no upstream
                continue
            at_warm = run_torch.probe_module(probe.pair, probe.warm, probe.upstream, self.tdtype)
            earlier = reference_grad(probe.pair, at_warm, row.quantity)
            ours = _ours_value(probe.ours, row.quantity)
            if repeat_label(ours, None, earlier, None, ctx.tolerance) == STALE:
                row.diagnosis = STALE
                row.message = (
                    "equals the reference's value for the input of the previous forward call: "
                    "backward used a stale cached input"
                )
                row.fix = (
                    "cache the input on every forward call (self.x = x), not only on the first"
                )
                fed = [a for a in (probe.warm, probe.ref.input) if a is not None]
                lists = growing_lists(probe.pair.layer, fed)
                if lists:  # a list of inputs kept until flushed (numpy-ml)
                    row.detail["growing_lists"] = lists
                    row.message, row.fix = reset_advice(probe.pair.layer, lists)


def jacobian_probe(ctx: Context) -> None:
    """The Jacobian of each diverging dL/dx against the reference's; a pattern that proves a
    label (transposed, missing cross terms, a wrong elementwise derivative) names the bug
    (``gradparity.evidence.jacobian_labels``)."""
    for row, probe in _diverging(ctx):
        if row.layer == "loss" or row.quantity != "grad_input":
            continue
        summary, result = _jacobian(probe, ctx.tolerance)
        add_jacobian(row, summary, result, probe, ctx.tolerance)
        if result is not None:
            values = ctx.arrays.setdefault((row.layer, row.quantity), {})
            values["jacobian_ours"] = result.ours
            values["jacobian_reference"] = result.reference


@dataclass
class Referee:
    """Central differences of each side's own forward judge each diverging gradient: the
    reference at fault, or a gradient that only follows ours' diverging forward."""

    target: np.ndarray
    reference_loss: Any

    def __call__(self, ctx: Context) -> None:
        rows = ctx.rows_of("isolate")
        for row, probe in _diverging(ctx):
            verdict = self._verdict(row, probe, ctx.rng)
            row.detail["referee"], row.referee = verdict, verdict["referee"]
            forward_differs = any(
                r.layer == row.layer and r.quantity == "output" and r.diverged for r in rows
            )
            if verdict["referee"] == "both" and forward_differs:
                row.follows_forward = True
                row.message = (
                    "ours' backward matches central differences of ours' own forward: this "
                    "gradient differs only because the forward does"
                )
                row.fix = "fix the forward (or a setting such as a slope or epsilon) first"
            elif verdict["referee"] == "ours":
                row.message = (
                    "the reference is wrong here, not ours: ours matches central "
                    "differences of the forward, the reference does not"
                )
                row.fix = "check the reference model (a custom autograd Function or a detach)"

    def _verdict(self, row: Row, probe: Probe, rng: np.random.Generator) -> dict:
        assert probe.ref.input is not None and probe.ref.grad_input is not None  # ran both passes
        if row.layer == "loss":
            return referee.referee_loss(
                probe.pair.layer, self.reference_loss, probe.ref.input, self.target,
                probe.ours.grad_input, probe.ref.grad_input, rng,
            )  # fmt: skip
        assert probe.upstream is not None  # every probe but the loss's has one
        return referee.referee_layer(
            probe.pair, probe.ref.input, probe.upstream, row.quantity,
            _ours_value(probe.ours, row.quantity),
            reference_grad(probe.pair, probe.ref, row.quantity), rng,
        )  # fmt: skip


def note_chain_stops(ctx: Context) -> None:
    """A note for each layer whose raising ended the chain run."""
    chain: dict[str, LayerRecord] = ctx.captures["ours_chain"]
    ctx.notes += [
        f"chain run stopped at {name}: it raised" for name, rec in chain.items() if rec.error
    ]


def _jacobian(probe: Probe, tol: Tolerance) -> tuple[dict, jacobian.JacobianProbe | None]:
    """(summary for ``detail``, the probe itself): pattern and message, or a note when the
    layer is too large or not of a shape the probe handles."""
    x, out = probe.ref.input, probe.ref.output
    assert x is not None and out is not None  # the reference's forward ran
    note = jacobian.too_large(x.shape, out.shape)
    if note is not None:
        return {"note": note}, None
    try:
        result = jacobian.probe(probe.pair.layer, probe.pair.torch_module, x, tol)
    except ValueError as exc:
        return {"note": f"skipped: {exc}"}, None
    if isinstance(result, str):
        return {"note": result}, None
    return {"pattern": result.pattern, "message": result.message}, result
