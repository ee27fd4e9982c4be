"""The known-bug corpus: mistakes people make in hand-written backprop, injected into ``ours``.

Each bug is a subclass of an ours layer or loss overriding one method, so it reads as the
one-line mistake it is. ``BUGS`` pairs each with the model it goes into and where gradparity
must find it: layer, quantity and diagnosis.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from gradparity.ours import (
    MSE,
    Linear,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    SoftmaxCrossEntropy,
    Tanh,
)
from gradparity.ours.layers import _linear_bwd, _sigmoid_fwd

# --- activations ----------------------------------------------------------------------------


class SigmoidDerivativeOfOutput(Sigmoid):
    def backward(self, grad_out):
        s = _sigmoid_fwd(self._y)  # sigmoid'(y) instead of sigmoid'(x) = y (1 - y)
        return grad_out * s * (1 - s)


class TanhDerivativeOfInput(Tanh):
    def forward(self, x):
        self._x = x
        return super().forward(x)

    def backward(self, grad_out):
        return grad_out * (1 - self._x**2)  # 1 - x^2 instead of 1 - tanh(x)^2


class ReLUMaskIgnored(ReLU):
    def backward(self, grad_out):
        return grad_out


class SigmoidUpstreamIgnored(Sigmoid):
    def backward(self, grad_out):
        return self._y * (1 - self._y)


class ReLUMutatesInput(ReLU):
    def forward(self, x):
        self._x = x
        x[x < 0] = 0
        return x


# --- linear ---------------------------------------------------------------------------------


class BiasNotSummed(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["b"] = grad_out.copy()
        return grad_x


class BiasAveraged(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["b"] = grad_out.mean(axis=0)
        return grad_x


class BiasGradSign(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["b"] = -grad_out.sum(axis=0)
        return grad_x


class WeightGradTransposed(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["W"] = grad_out.T @ self._x
        return grad_x


class WeightGradZero(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["W"] = np.zeros_like(self.params["W"])
        return grad_x


class WeightGradScaled(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["W"] = 2 * self.grads["W"]
        return grad_x


class WeightGradAveraged(Linear):
    def backward(self, grad_out):
        grad_x = super().backward(grad_out)
        self.grads["W"] = self.grads["W"] / len(grad_out)
        return grad_x


class InputGradUsesW(Linear):
    def backward(self, grad_out):
        assert self._x is not None, "backward before forward"  # the harness runs forward first
        _, self.grads["W"], self.grads["b"] = _linear_bwd(self._x, self.params["W"], grad_out)
        return grad_out @ self.params["W"]  # dy @ W instead of dy @ W.T


class InputGradZero(Linear):
    def backward(self, grad_out):
        super().backward(grad_out)
        return np.zeros_like(self._x)


class StaleCachedInput(Linear):
    def forward(self, x):
        if getattr(self, "_first", None) is None:
            self._first = x  # cached once, reused by every later backward
        self._x = self._first
        return x @ self.params["W"] + self.params["b"]


# --- softmax and losses ---------------------------------------------------------------------


class SoftmaxDiagonalOnly(Softmax):
    def backward(self, grad_out):
        return grad_out * self._s * (1 - self._s)


class SoftmaxKroneckerInverted(Softmax):
    def backward(self, grad_out):
        s = self._s
        off = 1 - np.eye(s.shape[-1])  # (1 - delta_ij) where delta_ij belongs
        jac = s[:, :, None] * (off[None] - s[:, None, :])
        return np.einsum("ni,nij->nj", grad_out, jac)


class LossGradSign(SoftmaxCrossEntropy):
    def backward(self):
        return -super().backward()


class LossSumNotMean(SoftmaxCrossEntropy):
    def backward(self):
        return super().backward() * len(self._target)


class LossTimesSoftmaxPrime(SoftmaxCrossEntropy):
    def backward(self):
        return super().backward() * self._s * (1 - self._s)


class LossBinaryCEDerivative(SoftmaxCrossEntropy):
    def backward(self):
        onehot = np.eye(self._s.shape[1])[self._target]
        s = self._s
        return (s - onehot) / (s * (1 - s)) / len(self._target)


class MSEMissingFactor2(MSE):
    def backward(self):
        return self._diff / self._diff.size


# --- a mask and a reduction count (kept after the others, whose lines reports cite) ----------


class ReLUMaskInverted(ReLU):
    def backward(self, grad_out):
        return grad_out * (self._x <= 0)  # (x <= 0) instead of (x > 0)


class LossMeanOverAllElements(SoftmaxCrossEntropy):
    def backward(self):
        onehot = np.eye(self._s.shape[1])[self._target]
        return (self._s - onehot) / self._s.size  # / (N * C) instead of / N


# --- the corpus -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bug:
    """One injected bug and where it must be found."""

    name: str
    description: str
    layer: str
    quantity: str
    diagnosis: str
    mutant: type
    build: Callable[[int], tuple[Sequential, object, np.ndarray, np.ndarray]]


def base_network(
    seed: int,
    act: type = Sigmoid,
    fc1: type = Linear,
    fc2: type = Linear,
    act_layer: type | None = None,
    square: bool = False,
    loss: type = SoftmaxCrossEntropy,
):
    """x (8, 5) -> fc1 -> act1 -> fc2 -> logits (8, 3), or 4-4-4 with ``square``."""
    rng = np.random.default_rng(seed)
    n_in, n_hidden, n_out = (4, 4, 4) if square else (5, 4, 3)
    model = Sequential(
        ("fc1", fc1(n_in, n_hidden, rng=rng)),
        ("act1", (act_layer or act)()),
        ("fc2", fc2(n_hidden, n_out, rng=rng)),
    )
    x = rng.standard_normal((8, n_in))
    target = rng.integers(0, n_out, size=8)
    return model, loss(), x, target


def softmax_network(seed: int, softmax: type = Softmax, loss: type = MSE):
    """x (8, 5) -> fc1 -> tanh -> fc2 -> softmax -> MSE against one-hot targets (8, 3)."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("fc1", Linear(5, 4, rng=rng)),
        ("act1", Tanh()),
        ("fc2", Linear(4, 3, rng=rng)),
        ("softmax", softmax()),
    )
    x = rng.standard_normal((8, 5))
    target = np.eye(3)[rng.integers(0, 3, size=8)]
    return model, loss(), x, target


