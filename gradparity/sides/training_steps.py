"""One optimisation step on each side, recorded in ours' layout: the loop body of
``compare_training``, kept apart from the comparison bookkeeping."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from gradparity.core.records import USER_ERRORS, error_info, real_array
from gradparity.evidence.float32_budget import largest
from gradparity.pairing.align import LayerPair
from gradparity.pairing.params import to_ours
from gradparity.sides.adapt import before_pass, grads_of, params_of
from gradparity.sides.run_numpy import loss_value
from gradparity.sides.run_torch import as_tensor, reference_loss_value, to_numpy
from gradparity.sides.step_operands import layer_operands

Key = tuple[str, str]  # (layer name, ours param key)


@dataclass
class StepResult:
    """One side's step: loss before the update, gradients, updates (after - before) and the
    optimiser state after the update, all keyed (layer, param key) in ours' layout. ``error``
    is set (and the rest left empty) when ours' code raised."""

    loss: float
    before: dict[Key, np.ndarray] = field(default_factory=dict)  # parameters before the update
    grads: dict[Key, np.ndarray] = field(default_factory=dict)
    deltas: dict[Key, np.ndarray] = field(default_factory=dict)
    state: dict[Key, dict[str, np.ndarray]] = field(default_factory=dict)
    error: dict | None = None
    # The reference's only: per layer, max|input| * max|upstream gradient| (``step_operands``).
    operands: dict[str, float] = field(default_factory=dict)

    def floor_operands(self) -> dict[tuple[str, ...], float]:
        """The magnitude each tensor's float32 floor is taken of, by ("train", layer,
        quantity), where cancellation can leave the tensor far below it: a gradient's is its
        layer's ``operands``; an update's, the larger of the parameter before the step (the
        update is the difference of two float32 values of that size) and the gradient's
        operands times the step size the update took (max|update| / max|gradient|)."""
        floors: dict[tuple[str, ...], float] = {}
        for (layer, key), before in self.before.items():
            grad = self.operands.get(layer, 0.0)
            step_size = largest(self.deltas[(layer, key)]) / (
                largest(self.grads[(layer, key)]) or 1.0
            )
            floors[("train", layer, f"grad:{key}")] = grad
            floors[("train", layer, f"param:{key}")] = max(largest(before), step_size * grad)
        return floors


def _params(layers) -> dict[Key, np.ndarray]:
    return {(n, k): v for n, layer in layers for k, v in params_of(layer).items()}


def ours_step(
    layers: list[tuple[str, Any]], loss: Any, optimizer: Any, x: np.ndarray, target: np.ndarray
) -> StepResult:
    """zero_grad, forward, loss, backward, step on the NumPy side (objects updated in place)."""
    optimizer.zero_grad()
    for _, layer in layers:
        before_pass(layer)  # a wrap(..., reset=) layer's per-call caches emptied
    h = x
    for _, layer in layers:
        h = layer.forward(h)
    value = float(loss_value(loss.forward(h, target)))
    g = loss.backward()
    for _, layer in reversed(layers):
        g = layer.backward(g)
    grads = {
        (n, k): real_array(v, f"{n}'s grads[{k!r}]", f"grad:{k}")
        for n, layer in layers
        for k, v in grads_of(layer, n).items()
        if v is not None  # never set: compared as missing
    }
    before = {k: np.array(v, copy=True) for k, v in _params(layers).items()}
    optimizer.step()
    after = _params(layers)
    state = {
        key: {name: np.asarray(v, dtype=np.float64) for name, v in entry.items()}
        for key, entry in getattr(optimizer, "state", {}).items()
        if isinstance(key, tuple)
    }
    return StepResult(value, before, grads, {k: after[k] - before[k] for k in before}, state)


