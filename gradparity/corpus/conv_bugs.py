"""Known bugs of the convolution layers (``ours/conv.py``), each a one-method subclass.

The three mistakes of a hand-written convolution's input gradient: the kernel not flipped
(cross-correlation where the transposed convolution needs a convolution), the padding
forgotten when cutting the gradient of the padded input back to the input, and the stride
forgotten when the upstream gradient is laid back onto the input grid. Each goes into
``conv2`` of ``conv_network`` (strided and padded), whose weight and bias gradients stay
right; and an average pool whose gradient forgets the mean's division, in ``pool1``.
``BUGS`` says where gradparity must find each; the shared corpus registers them.
"""

from __future__ import annotations

import numpy as np

from gradparity.corpus.layer_bugs import Bug, _bug
from gradparity.ours import (
    AvgPool2d,
    Conv2d,
    Flatten,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    SoftmaxCrossEntropy,
    Tanh,
)
from gradparity.ours.conv import (
    _avgpool_bwd,
    _crop,
    _flip,
    _full_correlation,
    _padded_size,
    _spread_by_stride,
)


class ConvInputGradNotFlipped(Conv2d):
    def backward(self, grad_out):
        super().backward(grad_out)  # weight and bias gradients stay right
        assert self._x is not None, "backward before forward"  # the harness runs forward first
        padded = _padded_size(self._x.shape, self.padding)
        spread = _spread_by_stride(grad_out, self.stride)
        grad = _full_correlation(spread, self.params["W"], padded, self.options)  # W, not flipped
        return _crop(grad, self.padding, self._x.shape[2:])


class ConvPaddingIgnoredInBackward(Conv2d):
    def backward(self, grad_out):
        super().backward(grad_out)
        assert self._x is not None, "backward before forward"
        padded = _padded_size(self._x.shape, self.padding)
        spread = _spread_by_stride(grad_out, self.stride)
        grad = _full_correlation(spread, _flip(self.params["W"]), padded, self.options)
        height, width = self._x.shape[2:]
        return grad[:, :, :height, :width]  # the padded gradient cut at its corner, pad kept


class ConvStrideIgnoredInBackward(Conv2d):
    def backward(self, grad_out):
        super().backward(grad_out)
        assert self._x is not None, "backward before forward"
        padded = _padded_size(self._x.shape, self.padding)
        # grad_out laid on the input grid at stride 1, not spread by the stride
        grad = _full_correlation(grad_out, _flip(self.params["W"]), padded, self.options)
        return _crop(grad, self.padding, self._x.shape[2:])


class AvgPoolGradNotDivided(AvgPool2d):
    def backward(self, grad_out):
        kh, kw = self.pool["kernel"]
        # the gradient of a sum pool: each window's gradient copied whole to its elements
        return _avgpool_bwd(self._shape, grad_out, self.pool) * (kh * kw)


def conv_network(seed: int, conv2: type = Conv2d, pool1: type = MaxPool2d):
    """x (4, 2, 8, 8) -> conv1 3x3 pad 1 -> relu -> 2x2 pool (max) -> conv2 3x3 stride 2
    pad 1 -> tanh -> flatten -> fc -> logits (4, 3), softmax cross-entropy."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("conv1", Conv2d(2, 3, 3, padding=1, rng=rng)),
        ("act1", ReLU()),
        ("pool1", pool1(2)),
        ("conv2", conv2(3, 4, 3, stride=2, padding=1, rng=rng)),
        ("act2", Tanh()),
        ("flat", Flatten()),
        ("fc", Linear(16, 3, rng=rng)),
    )
    x = rng.standard_normal((4, 2, 8, 8))
    target = rng.integers(0, 3, size=4)
    return model, SoftmaxCrossEntropy(), x, target


BUGS: list[Bug] = [
    _bug(
        "conv_input_grad_not_flipped",
        "conv input gradient correlates with W instead of the kernel flipped by 180 degrees",
        "conv2",
        "grad_input",
        "flipped_kernel",
        lambda s: conv_network(s, conv2=ConvInputGradNotFlipped),
    ),
    _bug(
        "conv_padding_ignored_in_backward",
        "conv input gradient cut from the padded one at its corner, the padding not removed",
        "conv2",
        "grad_input",
        "padding_not_removed",
        lambda s: conv_network(s, conv2=ConvPaddingIgnoredInBackward),
    ),
    _bug(
        "conv_stride_ignored_in_backward",
        "conv input gradient with grad_out not spread by the stride",
        "conv2",
        "grad_input",
        "stride_ignored",
        lambda s: conv_network(s, conv2=ConvStrideIgnoredInBackward),
    ),
    _bug(
        "avg_pool_grad_not_divided",
        "average pool gradient not divided by the window size (a sum pool's gradient)",
        "pool1",
        "grad_input",
        "scaled",
        lambda s: conv_network(s, pool1=AvgPoolGradNotDivided),
    ),
]