def _bug(name, description, layer, quantity, diagnosis, build) -> Bug:
    model, loss, _, _ = build(0)
    mutant = type(loss) if layer == "loss" else type(model[layer])
    return Bug(name, description, layer, quantity, diagnosis, mutant, build)


def inject(model: Sequential, loss: object, bug: Bug) -> tuple[Sequential, object]:
    """Copies of ``model`` and ``loss`` with ``bug`` injected into the layer of the same name
    (same state, the mutant's methods). TypeError when that layer is not of the bug's kind."""
    base = bug.mutant.__mro__[1]
    if bug.layer == "loss":
        if not isinstance(loss, base):
            raise TypeError(f"bug {bug.name} needs a {base.__name__} loss")
        return copy.deepcopy(model), _as_mutant(loss, bug.mutant)
    layers = list(model.named_layers())
    if not any(n == bug.layer and isinstance(layer, base) for n, layer in layers):
        raise TypeError(f"bug {bug.name} needs a {base.__name__} layer named {bug.layer!r}")
    return Sequential(
        *[
            (n, _as_mutant(layer, bug.mutant) if n == bug.layer else copy.deepcopy(layer))
            for n, layer in layers
        ]
    ), copy.deepcopy(loss)


_T = TypeVar("_T")


def _as_mutant(obj: _T, mutant: type[_T]) -> _T:
    new = mutant.__new__(mutant)
    new.__dict__.update(copy.deepcopy(obj.__dict__))
    return new


