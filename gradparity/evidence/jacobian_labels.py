"""Labels the Jacobian probe's pattern proves, for an input gradient the value tests left
``unexplained`` (see ``gradparity.evidence.jacobian.describe_jacobian_difference``):

- ``transposed``: ours' Jacobian is the reference's transposed;
- ``missing_cross_terms``: ours' Jacobian is zero off the diagonal where the reference's is
  not: an elementwise derivative for a layer that mixes its inputs (softmax);
- ``kronecker_inverted``: ours minus the reference is a_i (1 - 2 delta_ij) with a != 0: the
  diagonal term a_i delta_ij (s_i delta_ij of softmax) written with 1 - delta_ij, so it lands
  on every off-diagonal entry of row i and leaves the diagonal;
- ``elementwise_derivative``: the reference's Jacobian is diagonal (an elementwise layer),
  ours' is too, and the diagonals differ: the local derivative f'(x) is wrong. Where the
  reference module tells which mistake it is (``gradparity.evidence.elementwise``), the
  message says so.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from gradparity.core.labels import (
    ELEMENTWISE_DERIVATIVE,
    KRONECKER_INVERTED,
    MISSING_CROSS_TERMS,
    TRANSPOSED,
    UNEXPLAINED,
)
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.evidence import elementwise
from gradparity.evidence.jacobian import JacobianProbe
from gradparity.sides.isolation import Probe

_ELEMENTWISE_FIXES = {
    "output": "evaluate the derivative at the input x saved in forward, or write it in terms "
    "of the output: f'(x) = y (1 - y) for sigmoid, 1 - y**2 for tanh",
    "input": "apply the output formula to the output y saved in forward (1 - y**2 for tanh, "
    "y (1 - y) for sigmoid), or write f'(x) in terms of the input",
    None: "check which value the derivative is evaluated at (input x or output y) and its "
    "formula against the reference's, term by term",
}


def add_jacobian(
    row: Row, evidence: dict, result: JacobianProbe | None, probe: Probe, tol: Tolerance
) -> None:
    """Attach the probe's evidence (``result``: the probe itself, None when it was skipped)
    to ``row``; a pattern that proves a label names it, else its sentence joins the message."""
    row.detail["jacobian"] = evidence
    named = row.diagnosis == UNEXPLAINED and _name_from_pattern(row, evidence, result, probe, tol)
    if not named and "message" in evidence:
        row.message = f"{row.message}; Jacobian probe: {evidence['message']}"


def _name_from_pattern(
    row: Row, evidence: dict, result: JacobianProbe | None, probe: Probe, tol: Tolerance
) -> bool:
    """Set the label, message and fix that the pattern proves; False when it proves none."""
    pattern = evidence.get("pattern")
    if not pattern or result is None:
        return False
    if pattern["transposed"]:
        row.diagnosis = TRANSPOSED
        row.message = (
            "the layer's Jacobian is the transpose of the reference's: backward "
            "multiplies by W where W.T belongs (or the reverse)"
        )
        row.fix = "for y = x @ W use grad_out @ W.T; for y = x @ W.T use grad_out @ W"
    elif pattern["ours_offdiag_zero"] and not pattern["reference_elementwise"]:
        row.diagnosis = MISSING_CROSS_TERMS
        row.message = evidence["message"]
        row.fix = (
            "use the full Jacobian, not its diagonal: for softmax, "
            "grad_in = s * (grad_out - (grad_out * s).sum(axis=-1, keepdims=True))"
        )
    elif _kronecker_inverted(result, tol):
        row.diagnosis = KRONECKER_INVERTED
        row.message = (
            "ours' Jacobian differs from the reference's by a_i (1 - 2 delta_ij): its diagonal "
            "term a_i delta_ij is written with (1 - delta_ij), so row i's term lands on every "
            "entry off the diagonal and is missing on it"
        )
        row.fix = (
            "write the Kronecker delta as np.eye(C) (1 where i == j), not 1 - np.eye(C); for "
            "softmax the Jacobian is s_i (delta_ij - s_j)"
        )
    elif pattern["reference_elementwise"] and pattern["diagonal_only"]:
        if _mixes_examples(probe):  # per-example blocks cannot see what it does (batch norm)
            return False
        _name_elementwise(row, evidence["message"], result, probe, tol)
    else:
        return False
    return True


def _kronecker_inverted(result: JacobianProbe, tol: Tolerance) -> bool:
    """Whether ours' per-sample Jacobian (batch, C, C) is the reference's plus
    a_i (1 - 2 delta_ij) for some a (batch, C), a not all zero: a_i read off the diagonal."""
    ours, ref = result.ours, result.reference
    if ours.shape[1] != ours.shape[2] or ours.shape[1] < 2:
        return False
    a = np.diagonal(ref - ours, axis1=1, axis2=2)  # -(ours - ref)_ii
    if not tol.mismatch(ours, ref).any() or tol.matches(a, np.zeros_like(a)):
        return False
    inverted = a[:, :, None] * (1.0 - 2.0 * np.eye(ours.shape[1]))
    return tol.matches(ours, ref + inverted)


def _name_elementwise(
    row: Row, message: str, result: JacobianProbe, probe: Probe, tol: Tolerance
) -> None:
    """``elementwise_derivative``, with the mistake the reference module confirms, if any."""
    x, y = probe.ref.input, probe.ref.output
    assert x is not None and y is not None  # the probe ran on them
    ours_local = np.diagonal(result.ours, axis1=1, axis2=2)
    mistake = elementwise.derivative_mistake(probe.pair.torch_module, x, y, ours_local, tol)
    row.diagnosis = ELEMENTWISE_DERIVATIVE
    row.message = message
    if mistake is not None:
        row.message += f": {mistake['message']}"
        row.detail["local_derivative"] = mistake
    row.fix = _ELEMENTWISE_FIXES[None if mistake is None else mistake["evaluated_at"]]


def _mixes_examples(probe: Probe) -> bool:
    """Whether the reference layer's output for one example moves with another example's
    input (batch statistics): its per-example Jacobian blocks then look diagonal although
    the layer is not elementwise, so no elementwise label may be read off them."""
    x = probe.ref.input
    if x is None or x.shape[0] < 2:
        return False
    moved = np.array(x, dtype=np.float64, copy=True)
    moved[0] += 1.0 + np.abs(moved[0])
    module = copy.deepcopy(probe.pair.torch_module).double()
    with torch.no_grad():
        before = module(torch.as_tensor(np.asarray(x, dtype=np.float64)))
        after = module(torch.as_tensor(moved))
    return not torch.allclose(before[1:], after[1:], rtol=1e-9, atol=1e-12)
