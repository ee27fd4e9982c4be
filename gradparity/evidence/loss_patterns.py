"""Two loss-gradient mistakes around the output activation, tested on the loss input the
reference saw.

A softmax (or sigmoid) cross-entropy gradient dL/dz already contains the activation's
derivative. With s the activation of the logits z the loss was fed (softmax over the last
axis, or the sigmoid, which a binary loss uses):

- ``extra_activation_derivative``: ours == reference * s * (1 - s), the derivative multiplied
  in once more;
- ``gradient_wrt_probabilities``: ours == reference / (s * (1 - s)), dL/ds returned where
  dL/dz belongs.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from gradparity.core.labels import (
    EXTRA_ACTIVATION_DERIVATIVE,
    GRADIENT_WRT_PROBABILITIES,
    SCALED,
    UNEXPLAINED,
)
from gradparity.core.plan import Context
from gradparity.core.tolerance import Tolerance
from gradparity.evidence.explain import _diverging


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # no overflow for large |z|


def _activations(logits: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(name, s) for each activation a loss on ``logits`` may contain: softmax where there
    are two or more classes on the last axis of (batch, classes) logits, the sigmoid always
    (a binary loss on (batch,) or (batch, 1) logits, or one sigmoid per class)."""
    if logits.ndim >= 2 and logits.shape[-1] > 1:
        yield "softmax", _softmax(logits)
    yield "sigmoid", _sigmoid(logits)


def activation_mistake(
    ours: np.ndarray, reference: np.ndarray, logits: np.ndarray, tol: Tolerance
) -> dict | None:
    """The label and evidence when ours' dL/dlogits is the reference's times or divided by
    s * (1 - s) for the softmax or sigmoid s of ``logits``; else None.

    ours, reference, logits: the same shape (batch, classes) or (batch,). Returns
    {"label", "activation"}: a JSON-serialisable dict for ``detail``.
    """
    z = np.asarray(logits, dtype=np.float64)
    if np.shape(ours) != z.shape or np.shape(reference) != z.shape:
        return None
    ref = np.asarray(reference, dtype=np.float64)
    for name, s in _activations(z):
        slope = s * (1 - s)
        if tol.matches(ours, ref * slope):
            return {"label": EXTRA_ACTIVATION_DERIVATIVE, "activation": name}
        if slope.all() and tol.matches(ours, ref / slope):
            return {"label": GRADIENT_WRT_PROBABILITIES, "activation": name}
    return None


_TEXT = {
    EXTRA_ACTIVATION_DERIVATIVE: (
        "ours equals the reference times s * (1 - s), with s the {act} of the logits: the "
        "{act}'s derivative is multiplied in again, although the loss gradient dL/dz "
        "already includes it",
        "return the loss gradient with respect to the logits as it is (for softmax "
        "cross-entropy, (s - onehot) / N), without multiplying by s * (1 - s)",
    ),
    GRADIENT_WRT_PROBABILITIES: (
        "ours equals the reference divided by s * (1 - s), with s the {act} of the logits: "
        "the gradient with respect to the probabilities (dL/ds) is returned where the one "
        "with respect to the logits (dL/dz) belongs",
        "return dL/dz: for softmax (or sigmoid) cross-entropy it is (s - onehot) / N, the "
        "activation's derivative cancels the division",
    ),
}


def loss_activation_probe(ctx: Context) -> None:
    """Name an unexplained loss gradient that is the reference's times or divided by the
    output activation's derivative, at the logits the reference's loss was fed. A ``scaled``
    one too: where s * (1 - s) is the same everywhere (equal logits give 0.25 for two classes)
    the mistake also reads as a constant factor, and the activation names where it comes from."""
    for row, probe in _diverging(ctx):
        if row.layer != "loss" or row.quantity != "grad_input":
            continue
        if row.diagnosis not in (UNEXPLAINED, SCALED):
            continue
        logits, ours = probe.ref.input, probe.ours.grad_input
        assert logits is not None and probe.ref.grad_input is not None  # the reference ran
        if ours is None:
            continue
        found = activation_mistake(ours, probe.ref.grad_input, logits, ctx.tolerance)
        if found is None:
            continue
        text, fix = _TEXT[found["label"]]
        message = text.format(act=found["activation"])
        if row.diagnosis == SCALED:
            factor = row.detail.get("factor")
            message += (
                f"; here s * (1 - s) is the same for every element, so it also reads as a "
                f"constant factor of {factor:.4g}"
                if isinstance(factor, float)
                else "; here s * (1 - s) is the same for every element"
            )
        row.diagnosis = found["label"]
        row.message = message
        row.fix = fix
        row.detail["activation"] = found["activation"]
