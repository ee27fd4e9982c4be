"""The referee: when ours and the reference disagree on a gradient, central differences of
each side's own forward (in float64) say which side's backward is right.

For a layer probed with upstream gradient R, the scalar f(v) = sum(R * layer(x; v)) has
directional derivative <grad_v, d> along d; both are compared along a few random directions
(step and directions from ``central_difference``, the same engine ``compare_function`` uses).
Verdicts name the side that matches the numbers: "ours", "reference", "neither",
or "both" (each matches its own forward: the forwards differ).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from gradparity.core.address import Address
from gradparity.evidence import central_difference
from gradparity.evidence.central_difference import Moved
from gradparity.pairing.align import LayerPair
from gradparity.reference.layout import to_torch_layout
from gradparity.sides.adapt import params_of

DIRECTIONS = 3
# Central differences in float64 (central_difference's step) are accurate to ~1e-9 relative;
# a wrong gradient is off by O(1) relative, so 1e-5 separates them with margin on both sides.
AGREEMENT = 1e-5


def _agrees(numeric: float, analytic: float, scale: float) -> bool:
    return abs(numeric - analytic) <= AGREEMENT * (abs(numeric) + abs(analytic) + scale)


def _ours_moved(layer, x: np.ndarray, upstream: np.ndarray, key: str | None) -> Moved:
    """sum(upstream * ours' forward) with the input (key None) or parameter ``key`` moved."""

    def value(step: np.ndarray) -> float:
        fresh = copy.deepcopy(layer)
        xin = x.astype(np.float64, copy=True)
        if key is None:
            xin += step
        else:
            params_of(fresh)[key][...] += step
        return float(np.sum(upstream * np.asarray(fresh.forward(xin), dtype=np.float64)))

    return value


def _ref_moved(pair: LayerPair, x: np.ndarray, upstream: np.ndarray, key: str | None) -> Moved:
    """The same for the reference module in float64; a parameter step (ours' layout) is
    converted to the torch parameter's layout."""

    def value(step: np.ndarray) -> float:
        module = copy.deepcopy(pair.torch_module).double()
        xin = torch.as_tensor(x, dtype=torch.float64).clone()
        with torch.no_grad():
            if key is None:
                xin += torch.as_tensor(step)
            else:
                pp = next(p for p in pair.params if p.key == key)
                tparam: torch.Tensor = dict(module.named_parameters())[pp.torch_name]
                tparam += torch.as_tensor(to_torch_layout(step, pp.conversion, pp.torch_shape))
            return float(torch.sum(torch.as_tensor(upstream) * module(xin)))

    return value


def _judge(
    ours_f: Moved,
    ref_f: Moved,
    ours_grad: np.ndarray | None,
    ref_grad: np.ndarray,
    base: np.ndarray,
    rng: np.random.Generator,
) -> dict:
    """Compare each side's analytic gradient with central differences of its own function
    (``f(step)``: the value at ``base`` moved by ``step``) along the same random directions."""
    same_shape = ours_grad is not None and np.shape(ours_grad) == ref_grad.shape
    directions = central_difference.random_directions(ref_grad.shape, DIRECTIONS, rng)
    h = central_difference.step_size(base)
    # Per direction, as much error as the reference's gradient could carry along it.
    scales = [float(np.abs(ref_grad).sum() * np.abs(d).max()) for d in directions]

    def matches(f: Moved, grad: np.ndarray) -> bool:
        numeric = central_difference.slopes(f, directions, h)
        analytic = central_difference.along(grad, directions)
        return all(map(_agrees, numeric, analytic, scales))

    ref_ok = matches(ref_f, ref_grad)
    ours_ok = same_shape and matches(ours_f, np.asarray(ours_grad))
    referee = {
        (True, False): "ours",
        (False, True): "reference",
        (False, False): "neither",
        (True, True): "both",
    }[(bool(ours_ok), bool(ref_ok))]
    return {
        "referee": referee,
        "directions": DIRECTIONS,
        "ours_matches_numeric": bool(ours_ok),
        "reference_matches_numeric": bool(ref_ok),
    }


def referee_layer(
    pair: LayerPair,
    x: np.ndarray,
    upstream: np.ndarray,
    quantity: str,
    ours_grad: np.ndarray | None,
    ref_grad: np.ndarray,
    rng: np.random.Generator,
) -> dict:
    """Verdict for one gradient quantity ("grad_input" or "grad:<key>") of a layer.

    x (N, ...) the probe input, upstream like the output, grads in ours' layout.
    """
    key = Address.parse(quantity).name  # None for grad_input
    base = x if key is None else np.asarray(params_of(pair.layer)[key], dtype=np.float64)
    return _judge(
        _ours_moved(pair.layer, x, upstream, key),
        _ref_moved(pair, x, upstream, key),
        ours_grad,
        ref_grad,
        base,
        rng,
    )


def referee_loss(
    ours_loss,
    reference_loss: Callable,
    logits: np.ndarray,
    target: np.ndarray,
    ours_grad: np.ndarray | None,
    ref_grad: np.ndarray,
    rng: np.random.Generator,
) -> dict:
    """Verdict for the loss gradient dL/dlogits (logits (N, C))."""
    tgt = torch.as_tensor(target)
    tgt = tgt.double() if tgt.is_floating_point() else tgt
    z = logits.astype(np.float64)

    def ours_f(step: np.ndarray) -> float:
        return float(copy.deepcopy(ours_loss).forward(z + step, target))

    def ref_f(step: np.ndarray) -> float:
        with torch.no_grad():
            return float(reference_loss(torch.as_tensor(z + step, dtype=torch.float64), tgt))

    return _judge(ours_f, ref_f, ours_grad, ref_grad, z, rng)
