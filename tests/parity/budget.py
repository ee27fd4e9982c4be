"""The one rule every parity test judges by, and the runs it judges.

float64: ours equals torch's float64 result to round-off. float32: ours' float32 result is
compared with the exact value (torch in float64 on the same float32 inputs and weights), and
may be off by what the library allows a float32 run (``gradparity.evidence.float32_budget``):
``DRIFT_FACTOR`` times torch's own float32 rounding on those inputs (max|torch float32 -
torch float64|), at least ``FLOOR_ULPS`` float32 ulps of the tensor's scale, or of its
operands' for a gradient, as ``gp.compare`` takes them (``sides/reference_twin``): the upstream
gradient for dL/dx, that times the largest input for a parameter's; and never below a few
float64 ulps of the inputs, the exact value's own rounding. A fixed rtol
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
from gradparity.evidence.float32_budget import FLOAT32_EPS, FLOOR_ULPS, measured_budget
from gradparity.reference.layout import to_ours_layout
from gradparity.reference.mirror import _pairs, mirror_layer, mirror_loss

DTYPES = {"float64": (np.float64, torch.float64), "float32": (np.float32, torch.float32)}
# float64 has no more exact run to measure against: round-off of a few operations.
RTOL64 = 1e-10
ATOL64 = 1e-12
FLOAT64_EPS = float(np.finfo(np.float64).eps)

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
    what: str,
    ours: Any,
    exact: Any,
    torch32: Any = None,
    operands: float = 0.0,
    inputs: float = 0.0,
    shaken: Any = None,
) -> None:
    """ours equals ``exact`` (torch float64; same shape): to round-off when ``torch32`` is
    None, else within the float32 budget measured from ``torch32`` (torch's float32 result).
    ``operands``: the largest magnitude a gradient was computed from, where cancellation can
    leave the gradient far below it (a torch that happens to round kindly on one input then
    still leaves ours a few ulps of it). ``inputs``: the largest input the value was computed
    from; ``exact`` itself is only exact to a few float64 ulps of it (torch's float64 GELU
    cancels 1 + tanh(u) to 0 deep in the tail, where y is 1e-33), so the budget is never
    below that. ``shaken``: torch float64 with its operands nudged by a float32 ulp; how far
    it moves (``conditioning``) is added to the budget, as ``gp.compare`` adds it."""
    ours, exact = np.asarray(ours), np.asarray(exact, dtype=np.float64)
    assert ours.shape == exact.shape, f"{what}: ours {ours.shape}, torch {exact.shape}"
    if torch32 is None:
        scale = float(np.abs(exact).max(initial=0.0))
        np.testing.assert_allclose(
            ours, exact, rtol=RTOL64, atol=RTOL64 * scale + ATOL64, err_msg=what
        )
        return
    moved = None if shaken is None else conditioning(shaken, exact)
    budget = measured_budget(np.asarray(torch32), exact, exact, operands, moved)
    allowed = max(budget.allowed, FLOOR_ULPS * FLOAT64_EPS * max(operands, inputs))
    error = float(element_errors(ours, exact).max(initial=0.0))
    drift = "not rounding" if budget.drift is None else f"{budget.drift:.3g}"
    assert error <= allowed, (
        f"{what}: float32 error {error:.3g} against float64 over its budget "
        f"{allowed:.3g} (torch's own float32 drift {drift}, scale {budget.scale:.3g}, "
        f"operands {operands:.3g}, inputs {inputs:.3g})"
    )


@dataclass
class TorchRun:
    """One pass of a torch mirror: its output, dL/dx (None for integer inputs), the parameter
    gradients keyed and laid out as ours' params, and the module after it ran."""

    output: np.ndarray
    grad_input: np.ndarray | None
    grads: dict[str, np.ndarray]
    module: nn.Module


def torch_run(
    layer: Any,
    module: nn.Module,
    x: np.ndarray,
    upstream: np.ndarray,
    dtype: str,
    nudge: np.random.Generator | None = None,
):
    """A copy of ``module`` (the mirror of ``layer``) run in ``dtype`` on x (N, ...) under
    ``upstream`` (like the output); with ``nudge``, its parameters and x each moved by one
    float32 ulp (``nudged``) first."""
    tdtype = DTYPES[dtype][1]
    module = copy.deepcopy(module).to(tdtype)
    if nudge is not None:
        x = nudged(x, nudge)
        with torch.no_grad():
            for tparam in module.parameters():
                tparam.copy_(torch.as_tensor(nudged(tparam.numpy(), nudge)))
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


def nudged(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A float64 copy of ``values`` moved by one relative float32 ulp up or down at random;
    whole numbers (indices, class targets) as they are."""
    values = np.asarray(values)
    if values.dtype.kind != "f" or np.array_equal(values, np.round(values)):
        return values
    signs = rng.choice([-1.0, 1.0], size=values.shape)
    return values.astype(np.float64) * (1.0 + FLOAT32_EPS * signs)


def conditioning(shaken: Any, exact: Any) -> float:
    """max|shaken - exact|: what one float32 rounding of the operands makes of a value, an
    error any float32 implementation may commit (the library's ``conditioning``)."""
    return float(np.abs(np.asarray(shaken) - np.asarray(exact)).max(initial=0.0))


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
    rounded, shaken = None, None
    if dtype == "float32":
        rounded = torch_run(layer, module, x, upstream, "float32")
        shaken = torch_run(layer, module, x, upstream, "float64", np.random.default_rng(0))
    assert out.dtype == np_dtype, f"ours' output is {out.dtype} for {dtype}"
    # Integer indices select weight rows: a parameter gradient sums upstream values times 1.
    upstream_scale = _largest(upstream)
    input_scale = _largest(x) if x.dtype.kind == "f" else 1.0
    assert_parity(
        "output",
        out,
        exact.output,
        rounded and rounded.output,
        inputs=input_scale,
        shaken=shaken and shaken.output,
    )
    if exact.grad_input is not None:
        assert grad_x.dtype == np_dtype, f"ours' dL/dx is {grad_x.dtype} for {dtype}"
        theirs32 = rounded and rounded.grad_input
        assert_parity(
            "grad_input",
            grad_x,
            exact.grad_input,
            theirs32,
            upstream_scale,
            shaken=shaken and shaken.grad_input,
        )
    assert set(layer.grads) == set(exact.grads)
    for key, grad in layer.grads.items():
        assert grad.dtype == np_dtype, f"ours' grad:{key} is {grad.dtype} for {dtype}"
        theirs32 = rounded and rounded.grads[key]
        operands = upstream_scale * input_scale
        assert_parity(
            f"grad:{key}",
            grad,
            exact.grads[key],
            theirs32,
            operands,
            shaken=shaken and shaken.grads[key],
        )
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
    rounded, shaken = (None, None), (None, None)
    if dtype == "float32":
        rounded = _torch_loss(loss, z, target, "float32")
        shaken = _torch_loss(loss, nudged(z, np.random.default_rng(0)), target, "float64")
    assert grad.dtype == np_dtype, f"ours' dL/dz is {grad.dtype} for {dtype}"
    # A loss and its gradient are differences of values as large as the logits, the targets
    # and 1 (log-sum-exp minus the target's logit; probabilities minus a one-hot), averaged:
    # where they cancel, what is left holds an ulp of those.
    target_scale = _largest(target) if target.dtype.kind == "f" else 0.0
    operands = max(1.0, _largest(z), target_scale)
    per_example = 2.0 * operands / (z.shape[0] if z.ndim else 1)
    assert_parity("loss", value, exact[0], rounded[0], operands, shaken=shaken[0])
    assert_parity("grad_input", grad, exact[1], rounded[1], per_example, shaken=shaken[1])
