"""The one rule every parity test judges by, and the runs it judges.

float64: ours equals torch's float64 result to round-off. float32: ours' float32 result is
compared with the exact value (torch in float64 on the same float32 inputs and weights), and
may be off by what the library allows a float32 run (``gradparity.evidence.float32_budget``):
``DRIFT_FACTOR`` times torch's own float32 rounding on those inputs (max|torch float32 -
torch float64|), at least ``FLOOR_ULPS`` float32 ulps of the tensor's scale, or of its
operands' for a gradient, as ``gp.compare`` takes them (``sides/reference_twin``): the upstream
gradient for dL/dx, that times the largest input for a parameter's. A fixed rtol
would flag correct layers wherever both sides cancel (GELU's 1 + tanh(u) near -1) and pass
real bugs in tensors whose rounding is tiny.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from hypothesis import settings
from hypothesis import strategies as st
from torch import nn

from gradparity.core.tolerance import element_errors
from gradparity.evidence.float32_budget import measured_budget
from gradparity.reference.layout import to_ours_layout
from gradparity.reference.mirror import _pairs, mirror_layer, mirror_loss

DTYPES = {"float64": (np.float64, torch.float64), "float32": (np.float32, torch.float32)}
# float64 has no more exact run to measure against: round-off of a few operations.
RTOL64 = 1e-10
ATOL64 = 1e-12

dtypes = st.sampled_from(sorted(DTYPES))
seeds = st.integers(0, 2**32 - 1)

# The classes a parity test declares it checks (``covers``): the meta-test compares them with
# what ``gradparity.ours`` exports.
COVERED: set[type] = set()
_Test = TypeVar("_Test", bound=Callable[..., Any])


def covers(*classes: type) -> Callable[[_Test], _Test]:
    """Mark a test as the parity test of ``classes``."""

    def mark(test: _Test) -> _Test:
        COVERED.update(classes)
        return test

    return mark


def examples(ci_count: int) -> settings:
    """``ci_count`` examples under the ``ci`` profile, scaled with the loaded profile's
    ``max_examples`` (``explore`` draws 20 times as many)."""
    factor = settings.default.max_examples / settings.get_profile("ci").max_examples
    return settings(max_examples=max(1, round(ci_count * factor)), deadline=None)


def assert_parity(
    what: str, ours: Any, exact: Any, torch32: Any = None, operands: float = 0.0
) -> None:
    """ours equals ``exact`` (torch float64; same shape): to round-off when ``torch32`` is
    None, else within the float32 budget measured from ``torch32`` (torch's float32 result).
    ``operands``: the largest magnitude a gradient was computed from, where cancellation can
    leave the gradient far below it (a torch that happens to round kindly on one input then
    still leaves ours a few ulps of it)."""
    ours, exact = np.asarray(ours), np.asarray(exact, dtype=np.float64)
    assert ours.shape == exact.shape, f"{what}: ours {ours.shape}, torch {exact.shape}"
    if torch32 is None:
        scale = float(np.abs(exact).max(initial=0.0))
        np.testing.assert_allclose(
            ours, exact, rtol=RTOL64, atol=RTOL64 * scale + ATOL64, err_msg=what
        )
        return
    budget = measured_budget(np.asarray(torch32), exact, exact, operands)
    error = float(element_errors(ours, exact).max(initial=0.0))
    drift = "not rounding" if budget.drift is None else f"{budget.drift:.3g}"
    assert error <= budget.allowed, (
        f"{what}: float32 error {error:.3g} against float64 over its budget "
        f"{budget.allowed:.3g} (torch's own float32 drift {drift}, scale {budget.scale:.3g}, "
        f"operands {operands:.3g})"
    )


@dataclass
class TorchRun:
    """One pass of a torch mirror: its output, dL/dx (None for integer inputs), the parameter
    gradients keyed and laid out as ours' params, and the module after it ran."""

    output: np.ndarray
    grad_input: np.ndarray | None
    grads: dict[str, np.ndarray]
    module: nn.Module


def torch_run(layer: Any, module: nn.Module, x: np.ndarray, upstream: np.ndarray, dtype: str):
    """A copy of ``module`` (the mirror of ``layer``) run in ``dtype`` on x (N, ...) under
    ``upstream`` (like the output)."""
    tdtype = DTYPES[dtype][1]
    module = copy.deepcopy(module).to(tdtype)
    x_t = torch.as_tensor(x)
    if x_t.is_floating_point():
        x_t = x_t.to(tdtype).requires_grad_(True)
    pairs = list(_pairs(layer, module))
    out = module(x_t)
    wrt = ([x_t] if x_t.requires_grad else []) + [tparam for _, tparam, _ in pairs]
    grads = torch.autograd.grad(out, wrt, torch.as_tensor(upstream).to(tdtype)) if wrt else ()
    by_key = {
        key: to_ours_layout(g.numpy(), conversion, layer.params[key].shape)
        for (key, _, conversion), g in zip(pairs, grads[len(grads) - len(pairs) :])
    }
    grad_x = grads[0].numpy() if x_t.requires_grad else None
    return TorchRun(out.detach().numpy(), grad_x, by_key, module)


def in_dtype(layer: Any, dtype: str) -> Any:
    """``layer`` with its parameters cast to ``dtype`` (a copy of each only where needed)."""
    for key, value in layer.params.items():
        layer.params[key] = value.astype(DTYPES[dtype][0], copy=False)
    return layer


def check_layer(
    layer: Any, x: np.ndarray, dtype: str, rng: np.random.Generator
) -> tuple[TorchRun, TorchRun | None]:
    """ours' forward, dL/dx and every parameter gradient against its mirror's under a random
    upstream gradient, ``layer``'s parameters and a float x (N, ...) taken in ``dtype`` (ours
    keeps it). Returns (torch's float64 run, its float32 run or None in float64)."""
    np_dtype = DTYPES[dtype][0]
    in_dtype(layer, dtype)
    if x.dtype.kind == "f":
        x = x.astype(np_dtype)
    module = mirror_layer(layer)  # before ours' forward: batch norm moves its statistics
    out = layer.forward(x.copy())
    upstream = rng.standard_normal(out.shape).astype(np_dtype)
    grad_x = layer.backward(upstream.copy())
    exact = torch_run(layer, module, x, upstream, "float64")
    rounded = torch_run(layer, module, x, upstream, "float32") if dtype == "float32" else None
    assert out.dtype == np_dtype, f"ours' output is {out.dtype} for {dtype}"
    # Integer indices select weight rows: a parameter gradient sums upstream values times 1.
    upstream_scale = _largest(upstream)
    input_scale = _largest(x) if x.dtype.kind == "f" else 1.0
    assert_parity("output", out, exact.output, rounded and rounded.output)
    if exact.grad_input is not None:
        assert grad_x.dtype == np_dtype, f"ours' dL/dx is {grad_x.dtype} for {dtype}"
        theirs32 = rounded and rounded.grad_input
        assert_parity("grad_input", grad_x, exact.grad_input, theirs32, upstream_scale)
    assert set(layer.grads) == set(exact.grads)
    for key, grad in layer.grads.items():
        assert grad.dtype == np_dtype, f"ours' grad:{key} is {grad.dtype} for {dtype}"
        theirs32 = rounded and rounded.grads[key]
        operands = upstream_scale * input_scale
        assert_parity(f"grad:{key}", grad, exact.grads[key], theirs32, operands)
    return exact, rounded


def _largest(values: np.ndarray) -> float:
    """max|values| (0 for an empty array)."""
    return float(np.abs(values).max(initial=0.0))


def _torch_loss(loss: Any, z: np.ndarray, target: np.ndarray, dtype: str):
    """(loss value, dL/dz) of ``loss``'s torch mirror in ``dtype``; a float target in it too."""
    tdtype = DTYPES[dtype][1]
    z_t = torch.as_tensor(z).to(tdtype).requires_grad_(True)
    t = torch.as_tensor(target)
    value = mirror_loss(loss)(z_t, t.to(tdtype) if t.is_floating_point() else t)
    (grad,) = torch.autograd.grad(value, [z_t])
    return value.detach().numpy(), grad.numpy()


def check_loss(loss: Any, z: np.ndarray, target: np.ndarray, dtype: str) -> None:
    """ours' loss value and dL/dz (like z) against torch's, z and a float target in ``dtype``."""
    np_dtype = DTYPES[dtype][0]
    z = z.astype(np_dtype)
    if target.dtype.kind == "f":
        target = target.astype(np_dtype)
    value = loss.forward(z.copy(), target.copy())
    grad = loss.backward()
    exact = _torch_loss(loss, z, target, "float64")
    rounded = _torch_loss(loss, z, target, "float32") if dtype == "float32" else (None, None)
    assert grad.dtype == np_dtype, f"ours' dL/dz is {grad.dtype} for {dtype}"
    assert_parity("loss", value, exact[0], rounded[0])
    assert_parity("grad_input", grad, exact[1], rounded[1])
