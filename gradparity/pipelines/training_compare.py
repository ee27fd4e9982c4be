"""The per-step comparison of ``compare_training``: rows for one step, the history line, and
why the first divergent step diverged (accumulated, stale, a backprop bug, an optimiser bug)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gradparity.comparison.diff import compare_tensor
from gradparity.core.address import NAMED_KINDS, Kind, kind_of
from gradparity.core.finding import Finding, finding_from_row
from gradparity.core.metrics import tensor_diff
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.pairing.align import LayerPair
from gradparity.report.report import Report
from gradparity.sides.training_steps import StepResult

KINDS = ("loss", "grad", "param", "state")


def _ratio(row: Row) -> float:
    """Error over allowed error at the worst element; inf when there is no comparable value."""
    ratio = row.error_ratio()
    return float("inf") if ratio is None else ratio


def _kind(quantity: str) -> str:
    return kind.value if (kind := kind_of(quantity)) in NAMED_KINDS else "loss"


@dataclass
class Tracker:
    """What earlier steps left behind, to name accumulated and stale gradients."""

    ref_grad_sum: dict = field(default_factory=dict)
    ref_grad_last: dict = field(default_factory=dict)

    def add(self, ref: StepResult) -> None:
        self.ref_grad_last = {k: v.copy() for k, v in ref.grads.items()}
        for k, v in ref.grads.items():
            self.ref_grad_sum[k] = self.ref_grad_sum.get(k, 0) + v


def compare_step(
    step: int, ours: StepResult, ref: StepResult, tol: Tolerance, pairs: list[LayerPair], batch: int
) -> list[Row]:
    rows = [
        compare_tensor(
            "train", "loss", "loss", "loss", np.asarray(ours.loss), np.asarray(ref.loss), tol
        )
    ]
    for pair in pairs:
        for p in pair.params:
            where = (pair.name, p.key)
            for quantity, side in ((f"grad:{p.key}", "grads"), (f"param:{p.key}", "deltas")):
                rows.append(
                    compare_tensor(
                        "train",
                        pair.name,
                        pair.type_name,
                        quantity,
                        getattr(ours, side).get(where),
                        getattr(ref, side)[where],
                        tol,
                        batch_size=batch,
                        param_shape=p.ours_shape,
                        conversion=p.conversion,
                    )
                )
            for state_name, value in ref.state.get(where, {}).items():
                mine = ours.state.get(where, {}).get(state_name)
                if mine is not None:
                    rows.append(
                        compare_tensor(
                            "train",
                            pair.name,
                            pair.type_name,
                            f"state:{p.key}.{state_name}",
                            mine,
                            value,
                            tol,
                        )
                    )
    for row in rows:
        row.step = step
    return rows


def _explain_gradients(
    rows: list[Row],
    ours: StepResult,
    ref: StepResult,
    tracker: Tracker,
    step: int,
    tol: Tolerance,
) -> list[Finding]:
    """Diverged gradients that equal the reference's running sum (never zeroed) or an earlier
    step's gradient (stale)."""
    found = []
    for row in rows:
        if not (row.diverged and kind_of(row.quantity) is Kind.GRAD) or step < 2:
            continue
        assert row.address.name is not None  # a GRAD address names its parameter
        where = (row.layer, row.address.name)
        mine = ours.grads.get(where)
        for label, candidate, text, fix in (
            (
                "accumulated",
                tracker.ref_grad_sum.get(where, 0) + ref.grads[where],
                f"equals the sum of the reference's gradients over steps 1..{step}",
                "zero the gradients before each backward pass (optimizer.zero_grad())",
            ),
            (
                "stale",
                tracker.ref_grad_last.get(where),
                f"equals the reference's gradient of step {step - 1}: an earlier batch's gradient",
                "recompute the gradient from the current batch; do not reuse a stored one",
            ),
        ):
            if (
                mine is not None
                and candidate is not None
                and np.shape(mine) == np.shape(candidate)
                and tensor_diff(np.asarray(mine), candidate, tol).ok
            ):
                row.diagnosis, row.message, row.fix = label, text, fix
                found.append(finding_from_row(row, "train"))
                break
    return found


def findings_at(
    step: int,
    rows: list[Row],
    ours: StepResult,
    ref: StepResult,
    tracker: Tracker,
    tol: Tolerance,
    localise: Callable[[], Report],
) -> list[Finding]:
    """Why the first divergent step diverged, most specific explanation first."""
    bad = [r for r in rows if r.diverged]
    if any(kind_of(r.quantity) in (Kind.LOSS, Kind.GRAD) for r in bad):
        found = _explain_gradients(rows, ours, ref, tracker, step, tol)
        if found:
            return found
        report = localise()
        if report.root_causes:
            return report.root_causes
    updates = [r for r in bad if kind_of(r.quantity) in (Kind.PARAM, Kind.STATE)]
    return [finding_from_row(r, "train") for r in (updates or bad)]


def history_row(step: int, ours: StepResult, ref: StepResult, rows: list[Row]) -> dict:
    worst = dict.fromkeys(KINDS, 0.0)
    for row in rows:
        kind = _kind(row.quantity)
        worst[kind] = max(worst[kind], _ratio(row))
    return {
        "step": step,
        "loss_ours": float(ours.loss),
        "loss_ref": float(ref.loss),
        **{f"err_{k}": v for k, v in worst.items()},
    }
