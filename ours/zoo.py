"""The model zoo beyond the MLP: small image and sequence classifiers built from ours' layers.

Every builder returns an ours ``Sequential`` whose torch twin is
``gradparity.reference.mirror(model)``; weights are seeded, biases non-zero. Images are NCHW
with one channel, sequences batch first. ``LastStep`` (a sequence's last time step) is the
one layer of this module: a sequence classifier needs it between its LSTM and its head.
"""

from __future__ import annotations

import numpy as np

from gradparity.ours.activations import GELU
from gradparity.ours.containers import Sequential
from gradparity.ours.conv import Conv2d, Flatten, MaxPool2d
from gradparity.ours.layers import Layer, Linear, ReLU
from gradparity.ours.norm import BatchNorm2d, Dropout, LayerNorm
from gradparity.ours.recurrent import LSTM, Residual

CONV_CHANNELS = (4, 8)  # channels of the two conv blocks: small, so ours' NumPy conv is quick


class LastStep(Layer):
    """A sequence's last time step: x (N, T, H) -> y (N, H) = x[:, -1]; backward puts the
    gradient there and zeros at the other steps."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 3:
            raise ValueError(f"LastStep takes a batch of sequences (N, T, H), got {x.shape}")
        self._shape = x.shape
        return x[:, -1]

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad_x = np.zeros(self._shape, dtype=grad_out.dtype)
        grad_x[:, -1] = grad_out
        return grad_x


def _pooled_side(image_size: int) -> int:
    """The side left after two 2x2 max pools (padded 3x3 convs keep it); at least 1."""
    side = image_size // 4
    if side < 1:
        raise ValueError(f"the conv models need images of at least 4x4, got {image_size}")
    return side


def _conv_block(
    index: int, in_channels: int, out_channels: int, rng: np.random.Generator, batch_norm: bool
) -> list[tuple[str, Layer]]:
    """conv (3x3, padding 1: the size is kept) [-> batch norm] -> ReLU -> 2x2 max pool.

    Before batch norm the conv has no bias: the norm subtracts it again, so its true gradient
    is zero and both sides would compare their round-off (float32 fails on that noise).
    """
    conv = Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm, rng=rng)
    layers: list[tuple[str, Layer]] = [(f"conv{index}", conv)]
    if batch_norm:
        layers.append((f"bn{index}", BatchNorm2d(out_channels, rng=rng)))
    layers += [(f"act{index}", ReLU()), (f"pool{index}", MaxPool2d(2))]
    return layers


def cnn(image_size: int = 28, n_classes: int = 10, seed: int = 0) -> Sequential:
    """Two conv blocks (Conv2d 3x3 - ReLU - MaxPool2d 2) and a linear head.

    x (N, 1, S, S) -> conv1 (4 ch) -> pool1 (S/2) -> conv2 (8 ch) -> pool2 (S/4) -> flatten
    (N, 8 (S/4)^2) -> fc -> logits (N, n_classes). S = 28 for MNIST, 8 for the digits.
    """
    rng = np.random.default_rng(seed)
    side = _pooled_side(image_size)
    first, second = CONV_CHANNELS
    return Sequential(
        *_conv_block(1, 1, first, rng, batch_norm=False),
        *_conv_block(2, first, second, rng, batch_norm=False),
        ("flatten", Flatten()),
        ("fc", Linear(second * side * side, n_classes, rng=rng)),
    )


def bn_cnn(
    image_size: int = 28, n_classes: int = 10, seed: int = 0, dropout: float = 0.25
) -> Sequential:
    """``cnn`` with BatchNorm2d after each (bias-free) conv and Dropout(p=dropout) before the
    head.

    Layers conv1, bn1, act1, pool1, conv2, bn2, act2, pool2, flatten, drop, fc; shapes as
    ``cnn``. Everything starts in training mode; the dropout layer is named "drop".
    """
    rng = np.random.default_rng(seed)
    side = _pooled_side(image_size)
    first, second = CONV_CHANNELS
    return Sequential(
        *_conv_block(1, 1, first, rng, batch_norm=True),
        *_conv_block(2, first, second, rng, batch_norm=True),
        ("flatten", Flatten()),
        ("drop", Dropout(dropout, rng=np.random.default_rng(seed + 1))),
        ("fc", Linear(second * side * side, n_classes, rng=rng)),
    )


def resmlp(
    n_features: int = 784, n_classes: int = 10, seed: int = 0, width: int = 32, blocks: int = 2
) -> Sequential:
    """A residual MLP: Linear to ``width``, ``blocks`` residual blocks, a linear head.

    Each block is y = x + fc2(GELU(fc1(LayerNorm(x)))), fc1 widening to 2 * width.
    x (N, n_features) -> fc_in -> block1 ... -> fc -> logits (N, n_classes).
    """
    rng = np.random.default_rng(seed)
    layers: list[tuple[str, Layer]] = [("fc_in", Linear(n_features, width, rng=rng))]
    for i in range(1, blocks + 1):
        block = Sequential(
            ("norm", LayerNorm(width, rng=rng)),
            ("fc1", Linear(width, 2 * width, rng=rng)),
            ("act", GELU()),
            ("fc2", Linear(2 * width, width, rng=rng)),
        )
        layers.append((f"block{i}", Residual(block)))
    layers.append(("fc", Linear(width, n_classes, rng=rng)))
    return Sequential(*layers)


def lstm_classifier(
    row_size: int = 28, n_classes: int = 10, seed: int = 0, hidden: int = 32
) -> Sequential:
    """An LSTM over an image's rows, its last step's output, a linear head.

    x (N, T, row_size) (an image's rows as a sequence) -> lstm (N, T, hidden) -> last
    (N, hidden) -> fc -> logits (N, n_classes).
    """
    rng = np.random.default_rng(seed)
    return Sequential(
        ("lstm", LSTM(row_size, hidden, rng=rng)),
        ("last", LastStep()),
        ("fc", Linear(hidden, n_classes, rng=rng)),
    )
