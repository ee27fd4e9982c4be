"""The referee: when ours and the reference disagree on a gradient, central differences of
each side's own forward (in float64) say which side's backward is right.

For a layer probed with upstream gradient R, the scalar f(v) = sum(R * layer(x; v)) has
directional derivative <grad_v, d> along d; both are compared along a few random directions.
Verdicts name the side that matches the numbers: "ours", "reference", "neither",
or "both" (each matches its own forward: the forwards differ).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import numpy as np
import torch

from gradparity.pairing.align import LayerPair
from gradparity.reference.layout import to_torch_layout
from gradparity.sides.adapt import params_of

DIRECTIONS = 3
# Central differences in float64 with this step are accurate to ~1e-9 relative; a wrong
# gradient is off by O(1) relative, so 1e-5 separates them with margin on both sides.
RELATIVE_STEP = 1e-6
AGREEMENT = 1e-5


def _central(f: Callable[[float], float], h: float) -> float:
    return (f(h) - f(-h)) / (2.0 * h)


def _agrees(numeric: float, analytic: float, scale: float) -> bool:
    return abs(numeric - analytic) <= AGREEMENT * (abs(numeric) + abs(analytic) + scale)


def _ours_value(
    layer, x: np.ndarray, upstream: np.ndarray, key: str | None, d: np.ndarray, h: float
) -> float:
    fresh = copy.deepcopy(layer)
    xin = x.astype(np.float64, copy=True)
    if key is None:
        xin += h * d
    else:
        params_of(fresh)[key][...] += h * d
    return float(np.sum(upstream * np.asarray(fresh.forward(xin), dtype=np.float64)))


def _ref_value(
    pair: LayerPair, x: np.ndarray, upstream: np.ndarray, key: str | None, d: np.ndarray, h: float
) -> float:
    module = copy.deepcopy(pair.torch_module).double()
    xin = torch.as_tensor(x, dtype=torch.float64).clone()
    with torch.no_grad():
        if key is None:
            xin += h * torch.as_tensor(d)
        else:
            pp = next(p for p in pair.params if p.key == key)
            tparam = dict(module.named_parameters())[pp.torch_name]
            tparam.add_(h * torch.as_tensor(to_torch_layout(d, pp.conversion, pp.torch_shape)))
        return float(torch.sum(torch.as_tensor(upstream) * module(xin)))


def _judge(
    ours_f: Callable[[np.ndarray, float], float],
    ref_f: Callable[[np.ndarray, float], float],
    ours_grad: np.ndarray | None,
    ref_grad: np.ndarray,
    h: float,
    rng: np.random.Generator,
) -> dict:
    """Compare each side's analytic gradient with central differences of its own function
    along random directions; ``f(d, s)`` is the function at the base point moved by ``s * d``."""
    ours_ok = ref_ok = True
    same_shape = ours_grad is not None and np.shape(ours_grad) == ref_grad.shape
    for _ in range(DIRECTIONS):
        d = rng.standard_normal(ref_grad.shape)
        scale = float(np.abs(ref_grad).sum() * np.abs(d).max())
        fd_ref = _central(functools.partial(ref_f, d), h)
        ref_ok &= _agrees(fd_ref, float(np.sum(ref_grad * d)), scale)
        if ours_grad is not None and same_shape:
            fd_ours = _central(functools.partial(ours_f, d), h)
            ours_ok &= _agrees(fd_ours, float(np.sum(ours_grad * d)), scale)
    ours_ok &= same_shape
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
    key = None if quantity == "grad_input" else quantity[5:]
    base = x if key is None else np.asarray(params_of(pair.layer)[key], dtype=np.float64)
    h = RELATIVE_STEP * max(1.0, float(np.abs(base).max()))
    return _judge(
        lambda d, s: _ours_value(pair.layer, x, upstream, key, d, s),
        lambda d, s: _ref_value(pair, x, upstream, key, d, s),
        ours_grad,
        ref_grad,
        h,
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

    def ours_f(d: np.ndarray, s: float) -> float:
        return float(copy.deepcopy(ours_loss).forward(z + s * d, target))

    def ref_f(d: np.ndarray, s: float) -> float:
        with torch.no_grad():
            return float(reference_loss(torch.as_tensor(z + s * d, dtype=torch.float64), tgt))

    h = RELATIVE_STEP * max(1.0, float(np.abs(z).max()))
    return _judge(ours_f, ref_f, ours_grad, ref_grad, h, rng)
