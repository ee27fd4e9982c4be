"""Training bugs for the self-test: optimiser and loop mistakes injected into ``ours``, each
with the step, quantity kind and diagnosis where ``compare_training`` must find it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gradparity.corpus.layer_bugs import WeightGradScaled, base_network
from gradparity.ours import SGD, Adam, Linear
from gradparity.ours.layers import _linear_bwd


class SGDNoZeroGrad(SGD):
    def zero_grad(self) -> None:
        pass  # gradients add up across steps


class SGDAscent(SGD):
    def _update(self, key, value, grad) -> None:
        super()._update(key, value, -grad)  # climbs the loss


class SGDWrongLR(SGD):
    def _update(self, key, value, grad) -> None:
        super()._update(key, value, 10 * grad)  # lr effectively ten times too large


class SGDMomentumTwice(SGD):
    def _update(self, key, value, grad) -> None:
        before = value.copy()
        super()._update(key, value, grad)
        value[...] = before  # the buffer was updated; update it again and apply that
        super()._update(key, value, grad)


class AdamNoBiasCorrection(Adam):
    def _update(self, key, value, grad) -> None:
        state = self.state.setdefault(
            key, {"step": 0, "exp_avg": np.zeros_like(value), "exp_avg_sq": np.zeros_like(value)}
        )
        beta1, beta2 = self.betas
        state["step"] += 1
        state["exp_avg"] = beta1 * state["exp_avg"] + (1 - beta1) * grad
        state["exp_avg_sq"] = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad
        value -= self.lr * state["exp_avg"] / (np.sqrt(state["exp_avg_sq"]) + self.eps)


class StaleGradLinear(Linear):
    def backward(self, grad_out):
        assert self._x is not None, "backward before forward"  # the harness runs forward first
        grad_x, grad_w, grad_b = _linear_bwd(self._x, self.params["W"], grad_out)
        if getattr(self, "_kept", None) is None:
            self._kept = (grad_w, grad_b)  # computed once, handed out at every later step
        self.grads["W"], self.grads["b"] = self._kept[0].copy(), self._kept[1].copy()
        return grad_x


@dataclass(frozen=True)
class TrainingBug:
    """One training bug: where ``compare_training`` must find it."""

    name: str
    description: str
    step: int
    kind: str  # "grad", "param" or "state": the quantity kind of the finding
    diagnosis: str
    build: Callable[[int], tuple]  # seed -> (model, ours opt factory, ref opt factory)


def _sgd(cls=SGD, **kw):
    return lambda m: cls(m, lr=0.1, **kw), lambda p: torch.optim.SGD(p, lr=0.1, **kw)


def _adam(cls=Adam):
    return lambda m: cls(m, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)


def _net(seed: int, **layers):
    return base_network(seed, **layers)[0]


TRAINING_BUGS: list[TrainingBug] = [
    TrainingBug(
        "no_zero_grad",
        "optimizer.zero_grad never clears the gradients",
        2,
        "grad",
        "accumulated",
        lambda s: (_net(s), *_sgd(SGDNoZeroGrad)),
    ),
    TrainingBug(
        "stale_gradient",
        "a layer hands out the gradient of its first batch again",
        2,
        "grad",
        "stale",
        lambda s: (_net(s, fc2=StaleGradLinear), *_sgd()),
    ),
    TrainingBug(
        "ascent",
        "the update adds the gradient (gradient ascent)",
        1,
        "param",
        "sign_flipped",
        lambda s: (_net(s), *_sgd(SGDAscent)),
    ),
    TrainingBug(
        "wrong_learning_rate",
        "the update uses ten times the learning rate",
        1,
        "param",
        "scaled",
        lambda s: (_net(s), *_sgd(SGDWrongLR)),
    ),
    TrainingBug(
        "momentum_applied_twice",
        "the momentum buffer is updated twice per step",
        1,
        "param",
        "scaled",
        lambda s: (_net(s), *_sgd(SGDMomentumTwice, momentum=0.9)),
    ),
    # Not an exact factor (eps sits inside the ratio), so the honest label is unexplained; its
    # message gives the near-factor (3.16 at step 1) and points at the bias correction.
    TrainingBug(
        "adam_no_bias_correction",
        "Adam without the 1 - beta**t bias corrections",
        1,
        "param",
        "unexplained",
        lambda s: (_net(s), *_adam(AdamNoBiasCorrection)),
    ),
    TrainingBug(
        "backprop_bug_in_training",
        "fc1's weight gradient doubled, found in training",
        1,
        "grad",
        "scaled",
        lambda s: (_net(s, fc1=WeightGradScaled), *_sgd()),
    ),
]
