"""Evidence plug-ins of ``compare_function``: a weight-decay term, values that repeat an
earlier call (stale, accumulated), the loss_fn referee, the loss row's advice, and the notes
on the reference's settings and the parameters' layouts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradparity.comparison.function_taps import aligned_tap
from gradparity.core.errors import InputError
from gradparity.core.plan import Context
from gradparity.core.row import Row
from gradparity.evidence.function_numeric import NumericLoss, referee_rows
from gradparity.evidence.penalty import explain_penalty
from gradparity.evidence.repeats import mark_repeat
from gradparity.pairing.params import to_ours
from gradparity.sides.function_inputs import mode_hints, warm_reference_input
from gradparity.sides.function_reference import FunctionReference


def _compared_params(ctx: Context) -> list[Row]:
    return [r for r in ctx.rows if r.type == "parameter" and r.diagnosis != "raised"]


def penalty_term(ctx: Context) -> None:
    """A parameter gradient off by a multiple of the parameter: a weight-decay term."""
    side: FunctionReference = ctx.captures["side"]
    for row in _compared_params(ctx):
        values = ctx.arrays[(row.layer, row.quantity)]
        name = row.address.name
        assert name is not None  # a parameter row's address names its parameter
        param = side.flat[name]
        explain_penalty(row, values["ours"], values["reference"], param, ctx.tolerance)


@dataclass
class RepeatedCalls:
    """Diverging taps and gradients that equal the right value at the warm-up input (stale)
    or the sum of both calls' right values (accumulated)."""

    x_warm: np.ndarray  # the input of the warm-up call, in ours' layout

    def __call__(self, ctx: Context) -> None:
        side: FunctionReference = ctx.captures["side"]
        run, warm_run = ctx.captures["run"], ctx.captures["warm_run"]
        diverging = [
            r for r in ctx.rows
            if r.type in ("tap", "parameter") and r.diverged and r.diagnosis != "raised"
            and r.shape_ours == r.shape_ref
        ]  # fmt: skip
        rx_warm = warm_reference_input(side.x, side.rx, self.x_warm)
        if not diverging or rx_warm is None or warm_run.grads is None:
            return
        try:
            at_warm = side.run(rx_warm)
        except InputError as exc:
            ctx.notes.append(
                f"no check for cached values: the reference fails on the warm-up input ({exc})"
            )
            return
        by_key = {p.key: p for p in ctx.captures["pairs"]}
        ref = ctx.captures["reference"]
        for row in diverging:
            if row.type == "tap":
                ours = run.taps[row.layer]
                now = ctx.arrays[(row.layer, row.quantity)]["reference"]
                old = aligned_tap(ours, at_warm.taps[row.layer], side.columns)
                if old is not None:
                    mark_repeat(row, ours, now, old, ctx.tolerance)
                continue
            key = row.address.name
            assert key is not None and run.grads is not None  # a parameter row of a run
            p = by_key[key]
            old = to_ours(at_warm.grads[p.torch_name], p)
            now = to_ours(ref.grads[p.torch_name], p)
            mark_repeat(row, run.grads[p.key], now, old, ctx.tolerance)


@dataclass
class LossFnReferee:
    """With loss_fn: central differences of ours' own loss say whether a diverging gradient
    is right for ours' loss (then the reference computes another function)."""

    make_loss: Callable[[], NumericLoss]
    rng: np.random.Generator

    def __call__(self, ctx: Context) -> None:
        params = [r for r in ctx.rows if r.type == "parameter"]
        referee_rows(params, ctx.captures["run"].grads or {}, self.make_loss, self.rng)


def loss_advice(ctx: Context) -> None:
    """The fix of a diverging loss row: the two losses compute different costs."""
    for row in ctx.rows:
        if row.type == "loss" and row.diverged:
            row.fix = (
                "make loss_fn compute the reference's loss (same cost, same batch reduction), "
                "or pass reference_loss"
            )


def reference_notes(ctx: Context) -> None:
    """Notes on the reference's settings (when anything diverged) and on layouts assumed,
    and the conversions the report lists."""
    side: FunctionReference = ctx.captures["side"]
    pairs = ctx.captures["pairs"]
    if any(r.diverged for r in ctx.rows):
        ctx.notes += mode_hints(side.model)
        if side.default_loss:
            ctx.notes.append(
                "reference_loss was not given, so the reference's loss is softmax "
                "cross-entropy averaged over the batch; pass reference_loss=callable(output,"
                " target) if your cost is another"
            )
    ctx.notes += [
        f"layout of {p.key} {p.how}; "
        + (
            "check reference_x and reference_target (x.T when your examples are columns) "
            "and that the reference is the same network"
            if "neither" in p.how
            else "pass loss_fn or map a forward tap to decide it"
        )
        for p in pairs
        if p.how.startswith("assumed")
    ]
    taps = [r for r in ctx.rows if r.type == "tap"]
    ctx.fields["conversions"] = [p.describe() for p in pairs] + [
        f"tap {r.layer}: {r.conversion}" for r in taps
    ]
