"""Evidence of a training step: a diverging gradient that repeats earlier steps' gradients,
never zeroed (``accumulated``) or reused from an earlier batch (``stale``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gradparity.core.address import Kind, kind_of
from gradparity.core.plan import Context
from gradparity.evidence.repeats import repeat_label
from gradparity.sides.training_steps import Key, StepResult


@dataclass
class Tracker:
    """What earlier steps left behind: the reference's running sum of gradients and its last
    step's gradients, keyed (layer, param key)."""

    ref_grad_sum: dict[Key, np.ndarray] = field(default_factory=dict)
    ref_grad_last: dict[Key, np.ndarray] = field(default_factory=dict)

    def add(self, ref: StepResult) -> None:
        """Count a finished step."""
        self.ref_grad_last = {k: v.copy() for k, v in ref.grads.items()}
        for k, v in ref.grads.items():
            self.ref_grad_sum[k] = self.ref_grad_sum[k] + v if k in self.ref_grad_sum else v


def _gradient_diverged(ctx: Context) -> bool:
    return any(r.diverged and kind_of(r.quantity) in (Kind.LOSS, Kind.GRAD) for r in ctx.rows)


@dataclass
class StepRepeats:
    """The plug-in: relabels diverging gradients of ``step`` that equal the reference's sum
    over steps 1..step (accumulated) or its previous step's gradient (stale). Runs only at
    the first divergent step (``active``), from step 2."""

    tracker: Tracker
    step: int
    active: bool

    def __call__(self, ctx: Context) -> None:
        if not self.active or self.step < 2 or not _gradient_diverged(ctx):
            return
        ours: StepResult = ctx.captures["ours"]
        ref: StepResult = ctx.captures["reference"]
        for row in ctx.rows:
            name = row.address.name
            if not (row.diverged and kind_of(row.quantity) is Kind.GRAD and name is not None):
                continue
            where = (row.layer, name)
            label = repeat_label(
                ours.grads.get(where), ref.grads[where], self.tracker.ref_grad_last.get(where),
                self.tracker.ref_grad_sum.get(where), ctx.tolerance,
            )  # fmt: skip
            if label == "accumulated":
                row.diagnosis = label
                row.message = (
                    f"equals the sum of the reference's gradients over steps 1..{self.step}"
                )
                row.fix = "zero the gradients before each backward pass (optimizer.zero_grad())"
            elif label == "stale":
                row.diagnosis = label
                row.message = (
                    f"equals the reference's gradient of step {self.step - 1}: an earlier "
                    "batch's gradient"
                )
                row.fix = "recompute the gradient from the current batch; do not reuse a stored one"
