"""The three mistakes of a hand-written convolution's input gradient, each proved by running
the reference convolution once more with the mistake put in, on the input and upstream
gradient the probe fed the layer:

- ``flipped_kernel``: ours is the reference's input gradient with the kernel flipped 180
  degrees: the upstream gradient was correlated with W where the transposed convolution needs
  W flipped (or flipped twice);
- ``padding_not_removed``: ours is the gradient of the padded input cut at its leading corner
  (``grad[..., :H, :W]``) instead of around the padding (``grad[..., p:p + H, p:p + W]``);
- ``stride_ignored``: ours is the input gradient of the same convolution at stride 1 whose
  upstream gradient holds ours' in its leading corner: grad_out was laid on the input grid
  without the zeros the stride puts between its elements.

Against autodiff of an ours ``Conv2d``'s own forward the reference is no convolution module:
its torch mirror stands in, once it gives the reference's input gradient at the same point.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from gradparity.core.labels import (
    FLIPPED_KERNEL,
    PADDING_NOT_REMOVED,
    STRIDE_IGNORED,
    UNEXPLAINED,
)
from gradparity.core.plan import Context
from gradparity.core.row import Row
from gradparity.core.tolerance import Tolerance
from gradparity.evidence.explain import _diverging
from gradparity.ours import Conv2d
from gradparity.reference.mirror import mirror_layer
from gradparity.sides.isolation import Probe
from gradparity.sides.layer_autodiff import OwnForwardModule

_WORDS = {
    FLIPPED_KERNEL: (
        "ours is the reference's input gradient with the kernel flipped 180 degrees: backward "
        "correlates grad_out with W where the transposed convolution needs W flipped",
        "correlate the stride-spread, padded grad_out with W[..., ::-1, ::-1] (a full "
        "convolution with W), or use the transposed convolution",
    ),
    PADDING_NOT_REMOVED: (
        "ours is the padded input's gradient cut at its leading corner: the padding was not "
        "removed from around it",
        "crop the padded gradient as grad[..., p:p + H, p:p + W], p the padding",
    ),
    STRIDE_IGNORED: (
        "ours is the input gradient at stride 1 of an upstream gradient holding grad_out in its "
        "corner: grad_out was not spread by the stride (stride - 1 zeros between its elements)",
        "place grad_out at every stride-th position of a zero array first, then correlate",
    ),
}


def _input_grad(module: nn.Module, x: np.ndarray, upstream: np.ndarray) -> np.ndarray:
    """dL/dx of ``module`` (converted to x's dtype in place: pass a copy) at x for dL/dy =
    ``upstream``."""
    dtype = torch.float32 if x.dtype == np.float32 else torch.float64
    x_t = torch.tensor(x, dtype=dtype, requires_grad=True)
    out = module.to(dtype)(x_t)
    (grad,) = torch.autograd.grad(out, [x_t], grad_outputs=torch.tensor(upstream, dtype=dtype))
    return grad.detach().cpu().numpy()


def _flipped(conv: _ConvNd, x: np.ndarray, upstream: np.ndarray) -> np.ndarray:
    """The reference's input gradient with the kernel flipped along every spatial axis."""
    flipped = copy.deepcopy(conv)
    spatial = tuple(range(2, flipped.weight.ndim))
    with torch.no_grad():
        flipped.weight.copy_(flipped.weight.flip(spatial))
    return _input_grad(flipped, x, upstream)


def _corner_of_padded(conv: _ConvNd, x: np.ndarray, upstream: np.ndarray) -> np.ndarray | None:
    """The gradient of the zero-padded input cut at its leading corner to x's shape."""
    pads = conv.padding
    if isinstance(pads, str) or not any(pads):
        return None
    unpadded = copy.deepcopy(conv)
    unpadded.padding = tuple(0 for _ in pads)
    widths = [(0, 0), (0, 0), *((p, p) for p in pads)]
    grad = _input_grad(unpadded, np.pad(x, widths), upstream)
    return grad[tuple(slice(0, n) for n in x.shape)]


def _at_stride_one(conv: _ConvNd, x: np.ndarray, upstream: np.ndarray) -> np.ndarray | None:
    """The input gradient at stride 1 with ``upstream`` in the leading corner of its grid."""
    if all(s == 1 for s in conv.stride):
        return None
    dense = copy.deepcopy(conv)
    dense.stride = tuple(1 for _ in conv.stride)
    with torch.no_grad():
        shape = dense(torch.zeros(x.shape, dtype=dense.weight.dtype)).shape
    laid = np.zeros(tuple(shape), dtype=upstream.dtype)
    laid[tuple(slice(0, n) for n in upstream.shape)] = upstream
    return _input_grad(dense, x, laid)


_TESTS: dict[str, Callable[[_ConvNd, np.ndarray, np.ndarray], np.ndarray | None]] = {
    FLIPPED_KERNEL: _flipped,
    PADDING_NOT_REMOVED: _corner_of_padded,
    STRIDE_IGNORED: _at_stride_one,
}


def conv_mistake(
    conv: nn.Module, x: np.ndarray, upstream: np.ndarray, ours: np.ndarray, tol: Tolerance
) -> str | None:
    """The label whose mistake, put into the reference convolution ``conv``, reproduces ours
    (dL/dx, x's shape (N, C, ...)) at input x and upstream gradient (the output's shape);
    None when none does or ``conv`` is not a plain zero-padded convolution."""
    if not isinstance(conv, _ConvNd) or conv.transposed or conv.padding_mode != "zeros":
        return None
    for label, test in _TESTS.items():
        candidate = test(conv, x, upstream)
        if candidate is not None and tol.matches(ours, candidate):
            return label
    return None


def reference_conv(probe: Probe, tol: Tolerance) -> nn.Module:
    """The convolution to put the mistakes into: the reference module itself, or, when the
    reference is autodiff of an ours ``Conv2d``'s own forward, that layer's torch mirror if
    it gives the reference's input gradient at the probe's input and upstream gradient (else
    the reference module, which ``conv_mistake`` then declines)."""
    module, x, upstream = probe.pair.torch_module, probe.ref.input, probe.upstream
    if not isinstance(module, OwnForwardModule) or not isinstance(module.own.layer, Conv2d):
        return module
    twin = mirror_layer(module.own.layer)
    ref = probe.ref.grad_input
    if x is None or upstream is None or ref is None:
        return module
    same = tol.matches(_input_grad(copy.deepcopy(twin), x, upstream), ref)
    return twin if same else module


def _name(row: Row, label: str) -> None:
    row.diagnosis = label
    row.message, row.fix = _WORDS[label]


def conv_probe(ctx: Context) -> None:
    """``compare``'s evidence step: each ``unexplained`` input gradient of a layer whose
    reference is a convolution, reproduced by one of the three mistakes, gets its label."""
    for row, probe in _diverging(ctx):
        if row.diagnosis != UNEXPLAINED or row.quantity != "grad_input":
            continue
        x, ours = probe.ref.input, probe.ours.grad_input
        if x is None or ours is None or probe.upstream is None:
            continue
        conv = reference_conv(probe, ctx.tolerance)
        label = conv_mistake(conv, x, probe.upstream, ours, ctx.tolerance)
        if label is not None:
            _name(row, label)
