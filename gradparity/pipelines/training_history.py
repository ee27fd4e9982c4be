"""The history of ``compare_training``: one line per step with both losses and the largest
error per quantity kind, relative to the tolerance."""

from __future__ import annotations

from gradparity.core.address import NAMED_KINDS, kind_of
from gradparity.core.row import Row
from gradparity.sides.training_steps import StepResult

KINDS = ("loss", "grad", "param", "state")


def _ratio(row: Row) -> float:
    """Error over allowed error at the worst element; inf when there is no comparable value."""
    ratio = row.error_ratio()
    return float("inf") if ratio is None else ratio


def _kind(quantity: str) -> str:
    return kind.value if (kind := kind_of(quantity)) in NAMED_KINDS else "loss"


def history_row(step: int, ours: StepResult, ref: StepResult, rows: list[Row]) -> dict:
    """The history line of one step: losses of both sides and ``err_<kind>`` per kind."""
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
