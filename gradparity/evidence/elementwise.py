"""Where an elementwise layer's wrong derivative comes from, tested on the reference module.

When the Jacobian probe finds both Jacobians diagonal with different diagonals, ours' local
derivative ``d(x)`` (the diagonal, ``d out[b, j] / d x[b, j]``) is wrong. Two mistakes are
common and each is tested by evaluating the reference's derivative ``f'`` with torch:

- evaluated at the output: ``d(x) == f'(y)`` with ``y = f(x)`` (sigmoid'(y) for sigmoid'(x));
- the formula in terms of the output applied to the input: ``f'(x) == g(y)`` for a polynomial
  ``g`` (``1 - y**2`` for tanh, ``y - y**2`` for sigmoid) and ``d(x) == g(x)`` (``1 - x**2``).
  ``g`` is fitted to the reference's own (output, derivative) pairs and counts only when it
  reproduces every one of them to the tolerance: a layer whose derivative is not a low-degree
  polynomial of its output never gets this explanation.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from numpy.polynomial import polynomial

from gradparity.core.tolerance import Tolerance

MAX_DEGREE = 3  # of the output polynomial g; sigmoid and tanh need 2


def reference_local_derivative(
    module: torch.nn.Module, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(f(z), f'(z)) of an elementwise ``module`` at z (batch, features), in z's dtype.

    For an elementwise layer the Jacobian is diagonal, so the vector-Jacobian product with an
    all-ones vector is its diagonal. Works on a deep copy of the module.
    """
    zt = torch.as_tensor(np.array(z)).requires_grad_(True)  # on the default (reference) device
    with torch.enable_grad():
        out = copy.deepcopy(module).to(zt.dtype)(zt)
        (slope,) = torch.autograd.grad(out.sum(), zt)
    return out.detach().cpu().numpy(), slope.cpu().numpy()


def fit_output_formula(
    outputs: np.ndarray, derivatives: np.ndarray, tol: Tolerance
) -> np.ndarray | None:
    """Coefficients (lowest degree first) of the lowest-degree polynomial g with
    ``g(outputs) == derivatives`` to the tolerance, or None.

    A fit counts only with at least two more distinct outputs than coefficients, so the
    polynomial is over-determined and could have failed.
    """
    y, d = np.ravel(outputs), np.ravel(derivatives)
    distinct = np.unique(y).size
    for degree in range(1, MAX_DEGREE + 1):
        if distinct < degree + 3:
            break
        coefficients = polynomial.polyfit(y, d, degree)
        if tol.matches(polynomial.polyval(y, coefficients), d):
            return coefficients
    return None


def formula_text(coefficients: np.ndarray, variable: str) -> str:
    """A polynomial as a student writes it: [1, 0, -1] in y -> '1 - y**2'."""
    scale = float(np.abs(coefficients).max())
    terms = []
    for power, c in enumerate(coefficients):
        if abs(c) <= 1e-9 * scale:
            continue
        size = f"{abs(c):.4g}"
        base = "" if power == 0 else variable if power == 1 else f"{variable}**{power}"
        body = size if not base else base if size == "1" else f"{size} * {base}"
        sign = "-" if c < 0 else "+"
        terms.append((sign, body))
    if not terms:
        return "0"
    first_sign, first = terms[0]
    text = ("-" if first_sign == "-" else "") + first
    return text + "".join(f" {sign} {body}" for sign, body in terms[1:])


def derivative_mistake(
    module: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    ours_local: np.ndarray,
    tol: Tolerance,
) -> dict | None:
    """Which common mistake ours' local derivative ``ours_local`` is, or None.

    x, y: the layer's input and the reference's output (batch, features); ours_local: ours'
    local derivative at x, same shape. Returns a JSON-serialisable dict: ``evaluated_at``
    ("output": f'(y); "input": the output formula applied to x), ``formula`` (the output
    formula, for "input") and ``message``.
    """
    reference = reference_local_derivative(module, x)[1]
    if tol.matches(ours_local, reference_local_derivative(module, y)[1]):
        return {
            "evaluated_at": "output",
            "message": "ours' local derivative equals the reference's derivative evaluated at "
            "the layer's output y instead of its input x (f'(y) where f'(x) belongs)",
        }
    coefficients = fit_output_formula(y, reference, tol)
    if coefficients is not None and tol.matches(
        ours_local, polynomial.polyval(np.asarray(x, dtype=np.float64), coefficients)
    ):
        in_y, in_x = formula_text(coefficients, "y"), formula_text(coefficients, "x")
        return {
            "evaluated_at": "input",
            "formula": in_y,
            "message": f"the reference's derivative in terms of the output is {in_y}; ours "
            f"applies that formula to the input, {in_x}",
        }
    return None
