"""Optimisers in torch's exact conventions (``torch.optim.SGD``, ``torch.optim.Adam``).

The maths sits in pure ``_sgd_update``/``_adam_update`` functions (arrays in, new arrays out);
the classes only keep state and write the results into the parameter arrays in place.
State is keyed ``(layer name, param key)`` and uses torch's names: SGD ``momentum_buffer``
(absent until the first step with momentum != 0); Adam ``step`` (int), ``exp_avg``,
``exp_avg_sq``. Every array keeps the parameter's dtype (float32 stays float32).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

ParamItem = tuple[str, str, np.ndarray, np.ndarray | None]


def _parameters(model) -> Iterator[ParamItem]:
    """(layer name, key, value, grad or None) from ``parameters()``, ``named_layers()`` or a list
    of ``(name, layer)`` pairs (the design's three model forms)."""
    if hasattr(model, "parameters"):
        yield from model.parameters()
        return
    pairs = model.named_layers() if hasattr(model, "named_layers") else model
    for name, layer in pairs:
        for key, value in getattr(layer, "params", {}).items():
            yield name, key, value, getattr(layer, "grads", {}).get(key)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _lerp(start: np.ndarray, end: np.ndarray, weight: float) -> np.ndarray:
    """start + weight * (end - start), rounded as torch's ``lerp_`` does on CPU."""
    diff = end - start
    return start + weight * diff if abs(weight) < 0.5 else end - diff * (1.0 - weight)


def _sgd_update(
    param, grad, buf, *, lr, momentum, dampening, weight_decay, nesterov, maximize
) -> tuple[np.ndarray, np.ndarray | None]:
    """One SGD step for one parameter. param, grad, buf: same shape (buf None before the first
    momentum step). Returns (delta, new buf) with ``param_new = param - delta``; new buf is None
    when momentum == 0."""
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    if momentum != 0:
        buf = g.copy() if buf is None else momentum * buf + (1.0 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    return lr * g, (buf if momentum != 0 else None)


def _adam_update(
    param, grad, exp_avg, exp_avg_sq, step, *, lr, betas, eps, weight_decay, maximize
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Adam step for one parameter (``step`` counts this step, starting at 1). All arrays
    share one shape. Returns (delta, new exp_avg, new exp_avg_sq); ``param_new = param - delta``."""
    beta1, beta2 = betas
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = g + weight_decay * param
    m = _lerp(exp_avg, g, 1.0 - beta1)
    v = beta2 * exp_avg_sq + (1.0 - beta2) * g * g
    step_size = lr / (1.0 - beta1**step)
    denom = np.sqrt(v) / (1.0 - beta2**step) ** 0.5 + eps
    return step_size * (m / denom), m, v


class Optimizer:
    """Base class: holds the model, ``lr`` and ``state``; ``zero_grad`` zeroes gradients in place.

    ``model``: any object with ``parameters()`` yielding (layer name, key, value, grad or None),
    e.g. ``gradparity.ours.Sequential``; or ``named_layers()``; or a list of (name, layer).
    """

    def __init__(self, model, lr: float) -> None:
        _check(lr > 0, f"lr must be positive, got {lr}")
        self.model = model
        self.lr = lr
        self.state: dict[tuple[str, str], dict[str, Any]] = {}

    def hyperparameters(self) -> dict[str, object]:
        return {"lr": self.lr}

    def step(self) -> None:
        """Update every parameter that has a gradient, in place; others are skipped."""
        for name, key, value, grad in _parameters(self.model):
            if grad is not None:
                self._update((name, key), value, grad)

    def _update(self, key: tuple[str, str], value: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        """Set every existing gradient array to 0 in place (the arrays stay the same objects)."""
        for _, _, _, grad in _parameters(self.model):
            if grad is not None:
                grad[...] = 0

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({hyper})"


def _store(state: dict[str, object], name: str, new: np.ndarray, dtype: np.dtype) -> None:
    """Write ``new`` into the existing state array (same object, like torch) or create it."""
    old = state.get(name)
    if isinstance(old, np.ndarray) and old.shape == new.shape:
        np.copyto(old, new, casting="unsafe")
    else:
        state[name] = np.array(new, dtype=dtype)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, dampening, Nesterov, L2 weight decay
    and maximize, exactly as ``torch.optim.SGD`` (the first momentum buffer is the gradient)."""

    def __init__(
        self,
        model,
        lr: float = 0.1,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        super().__init__(model, lr)
        _check(momentum >= 0, f"momentum must be >= 0, got {momentum}")
        _check(weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}")
        _check(
            not nesterov or (momentum > 0 and dampening == 0),
            f"nesterov needs momentum > 0 and dampening 0, got momentum={momentum}, "
            f"dampening={dampening}",
        )
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov, self.maximize = weight_decay, nesterov, maximize

    def hyperparameters(self) -> dict[str, object]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
            "maximize": self.maximize,
        }

    def _update(self, key, value, grad) -> None:
        state = self.state.get(key, {})
        delta, buf = _sgd_update(
            value, grad, state.get("momentum_buffer"), **self.hyperparameters()
        )
        value -= delta.astype(value.dtype, copy=False)
        if buf is not None:
            _store(state, "momentum_buffer", buf, value.dtype)
            self.state[key] = state


class Adam(Optimizer):
    """Adam with L2 weight decay (added to the gradient) and maximize, exactly as
    ``torch.optim.Adam`` with ``amsgrad=False``."""

    def __init__(
        self,
        model,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
    ) -> None:
        super().__init__(model, lr)
        _check(len(betas) == 2, f"betas must be a pair (beta1, beta2), got {betas}")
        for i, beta in enumerate(betas):
            _check(0 <= beta < 1, f"betas[{i}] must lie in [0, 1), got {beta}")
        _check(eps >= 0, f"eps must be >= 0, got {eps}")
        _check(weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}")
        _check(not amsgrad, "amsgrad=True is not supported; use amsgrad=False")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps, self.weight_decay, self.maximize = eps, weight_decay, maximize

    def hyperparameters(self) -> dict[str, object]:
        return {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
            "maximize": self.maximize,
        }

    def _update(self, key, value, grad) -> None:
        state = self.state.setdefault(
            key, {"step": 0, "exp_avg": np.zeros_like(value), "exp_avg_sq": np.zeros_like(value)}
        )
        state["step"] += 1
        delta, m, v = _adam_update(
            value,
            grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            state["step"],
            **self.hyperparameters(),
        )
        value -= delta.astype(value.dtype, copy=False)
        _store(state, "exp_avg", m, value.dtype)
        _store(state, "exp_avg_sq", v, value.dtype)
