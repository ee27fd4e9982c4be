"""What a float32 training step receives from the steps before it.

Ours and the reference each follow their own float32 trajectory from step 1: their rounding
accumulates independently, so at step k their parameters already differ, and so do the loss,
gradients and updates computed from them. The float64 shadow measures the reference's own
drift, one sample of the same size, which for a scalar (the loss) or a small tensor (a bias)
is often small by luck. So, as ``compare``'s chain mode counts what a layer received from
upstream, each step counts what it received from earlier steps: a float64 copy of the
reference is evaluated at ours' parameters and at the reference's (both before the update, cast
to float64), and the gap of each loss and gradient is that error, added to its budget. An
update receives its gradient's gap times the step size the update took (max|update| /
max|gradient|, as its floor). At step 1 both sides start equal and nothing is received, so a
bug shows there exactly as in float64.

What the optimiser keeps (a momentum buffer, Adam's averages) sums the gradients' gaps of
every step so far, which one step's received gap does not hold. So an update's and a state's
drift is never taken below the largest it has been so far relative to the tensor's scale
(``DriftHistory``): a sample that is small by luck at one step does not shrink its budget.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from gradparity.core.plan import Entry, TensorPair
from gradparity.evidence.float32_budget import (
    DRIFT_FACTOR,
    Key,
    RowTolerances,
    largest,
    widest,
)
from gradparity.pairing.align import LayerPair
from gradparity.pairing.params import sync_parameters
from gradparity.sides.training_steps import Key as ParamKey
from gradparity.sides.training_steps import Shadow, StepResult, float64_step, pairs_on


@dataclass
class ReceivedProbe:
    """A float64 copy of the reference whose loss and gradients are taken at given parameters
    (its optimiser has lr 0: the step leaves them as they are)."""

    model: nn.Module
    pairs: list[LayerPair]
    loss: Any
    optimizer: torch.optim.Optimizer

    @staticmethod
    def make(shadow: Shadow) -> ReceivedProbe:
        """Copy the shadow's float64 model (dropout masks are shared with it through the same
        hooks) and point the layer pairs into the copy."""
        model = copy.deepcopy(shadow.model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        return ReceivedProbe(model, pairs_on(model, shadow.pairs), shadow.loss, optimizer)

    def at(self, params: dict[ParamKey, np.ndarray], x: np.ndarray, target: Any) -> StepResult:
        """Loss and gradients (ours' layout) of the copy holding ``params`` (ours' layout, by
        (layer, key)) on float64 copies of (x (N, ...), target)."""
        with torch.no_grad():
            for pair in self.pairs:
                values = {p.key: params[(pair.name, p.key)] for p in pair.params}
                sync_parameters(values, pair.torch_module, pair.params)
        return float64_step(self.model, self.loss, self.optimizer, self.pairs, x, target)

    def received(
        self, ours: StepResult, ref: StepResult, x: np.ndarray, target: Any
    ) -> dict[Key, float]:
        """By ("train", layer, quantity): what the gap between ours' and the reference's
        parameters before this step makes of the loss, each gradient and each update."""
        at_ours, at_ref = self.at(ours.before, x, target), self.at(ref.before, x, target)
        gaps: dict[Key, float] = {("train", "loss", "loss"): abs(at_ours.loss - at_ref.loss)}
        for (layer, key), grad in at_ref.grads.items():
            gap = _gap(at_ours.grads[(layer, key)], grad)
            step_size = largest(ref.deltas[(layer, key)]) / (
                largest(ref.grads[(layer, key)]) or 1.0
            )
            gaps[("train", layer, f"grad:{key}")] = gap
            gaps[("train", layer, f"param:{key}")] = step_size * gap
        return gaps


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| over elements finite in both (0 for none)."""
    gap = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(gap[np.isfinite(gap)].max(initial=0.0))


# The quantities whose drift accumulates from step to step through the optimiser's state.
ACCUMULATED = ("param:", "state:")


@dataclass
class DriftHistory:
    """The largest drift / scale each accumulated tensor (an update, an optimiser state) has
    had over the steps so far, by (mode, layer, quantity)."""

    ratios: dict[Key, float] = field(default_factory=dict)

    def widen(self, rows: RowTolerances, rtol: float | None, atol: float | None) -> RowTolerances:
        """``rows`` with each accumulated tensor's budget at least ``DRIFT_FACTOR`` times the
        largest drift / scale seen so far (this step's included) times its scale now."""
        budgets, tolerances = dict(rows.budgets), dict(rows.tolerances)
        for key, budget in rows.budgets.items():
            if not key[-1].startswith(ACCUMULATED) or budget.drift is None or budget.scale <= 0:
                continue
            ratio = max(self.ratios.get(key, 0.0), budget.drift / budget.scale)
            self.ratios[key] = ratio
            allowed = max(budget.allowed, DRIFT_FACTOR * ratio * budget.scale)
            budgets[key] = replace(budget, allowed=allowed)
            tolerances[key] = budgets[key].tolerance(rtol, atol)
        return replace(rows, tolerances=tolerances, budgets=budgets)


def earlier_steps(
    entries: list[Entry],
    rows: RowTolerances,
    received: dict[Key, float],
    rtol: float | None,
    atol: float | None,
) -> RowTolerances:
    """``rows`` with each measured budget widened by what its tensor ``received`` (shown as
    ``received`` beside it), each tensor pair of ``entries`` given its tolerance; tensors
    without a measured budget keep theirs."""
    budgets = dict(rows.budgets)
    tolerances = dict(rows.tolerances)
    for key, gap in received.items():
        if key in budgets:
            budget = budgets[key]
            budgets[key] = replace(budget, allowed=budget.allowed + gap, received=gap)
            tolerances[key] = budgets[key].tolerance(rtol, atol)
    for entry in entries:
        if isinstance(entry, TensorPair):
            key = (entry.mode, entry.layer, entry.quantity)
            entry.tolerance = tolerances.get(key, rows.of(key))
    return replace(
        rows,
        tolerances=tolerances,
        budgets=budgets,
        default=widest(tolerances.values(), rows.default),
    )
