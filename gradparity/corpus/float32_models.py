"""Correct float32 models with their inputs, for measuring float32 false findings: each must
give no finding against its torch mirror at every seed and input scale (issue 15, item 3).

``MODELS`` maps a name to ``build(seed, scale) -> (model, loss, x, target)``: parameters and
x in float32, x a standard normal batch times ``scale``. The tanh and sigmoid networks are the
ones whose saturated derivatives lost their digits to a fixed float32 tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradparity.ours import (
    GELU,
    Conv2d,
    Flatten,
    LayerNorm,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    SoftmaxCrossEntropy,
    mlp,
)
from gradparity.ours.layers import Sigmoid, Tanh

FLOAT32 = np.float32
SCALES = (1e-3, 1.0, 1e3)  # the input scales every model is measured at
Setup = tuple[Sequential, Any, np.ndarray, np.ndarray]


def as_float32(model: Sequential) -> Sequential:
    """``model`` with every float parameter and running statistic cast to float32 in place."""
    for _, layer in model.named_layers():
        for key, value in layer.params.items():
            layer.params[key] = value.astype(FLOAT32)
        for stat in ("running_mean", "running_var"):
            if isinstance(getattr(layer, stat, None), np.ndarray):
                setattr(layer, stat, getattr(layer, stat).astype(FLOAT32))
    return model


def _batch(seed: int, scale: float, shape: tuple[int, ...], classes: int) -> tuple:
    """(x (shape) float32 times ``scale``, integer targets (shape[0],))."""
    rng = np.random.default_rng(seed + 1)
    x = (rng.standard_normal(shape) * scale).astype(FLOAT32)
    return x, rng.integers(0, classes, size=shape[0])


def _mlp(activation: type) -> Callable[[int, float], Setup]:
    def build(seed: int, scale: float) -> Setup:
        """x (8, 20) -> 32 -> 32 -> 5 logits, ``activation`` between Linear layers."""
        model = as_float32(mlp((20, 32, 32, 5), seed=seed, activation=activation))
        return (model, SoftmaxCrossEntropy(), *_batch(seed, scale, (8, 20), 5))

    return build


def _cnn(seed: int, scale: float) -> Setup:
    """x (4, 1, 8, 8) -> conv 3x3 (4 channels, padding 1) -> ReLU -> max pool 2 -> flatten
    -> Linear -> 5 logits."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("conv1", Conv2d(1, 4, 3, padding=1, rng=rng, dtype=FLOAT32)),
        ("act1", ReLU()),
        ("pool1", MaxPool2d(2)),
        ("flat", Flatten()),
        ("fc", Linear(64, 5, rng=rng, dtype=FLOAT32)),
    )
    return (model, SoftmaxCrossEntropy(), *_batch(seed, scale, (4, 1, 8, 8), 5))


def _norm_mlp(seed: int, scale: float) -> Setup:
    """x (8, 12) -> Linear 16 -> LayerNorm -> GELU -> Linear -> 4 logits."""
    rng = np.random.default_rng(seed)
    model = Sequential(
        ("fc1", Linear(12, 16, rng=rng, dtype=FLOAT32)),
        ("norm1", LayerNorm(16, rng=rng, dtype=FLOAT32)),
        ("act1", GELU()),
        ("fc2", Linear(16, 4, rng=rng, dtype=FLOAT32)),
    )
    return (model, SoftmaxCrossEntropy(), *_batch(seed, scale, (8, 12), 4))


MODELS: dict[str, Callable[[int, float], Setup]] = {
    "tanh-mlp": _mlp(Tanh),
    "sigmoid-mlp": _mlp(Sigmoid),
    "cnn": _cnn,
    "norm-mlp": _norm_mlp,
}
