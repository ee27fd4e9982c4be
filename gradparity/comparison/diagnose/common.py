"""Shared pieces of the diagnosis modules: ``Diagnosis``, the per-call context and small
helpers used by the value tests (``comparison.diagnose.values``), the shape tests
(``comparison.diagnose.shapes``) and the last resort (``comparison.diagnose.unexplained``).

"Matches" is ``Tolerance.matches``: equal shapes and no element out of tolerance, as the
module docstring of ``gradparity.comparison.diagnose.values`` describes. The labels live in
``gradparity.core.labels``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradparity.core.address import Address, Kind
from gradparity.core.labels import LABELS
from gradparity.core.metrics import TensorDiff, tensor_diff
from gradparity.core.tolerance import Tolerance


@dataclass(frozen=True)
class Diagnosis:
    """What is wrong with one quantity of one layer.

    ``message``: the problem with numbers, no layer prefix; ``fix``: the likely fix, imperative;
    ``detail``: the numbers, as JSON values; ``ours_reduction``: for ``batch_reduction``, how
    ours reduces over the batch ("sum" or "mean"), which later stages decide on.
    """

    label: str
    detail: dict
    message: str
    fix: str
    ours_reduction: str | None = None

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"unknown diagnosis label {self.label!r}")


# The kinds whose fixes the diagnosis tables tell apart; any other quantity is "other".
_KINDS = (Kind.GRAD_INPUT, Kind.GRAD, Kind.OUTPUT, Kind.LOSS, Kind.PARAM, Kind.STATE)


@dataclass(frozen=True)
class _Context:
    tol: Tolerance
    quantity: str
    batch_size: int | None
    upstream: np.ndarray | None
    param_shape: tuple[int, ...] | None
    # How ours' parameter maps onto torch's: "identity" = stored (out, in); "columns" = stored
    # (out, in) in code that holds examples as columns (z = W @ a + b).
    layout: str = ""

    @property
    def address(self) -> Address | None:
        """The quantity as an ``Address``; None for a name that is not a quantity."""
        try:
            return Address.parse(self.quantity)
        except ValueError:
            return None

    @property
    def kind(self) -> str:
        """'grad_input', 'grad', 'output', 'loss', 'param', 'state' or 'other'."""
        address = self.address
        return address.kind.value if address is not None and address.kind in _KINDS else "other"

    @property
    def noun(self) -> str:
        address = self.address
        name = address.name if address is not None else None
        return {
            "grad_input": "input gradient",
            "grad": f"gradient of {name}",
            "param": f"parameter {name} after the step",
            "state": f"optimiser state {name}",
        }.get(self.kind, self.quantity)

    def hint(self, table: dict[str, str]) -> str:
        """This quantity's entry of a table of fixes keyed by kind (and, where the table has
        one, by the parameter's layout: "grad/identity"), else its "other" entry."""
        return table.get(f"{self.kind}/{self.layout}", table.get(self.kind, table["other"]))


# Shared by the shape tests and the square-transpose value test.
_TRANSPOSE_FIX = {
    "grad": "transpose it: for a weight stored (in, out) the gradient is x.T @ grad_out, not "
    "grad_out.T @ x",
    "grad/identity": "transpose it: for a weight stored (out, in), as in y = x @ W.T, the "
    "gradient is grad_out.T @ x, not x.T @ grad_out",
    "grad/columns": "transpose it: with examples as columns (z = W @ a + b, W stored (out, in)) "
    "the weight gradient is delta @ a.T, not a @ delta.T (nor (delta @ a.T).T)",
    "grad/unknown": "transpose it: a weight gradient has the weight's layout: x.T @ delta for W "
    "stored (in, out) with examples as rows, delta @ a.T for W stored (out, in) with examples as "
    "columns",
    "grad_input": "transpose it: dL/dx has the input's shape, e.g. grad_out @ W.T for a weight "
    "stored (in, out)",
    "other": "transpose it: check the order of the matrix product (x @ W for W stored (in, out))",
}


def transpose_fix(kind: str, layout: str = "") -> str:
    """The advice for a transposed quantity of ``kind`` ("grad", "grad_input", ...) in a
    parameter ``layout`` ("identity", "transpose", "columns", "unknown" or "")."""
    return _TRANSPOSE_FIX.get(f"{kind}/{layout}", _TRANSPOSE_FIX.get(kind, _TRANSPOSE_FIX["other"]))


def _diff(a: np.ndarray, b: np.ndarray, tol: Tolerance) -> TensorDiff:
    # tensor_diff's cosine maps inf to the largest float, whose squared norm overflows.
    with np.errstate(over="ignore", invalid="ignore"):
        return tensor_diff(a, b, tol)


def _shape(shape: tuple[int, ...]) -> str:
    return str(tuple(int(n) for n in shape))


def _rel_norm(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over the entries finite on both sides (inf when b is zero, a not)."""
    keep = np.isfinite(a) & np.isfinite(b)
    num, den = float(np.linalg.norm(a[keep] - b[keep])), float(np.linalg.norm(b[keep]))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def _num(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _index(index: tuple) -> str:
    return str(tuple(int(i) for i in index))


def _at(index: tuple) -> str:
    """ " at (i, j)", or "" for the index of a scalar (0-D)."""
    return f" at {_index(index)}" if index else ""


def _fmt(x: float) -> str:
    return f"{float(x):.4g}"


def _fit_factor(o: np.ndarray, r: np.ndarray, tol: Tolerance) -> float | None:
    """Least-squares f of o ≈ f * r, or None unless o matches f * r under ``tol``."""
    if not (np.isfinite(o).all() and np.isfinite(r).all()):
        return None
    rr = float(np.vdot(r, r))
    f = float(np.vdot(o, r)) / rr if rr > 0 else 0.0
    if f == 0.0 or not np.isfinite(f):
        return None
    return f if tol.matches(o, f * r) else None


def _close(a: float, b: float, tol: Tolerance) -> bool:
    """a equals b within the closeness for factors (the docstring of ``diagnose.values``)."""
    return abs(a - b) <= max(1e-6, 10 * tol.rtol) * abs(b)
