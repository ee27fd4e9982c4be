"""The known-bug corpus for backprop written as one function (``compare_function``).

``forward_backward`` is a three-layer sigmoid network in the common one-function style
(params a dict, weights (in, out), examples as rows, softmax cross-entropy averaged over the
batch, every delta computed inline), with ``gp.tap`` calls at each step. Each bug switches one
line to a mistake people make; ``FUNCTION_BUGS`` says where gradparity must find it, against a
torch reference and, with no reference, against central differences.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from torch import nn

from gradparity.sides.taps import tap

SIZES = (4, 5, 5, 3)  # W2 is square: its layout cannot be read off its shape
TAP_MAP = {
    "h1": "fc1", "a1": "act1", "h2": "fc2", "a2": "act2", "scores": "fc3",
    "dscores": "grad:fc3", "dh2": "grad:fc2", "dh1": "grad:fc1",
}  # fmt: skip


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def forward_backward(
    params: dict[str, np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    bug: str | None = None,
    accumulator: dict[str, np.ndarray] | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """(mean softmax cross-entropy, {name: gradient}); x (N, 4), y (N,) classes 0..2.
    ``accumulator``: the buffer the "grads_accumulated_across_calls" bug adds into."""
    W1, b1, W2, b2, W3, b3 = (params[k] for k in ("W1", "b1", "W2", "b2", "W3", "b3"))
    n = x.shape[0]
    h1 = tap("h1", x @ W1 + b1)
    a1 = tap("a1", _sigmoid(h1))
    h2 = tap("h2", a1 @ W2 + b2)
    a2 = tap("a2", _sigmoid(h2))
    scores = tap("scores", a2 @ W3 + b3)
    shifted = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    loss = -np.log(probs[np.arange(n), y]).mean()  # np.float64 (a float); 0-d on tensors
    onehot = np.eye(probs.shape[1])[y]
    variants: dict[str | None, np.ndarray] = {
        "loss_grad_sign": (onehot - probs) / n,
        "mean_missing": probs - onehot,
    }
    dscores = variants.get(bug, (probs - onehot) / n)
    tap("dscores", dscores)
    grads = {
        "W3": a2.T @ dscores + (0.01 * W3 if bug == "weight_decay_not_in_loss" else 0),
        "b3": dscores if bug == "bias_not_summed" else dscores.sum(axis=0),
    }
    da2 = dscores @ W3.T
    dh2 = tap("dh2", da2 * a2 if bug == "hidden_activation_derivative" else da2 * a2 * (1 - a2))
    grads["W2"] = (a1.T @ dh2).T if bug == "transposed_square_weight_grad" else a1.T @ dh2
    grads["b2"] = dh2.sum(axis=0)
    da1 = dh2 @ W2 if bug == "missing_transpose_in_backprop" else dh2 @ W2.T
    dh1 = tap("dh1", da1 * a1 * (1 - a1))
    grads["W1"] = (2 if bug == "weight_grad_doubled" else 1) * (x.T @ dh1)
    grads["b1"] = dh1.sum(axis=0)
    if bug == "grads_accumulated_across_calls" and accumulator is not None:
        for k, g in grads.items():
            accumulator[k] = accumulator.get(k, 0) + g
        grads = {k: accumulator[k].copy() for k in grads}
    return loss, {k: grads[k] for k in ("W1", "b1", "W2", "b2", "W3", "b3")}


def cross_entropy(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """The loss alone: ``loss_fn`` for ``compare_function(..., reference=None)``."""
    return forward_backward(params, x, y)[0]


def make_params(seed: int) -> dict[str, np.ndarray]:
    """W1 (4, 5), b1 (5,), W2 (5, 5), b2 (5,), W3 (5, 3), b3 (3,): weights scaled by
    1/sqrt(fan-in), biases non-zero."""
    rng = np.random.default_rng(seed)
    params = {}
    for i, (n_in, n_out) in enumerate(itertools.pairwise(SIZES), 1):
        params[f"W{i}"] = rng.normal(scale=1.0 / np.sqrt(n_in), size=(n_in, n_out))
        params[f"b{i}"] = rng.normal(scale=0.5, size=n_out)
    return params


def reference_model() -> nn.Module:
    """The torch twin: weights are copied in by ``compare_function``."""
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(SIZES[0], SIZES[1]), act1=nn.Sigmoid(),
            fc2=nn.Linear(SIZES[1], SIZES[2]), act2=nn.Sigmoid(),
            fc3=nn.Linear(SIZES[2], SIZES[3]),
        )
    )  # fmt: skip


@dataclass(frozen=True)
class FunctionBug:
    """One mistake and where it must be found: ``place`` (a tap or "grad:<param>") with
    ``diagnosis`` against torch, ``numeric_param`` with ``numeric_diagnosis`` without."""

    name: str
    description: str
    place: str
    diagnosis: str
    numeric_param: str
    numeric_diagnosis: str


FUNCTION_BUGS = [
    FunctionBug("transposed_square_weight_grad", "dW2 = (a1.T @ dh2).T for the square W2",
                "grad:W2", "transposed", "W2", "transposed"),
    FunctionBug("hidden_activation_derivative", "dh2 = da2 * a2, without (1 - a2)",
                "dh2", "unexplained", "W2", "unexplained"),
    FunctionBug("loss_grad_sign", "dscores = (onehot - probs) / N",
                "dscores", "sign_flipped", "W3", "sign_flipped"),
    FunctionBug("bias_not_summed", "db3 = dscores, not summed over the batch",
                "grad:b3", "not_reduced", "b3", "not_reduced"),
    FunctionBug("mean_missing", "dscores = probs - onehot, without / N",
                "dscores", "batch_reduction", "W3", "batch_reduction"),
    FunctionBug("missing_transpose_in_backprop", "da1 = dh2 @ W2 instead of dh2 @ W2.T",
                "dh1", "unexplained", "W1", "unexplained"),
    FunctionBug("weight_grad_doubled", "dW1 = 2 * x.T @ dh1",
                "grad:W1", "scaled", "W1", "scaled"),
    FunctionBug("weight_decay_not_in_loss", "dW3 += 0.01 * W3, a penalty the loss lacks",
                "grad:W3", "weight_decay", "W3", "weight_decay"),
    FunctionBug("grads_accumulated_across_calls", "gradients added to a buffer kept between calls",
                "grad:W3", "accumulated", "W3", "accumulated"),
]  # fmt: skip


def function_setup(bug: FunctionBug | None, seed: int = 0, numeric: bool = False) -> dict:
    """``compare_function`` keyword arguments for the corpus network with ``bug`` switched on
    (None: the correct network). ``numeric``: no reference, central differences instead."""
    params = make_params(seed)
    accumulator: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed + 1)
    x, y = rng.normal(size=(6, SIZES[0])), rng.integers(0, SIZES[-1], size=6)
    name = None if bug is None else bug.name

    def backprop(x_in: np.ndarray, y_in: np.ndarray) -> dict[str, np.ndarray]:
        return forward_backward(params, x_in, y_in, name, accumulator)[1]

    kwargs = {"grads": backprop, "params": params, "x": x, "target": y, "loss_fn": cross_entropy}
    if numeric:
        return {**kwargs, "reference": None}
    return {**kwargs, "reference": reference_model(), "tap_map": dict(TAP_MAP)}
