"""Correct float32 models with their inputs, for measuring float32 false findings: each must
give no finding against its torch mirror at every seed and input scale (issue 15, item 3).

``MODELS`` maps a name to ``build(seed, scale) -> (model, loss, x, target)``: parameters and
x in float32, x a standard normal batch times ``scale``. The tanh and sigmoid networks are the
ones whose saturated derivatives lost their digits to a fixed float32 tolerance. ``ZOO`` does
the same for every model of ``gradparity train --model`` (bn-cnn in training and in eval mode).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradparity.ours import (
    GELU,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    LayerNorm,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    SoftmaxCrossEntropy,
    assignment_network,
    mlp,
)
from gradparity.ours.layers import Sigmoid, Tanh
from gradparity.ours.zoo import bn_cnn, cnn, lstm_classifier, resmlp

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


# The zoo of ``gradparity train --model`` (issue 15, item 5) at the sizes it trains on the
# digits: 8x8 images (rows of 8 for the LSTM), 64 features, 10 classes; a small batch keeps
# 200 seeds x 3 scales per model to minutes.
ZOO_SIDE = 8
ZOO_FEATURES = ZOO_SIDE * ZOO_SIDE
ZOO_CLASSES = 10
ZOO_BATCH = 4
ZOO_HIDDEN = 300  # the mlp's hidden units: train's default --hidden
ZOO_DROPOUT = 0.25
IMAGES = (ZOO_BATCH, 1, ZOO_SIDE, ZOO_SIDE)


def _zoo_setup(model: Sequential, seed: int, scale: float, shape: tuple[int, ...]) -> Setup:
    return (as_float32(model), SoftmaxCrossEntropy(), *_batch(seed, scale, shape, ZOO_CLASSES))


def _zoo_assignment(seed: int, scale: float) -> Setup:
    """The assignment's 2-3-2 sigmoid network with its fixed weights; x (4, 2), target in 0..1
    (only the batch changes with the seed)."""
    x, target = _batch(seed, scale, (ZOO_BATCH, 2), 2)
    return as_float32(assignment_network()), SoftmaxCrossEntropy(), x, target


def _zoo_mlp(seed: int, scale: float) -> Setup:
    """x (4, 64) -> 300 sigmoid units -> 10 logits."""
    model = mlp((ZOO_FEATURES, ZOO_HIDDEN, ZOO_CLASSES), seed=seed)
    return _zoo_setup(model, seed, scale, (ZOO_BATCH, ZOO_FEATURES))


def _zoo_cnn(seed: int, scale: float) -> Setup:
    """``ours.zoo.cnn`` on x (4, 1, 8, 8)."""
    return _zoo_setup(cnn(ZOO_SIDE, seed=seed), seed, scale, IMAGES)


def _zoo_bn_cnn_train(seed: int, scale: float) -> Setup:
    """``ours.zoo.bn_cnn`` on x (4, 1, 8, 8) in training mode: batch norm normalises with the
    batch's statistics and updates its running ones (compared too); dropout (p=0.25) applies a
    seeded mask pinned for every run, which the mirror applies as well."""
    model = bn_cnn(ZOO_SIDE, seed=seed, dropout=ZOO_DROPOUT)
    drop = model["drop"]
    assert isinstance(drop, Dropout)  # bn_cnn builds it so
    n_in = model["fc"].params["W"].shape[0]
    keep = np.random.default_rng(seed + 2).random((ZOO_BATCH, n_in)) >= ZOO_DROPOUT
    drop.pinned_mask = keep
    return _zoo_setup(model, seed, scale, IMAGES)


def _zoo_bn_cnn_eval(seed: int, scale: float) -> Setup:
    """``ours.zoo.bn_cnn`` on x (4, 1, 8, 8) in eval mode: batch norm normalises with running
    statistics taken from one training forward of x (so they are not the initial 0 and 1),
    dropout is the identity."""
    model, loss, x, target = _zoo_setup(bn_cnn(ZOO_SIDE, seed=seed), seed, scale, IMAGES)
    model.forward(x)
    for _, layer in model.named_layers():
        if isinstance(layer, (BatchNorm2d, Dropout)):
            layer.eval()
    return model, loss, x, target


def _zoo_resmlp(seed: int, scale: float) -> Setup:
    """``ours.zoo.resmlp`` on x (4, 64): LayerNorm, GELU and residual blocks."""
    return _zoo_setup(resmlp(ZOO_FEATURES, seed=seed), seed, scale, (ZOO_BATCH, ZOO_FEATURES))


def _zoo_lstm(seed: int, scale: float) -> Setup:
    """``ours.zoo.lstm_classifier`` on x (4, 8, 8): an image's 8 rows as a sequence."""
    return _zoo_setup(lstm_classifier(ZOO_SIDE, seed=seed), seed, scale, IMAGES[:1] + IMAGES[2:])


ZOO: dict[str, Callable[[int, float], Setup]] = {
    "assignment": _zoo_assignment,
    "mlp": _zoo_mlp,
    "cnn": _zoo_cnn,
    "bn-cnn-train": _zoo_bn_cnn_train,
    "bn-cnn-eval": _zoo_bn_cnn_eval,
    "resmlp": _zoo_resmlp,
    "lstm": _zoo_lstm,
}
