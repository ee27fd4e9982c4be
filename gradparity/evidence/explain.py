"""Evidence for the rows that diverge in isolation: stale caches, the referee's verdict and
the Jacobian probe. Runs only where something diverged, so a clean run pays nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gradparity.comparison.diff import reference_grad
from gradparity.core.address import Address
from gradparity.core.metrics import tensor_diff
from gradparity.core.records import LayerRecord
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.evidence import jacobian, referee
from gradparity.pairing.align import LayerPair
from gradparity.sides import run_torch


@dataclass
class Probe:
    """One isolated run of one layer on both sides, with what it was fed."""

    pair: LayerPair
    ours: LayerRecord
    ref: LayerRecord
    warm: np.ndarray  # the warm-up input fed to ours before the real forward
    upstream: np.ndarray | None  # None for the loss


def _ours_value(rec: LayerRecord, quantity: str) -> np.ndarray | None:
    key = Address.parse(quantity).name  # None for grad_input
    return rec.grad_input if key is None else rec.grads.get(key)


def _is_stale(probe: Probe, quantity: str, tol: Tolerance, tdtype: torch.dtype) -> bool:
    """Ours equals the reference's gradient at the warm-up input: backward used an old cache."""
    ours = _ours_value(probe.ours, quantity)
    if ours is None or probe.upstream is None:  # no gradient, or the loss (no upstream)
        return False
    at_warm = run_torch.probe_module(probe.pair, probe.warm, probe.upstream, tdtype)
    expected = reference_grad(probe.pair, at_warm, quantity)
    return np.shape(ours) == expected.shape and tensor_diff(np.asarray(ours), expected, tol).ok


def _mark_stale(row: Row) -> None:
    row.diagnosis = "stale"
    row.message = (
        "equals the reference's value for the input of the previous forward call: "
        "backward used a stale cached input"
    )
    row.fix = "cache the input on every forward call (self.x = x), not only on the first"


def add_evidence(
    rows: list[Row],
    probes: dict[str, Probe],
    tol: Tolerance,
    target: np.ndarray,
    reference_loss: Any,
    tdtype: torch.dtype,
    rng: np.random.Generator,
) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """Enrich diverging isolate rows in place (``detail``, and ``diagnosis``/``message`` for
    stale caches and for gradients where the referee finds the reference at fault).

    Returns the arrays behind each diverging row, keyed by (layer, quantity): "ours" and
    "reference" (ours' layout), plus "jacobian_ours"/"jacobian_reference" (batch, out, in)
    where the Jacobian probe ran. They feed the report's plots, not its JSON.
    """
    arrays: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for row in rows:
        if not row.diverged or row.diagnosis == "raised":
            continue
        probe = probes[row.layer]
        arrays[(row.layer, row.quantity)] = evidence = _values(probe, row.quantity)
        if row.quantity == "output":
            continue
        assert probe.ref.input is not None and probe.ref.grad_input is not None  # ran both passes
        if row.layer == "loss":
            verdict = referee.referee_loss(
                probe.pair.layer,
                reference_loss,
                probe.ref.input,
                target,
                probe.ours.grad_input,
                probe.ref.grad_input,
                rng,
            )
        else:
            if _is_stale(probe, row.quantity, tol, tdtype):
                _mark_stale(row)
            assert probe.upstream is not None  # every probe but the loss's has one
            verdict = referee.referee_layer(
                probe.pair,
                probe.ref.input,
                probe.upstream,
                row.quantity,
                _ours_value(probe.ours, row.quantity),
                reference_grad(probe.pair, probe.ref, row.quantity),
                rng,
            )
            if row.quantity == "grad_input":
                summary, result = _jacobian(probe, tol)
                _add_jacobian(row, summary)
                if result is not None:
                    evidence["jacobian_ours"] = result.ours
                    evidence["jacobian_reference"] = result.reference
        row.detail["referee"], row.referee = verdict, verdict["referee"]
        forward_differs = any(
            r.layer == row.layer and r.quantity == "output" and r.diverged for r in rows
        )
        if verdict["referee"] == "both" and forward_differs:
            row.follows_forward = True
            row.message = (
                "ours' backward matches central differences of ours' own forward: this gradient "
                "differs only because the forward does"
            )
            row.fix = "fix the forward (or a setting such as a slope or epsilon) first"
        elif verdict["referee"] == "ours":
            row.message = (
                "the reference is wrong here, not ours: ours matches central "
                "differences of the forward, the reference does not"
            )
            row.fix = "check the reference model (a custom autograd Function or a detach)"
    return arrays


def _values(probe: Probe, quantity: str) -> dict[str, np.ndarray]:
    """Ours' and the reference's value of one quantity (reference in ours' layout)."""
    if quantity == "output":
        ours, ref = probe.ours.output, probe.ref.output
    else:
        ours, ref = (
            _ours_value(probe.ours, quantity),
            reference_grad(probe.pair, probe.ref, quantity),
        )
    return {} if ours is None else {"ours": np.asarray(ours), "reference": np.asarray(ref)}


def _add_jacobian(row: Row, evidence: dict) -> None:
    """Attach the probe's evidence; a transposed Jacobian names the bug outright."""
    row.detail["jacobian"] = evidence
    pattern = evidence.get("pattern", {})
    if row.diagnosis == "unexplained" and pattern.get("transposed"):
        row.diagnosis = "transposed"
        row.message = (
            "the layer's Jacobian is the transpose of the reference's: backward "
            "multiplies by W where W.T belongs (or the reverse)"
        )
        row.fix = "for y = x @ W use grad_out @ W.T; for y = x @ W.T use grad_out @ W"
    elif "message" in evidence:
        row.message = f"{row.message}; Jacobian probe: {evidence['message']}"


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