BUGS: list[Bug] = [
    _bug(
        "sigmoid_derivative_of_output",
        "sigmoid' evaluated at the output, not the input",
        "act1",
        "grad_input",
        "elementwise_derivative",
        lambda s: base_network(s, act=SigmoidDerivativeOfOutput),
    ),
    _bug(
        "tanh_derivative_of_input",
        "tanh' written 1 - x**2 with x the input",
        "act1",
        "grad_input",
        "elementwise_derivative",
        lambda s: base_network(s, act=TanhDerivativeOfInput),
    ),
    _bug(
        "relu_mask_ignored",
        "ReLU backward passes the gradient through unmasked",
        "act1",
        "grad_input",
        "missing_local_derivative",
        lambda s: base_network(s, act=ReLUMaskIgnored),
    ),
    _bug(
        "upstream_ignored",
        "sigmoid backward returns y (1 - y), dropping grad_out",
        "act1",
        "grad_input",
        "upstream_ignored",
        lambda s: base_network(s, act=SigmoidUpstreamIgnored),
    ),
    _bug(
        "relu_mask_inverted",
        "ReLU backward masks with (x <= 0) instead of (x > 0)",
        "act1",
        "grad_input",
        "mask_inverted",
        lambda s: base_network(s, act=ReLUMaskInverted),
    ),
    _bug(
        "input_mutated_in_place",
        "ReLU forward zeroes negatives of its input in place",
        "act1",
        "output",
        "mutates_input",
        lambda s: base_network(s, act=ReLUMutatesInput),
    ),
    _bug(
        "bias_not_summed",
        "bias gradient keeps the batch axis",
        "fc2",
        "grad:b",
        "not_reduced",
        lambda s: base_network(s, fc2=BiasNotSummed),
    ),
    _bug(
        "bias_averaged",
        "bias gradient averaged over the batch instead of summed",
        "fc2",
        "grad:b",
        "batch_reduction",
        lambda s: base_network(s, fc2=BiasAveraged),
    ),
    _bug(
        "bias_grad_sign",
        "bias gradient negated",
        "fc1",
        "grad:b",
        "sign_flipped",
        lambda s: base_network(s, fc1=BiasGradSign),
    ),
    _bug(
        "weight_grad_transposed",
        "dW = grad_out.T @ x, (out, in) for a weight stored (in, out)",
        "fc1",
        "grad:W",
        "transposed",
        lambda s: base_network(s, fc1=WeightGradTransposed),
    ),
    _bug(
        "weight_grad_transposed_square",
        "dW transposed on a square weight (shapes agree)",
        "fc2",
        "grad:W",
        "transposed",
        lambda s: base_network(s, fc2=WeightGradTransposed, square=True),
    ),
    _bug(
        "weight_grad_zero",
        "weight gradient never computed (zeros)",
        "fc2",
        "grad:W",
        "zero",
        lambda s: base_network(s, fc2=WeightGradZero),
    ),
    _bug(
        "weight_grad_scaled",
        "weight gradient doubled",
        "fc1",
        "grad:W",
        "scaled",
        lambda s: base_network(s, fc1=WeightGradScaled),
    ),
    _bug(
        "weight_grad_averaged",
        "weight gradient divided by the batch size once more",
        "fc2",
        "grad:W",
        "batch_reduction",
        lambda s: base_network(s, fc2=WeightGradAveraged),
    ),
    _bug(
        "input_grad_dy_W",
        "dx = dy @ W instead of dy @ W.T (square weight)",
        "fc2",
        "grad_input",
        "transposed",
        lambda s: base_network(s, fc2=InputGradUsesW, square=True),
    ),
    _bug(
        "input_grad_zero",
        "Linear backward returns zeros for dx",
        "fc2",
        "grad_input",
        "zero",
        lambda s: base_network(s, fc2=InputGradZero),
    ),
    _bug(
        "stale_cached_input",
        "Linear caches its input only on the first forward call",
        "fc1",
        "grad:W",
        "stale",
        lambda s: base_network(s, fc1=StaleCachedInput),
    ),
    _bug(
        "softmax_diagonal_only",
        "softmax Jacobian reduced to its diagonal s (1 - s)",
        "softmax",
        "grad_input",
        "missing_cross_terms",
        lambda s: softmax_network(s, softmax=SoftmaxDiagonalOnly),
    ),
    _bug(
        "softmax_kronecker_inverted",
        "softmax Jacobian with (1 - delta_ij) for delta_ij",
        "softmax",
        "grad_input",
        "kronecker_inverted",
        lambda s: softmax_network(s, softmax=SoftmaxKroneckerInverted),
    ),
    _bug(
        "loss_grad_sign",
        "softmax-CE gradient onehot - softmax",
        "loss",
        "grad_input",
        "sign_flipped",
        lambda s: base_network(s, loss=LossGradSign),
    ),
    _bug(
        "loss_sum_not_mean",
        "softmax-CE gradient not divided by the batch size",
        "loss",
        "grad_input",
        "batch_reduction",
        lambda s: base_network(s, loss=LossSumNotMean),
    ),
    _bug(
        "loss_mean_over_all_elements",
        "softmax-CE gradient divided by N * C (all elements) instead of N",
        "loss",
        "grad_input",
        "reduction_count",
        lambda s: base_network(s, loss=LossMeanOverAllElements),
    ),
    _bug(
        "loss_times_softmax_prime",
        "softmax-CE gradient multiplied by softmax' again",
        "loss",
        "grad_input",
        "extra_activation_derivative",
        lambda s: base_network(s, loss=LossTimesSoftmaxPrime),
    ),
    _bug(
        "binary_ce_derivative",
        "binary-CE derivative (s - y) / (s (1 - s)) for softmax-CE",
        "loss",
        "grad_input",
        "gradient_wrt_probabilities",
        lambda s: base_network(s, loss=LossBinaryCEDerivative),
    ),
    _bug(
        "mse_missing_factor_2",
        "MSE gradient without the 2 of d(x**2)/dx",
        "loss",
        "grad_input",
        "scaled",
        lambda s: softmax_network(s, loss=MSEMissingFactor2),
    ),
]

UNMUTATED: dict[str, Callable[[int], tuple]] = {
    "base_sigmoid": base_network,
    "base_relu": lambda s: base_network(s, act=ReLU),
    "base_square": lambda s: base_network(s, square=True),
    "softmax_mse": softmax_network,
}