class TrainingStepRunner:
    """The ``NumpyRunner`` of ``compare_training``: one step of ours' model and optimiser
    (updated in place, as a training loop does)."""

    def __init__(self, layers: list[tuple[str, Any]], loss: Any, optimizer: Any) -> None:
        self.layers, self.loss, self.optimizer = layers, loss, optimizer

    def run(self, x: np.ndarray, target: np.ndarray) -> StepResult:
        """The step's record; a step whose code raised has only ``error``."""
        try:
            return ours_step(self.layers, self.loss, self.optimizer, x, target)
        except USER_ERRORS as exc:  # the user's code raised: that is the finding
            return StepResult(float("nan"), error=error_info("forward/backward/step", exc))


def reference_step(
    model: nn.Module,
    loss_fn: Any,
    optimizer: Any,
    pairs: list[LayerPair],
    x: np.ndarray,
    target: np.ndarray,
    dtype: torch.dtype,
) -> StepResult:
    """The same step on the torch side, converted to ours' keys and layouts."""
    optimizer.zero_grad()
    with layer_operands(pairs) as operands:
        loss = reference_loss_value(
            loss_fn(model(as_tensor(x, dtype)), as_tensor(target, dtype)), finite=False
        )
        loss.backward()
    tensors = {
        (p.name, pp.key): (dict(p.torch_module.named_parameters())[pp.torch_name], pp)
        for p in pairs
        for pp in p.params
    }
    before = {k: to_numpy(t) for k, (t, _) in tensors.items()}
    grads = {
        k: to_numpy(t.grad) if t.grad is not None else np.zeros(tuple(t.shape))
        for k, (t, _) in tensors.items()
    }
    optimizer.step()
    result = StepResult(float(loss.detach()), operands=operands)
    for key, (tensor, pp) in tensors.items():

        def ours_layout(a: np.ndarray, pp=pp) -> np.ndarray:
            return to_ours(a, pp) if a.ndim else a

        result.before[key] = ours_layout(before[key])
        result.grads[key] = ours_layout(grads[key])
        result.deltas[key] = ours_layout(to_numpy(tensor) - before[key])
        result.state[key] = {
            name: ours_layout(np.asarray(to_numpy(v), dtype=np.float64))
            if isinstance(v, torch.Tensor)
            else np.asarray(v, dtype=np.float64)
            for name, v in getattr(optimizer, "state", {}).get(tensor, {}).items()
        }
    return result


def pairs_on(model: nn.Module, pairs: list[LayerPair]) -> list[LayerPair]:
    """``pairs`` pointed at the same-named modules of ``model`` (a copy of their model)."""
    modules = dict(model.named_modules())
    return [
        LayerPair(p.name, p.layer, p.module_name, modules[p.module_name], p.params) for p in pairs
    ]


def float64_step(
    model: nn.Module, loss: Any, optimizer: Any, pairs: list[LayerPair], x: np.ndarray, target: Any
) -> StepResult:
    """``reference_step`` of a float64 copy of the reference on a float64 copy of x (N, ...);
    the target is made float64 with the copy's tensors, where it is floating."""
    return reference_step(
        model, loss, optimizer, pairs, x.astype(np.float64), target, torch.float64
    )


@dataclass
class Shadow:
    """A float64 twin of the reference, stepped alongside, to measure how far the reference's
    own float32 run drifts from float64."""

    model: nn.Module
    optimizer: Any
    pairs: list[LayerPair]
    loss: Any

    @staticmethod
    def make(ref_model: nn.Module, ref_optimizer: Any, pairs: list[LayerPair], loss: Any) -> Shadow:
        """Copy the reference and its optimiser together (so parameter groups, learning rates
        and state carry over) and move the copy to float64 in place."""
        model, opt = copy.deepcopy((ref_model, ref_optimizer))
        model.double()
        return Shadow(model, opt, pairs_on(model, pairs), loss)

    def step(self, x: np.ndarray, target: np.ndarray) -> StepResult:
        """The twin's step on float64 copies of (x, target). Stepped on every batch the
        reference is, it stays in lockstep with it: its gap to the float32 reference is the
        reference's own float32 drift so far, what earlier steps' rounding carried into this
        one included."""
        return float64_step(self.model, self.loss, self.optimizer, self.pairs, x, target)
