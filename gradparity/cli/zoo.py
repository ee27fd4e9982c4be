"""Named example setups for the command line: each builds ours, the reference, x and target."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gradparity.core.errors import InputError
from gradparity.ours import Dropout, assignment_data, assignment_network, mlp
from gradparity.ours.containers import Sequential
from gradparity.ours.zoo import bn_cnn, cnn, lstm_classifier, resmlp

if TYPE_CHECKING:  # the command line lists these names without paying for torch
    from torch import nn


@dataclass
class Setup:
    """Everything ``compare`` needs for one named model."""

    name: str
    ours: object
    reference: nn.Module
    x: np.ndarray
    target: np.ndarray
    description: str


def _assignment(seed: int) -> Setup:
    from gradparity.reference import mirror  # torch loads only when a model is built

    ours = assignment_network()
    x, target = assignment_data()
    return Setup(
        "assignment",
        ours,
        mirror(ours),
        x,
        target,
        "the course assignment: 2-3-2 sigmoid network, x = [1, -1], target 0",
    )


def _mlp(seed: int) -> Setup:
    from gradparity.reference import mirror  # torch loads only when a model is built

    ours = mlp((784, 300, 10), seed=seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((16, 784))
    target = rng.integers(0, 10, size=16)
    return Setup(
        "mlp",
        ours,
        mirror(ours),
        x,
        target,
        "784-300-10 sigmoid MLP, random weights and non-zero biases, random batch of 16",
    )


CHECK_SIDE = 28  # check's synthetic inputs are MNIST-sized: 28x28 images, 28 rows of 28
CHECK_BATCH = 8
DROPOUT_P = 0.25


def _synthetic(seed: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A random batch x (CHECK_BATCH, *shape) and class targets (CHECK_BATCH,) in 0..9."""
    rng = np.random.default_rng(seed + 1)
    return rng.standard_normal((CHECK_BATCH, *shape)), rng.integers(0, 10, size=CHECK_BATCH)


def _setup(name: str, ours: Sequential, shape: tuple[int, ...], seed: int, about: str) -> Setup:
    from gradparity.reference import mirror  # torch loads only when a model is built

    x, target = _synthetic(seed, shape)
    return Setup(name, ours, mirror(ours), x, target, about)


def _cnn(seed: int) -> Setup:
    ours = cnn(CHECK_SIDE, seed=seed)
    about = "two conv blocks (Conv2d-ReLU-MaxPool2d) and a linear head, 28x28 images"
    return _setup("cnn", ours, (1, CHECK_SIDE, CHECK_SIDE), seed, about)


def _dropout(model: Sequential) -> Dropout:
    """bn-cnn's dropout layer, "drop"."""
    drop = model["drop"]
    assert isinstance(drop, Dropout)  # bn_cnn builds it so
    return drop


def _bn_cnn(seed: int) -> Setup:
    ours = bn_cnn(CHECK_SIDE, seed=seed, dropout=DROPOUT_P)
    # Dropout stays in training mode with a pinned, seeded mask: the mirror applies the same
    # mask, so both sides drop the same units however often the harness runs the layer.
    n_in = ours["fc"].params["W"].shape[0]
    mask_rng = np.random.default_rng(seed + 2)
    _dropout(ours).pinned_mask = mask_rng.random((CHECK_BATCH, n_in)) >= DROPOUT_P
    about = "cnn with BatchNorm2d (training mode) and Dropout p=0.25 (a pinned mask), 28x28 images"
    return _setup("bn-cnn", ours, (1, CHECK_SIDE, CHECK_SIDE), seed, about)


def _resmlp(seed: int) -> Setup:
    about = "residual MLP: Linear, 2 blocks LayerNorm-Linear-GELU-Linear + skip, head; 784 in"
    return _setup("resmlp", resmlp(CHECK_SIDE * CHECK_SIDE, seed=seed), (784,), seed, about)


def _lstm(seed: int) -> Setup:
    ours = lstm_classifier(CHECK_SIDE, seed=seed)
    about = "LSTM (hidden 32) over the 28 rows of a 28x28 image, last step, linear head"
    return _setup("lstm", ours, (CHECK_SIDE, CHECK_SIDE), seed, about)


MODELS: dict[str, Callable[[int], Setup]] = {
    "assignment": _assignment,
    "mlp": _mlp,
    "cnn": _cnn,
    "bn-cnn": _bn_cnn,
    "resmlp": _resmlp,
    "lstm": _lstm,
}
DEFAULT_MODELS = ("assignment", "mlp")


def build(name: str, seed: int = 0) -> Setup:
    """The named setup; KeyError lists the names there are."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](seed)


# The zoo models ``gradparity train`` takes, beyond mlp and assignment.
TRAIN_ZOO = ("cnn", "bn-cnn", "resmlp", "lstm")


def _image_side(n_features: int) -> int:
    """The side of the square images whose pixels are the n_features columns (8 for digits)."""
    side = int(np.sqrt(n_features))
    if side * side != n_features:
        raise InputError(
            f"the image models need square images: {n_features} features are not a square "
            "number of pixels"
        )
    return side


def train_model(
    name: str, n_features: int, n_classes: int, seed: int
) -> tuple[Sequential, tuple[int, ...]]:
    """A zoo model for ``train`` on flat data (N, n_features), and the shape of one example
    as the model takes it: (1, S, S) images for the conv models, S rows of S for the LSTM,
    (n_features,) for resmlp. bn-cnn's Dropout runs in eval mode (the identity): training
    draws a fresh mask per batch, which the reference could not share; batch norm trains."""
    if name == "resmlp":
        return resmlp(n_features, n_classes, seed=seed), (n_features,)
    side = _image_side(n_features)
    if name == "lstm":
        return lstm_classifier(side, n_classes, seed=seed), (side, side)
    if name == "cnn":
        return cnn(side, n_classes, seed=seed), (1, side, side)
    if name == "bn-cnn":
        model = bn_cnn(side, n_classes, seed=seed, dropout=DROPOUT_P)
        _dropout(model).eval()
        return model, (1, side, side)
    raise KeyError(f"unknown zoo model {name!r}; choose from {', '.join(TRAIN_ZOO)}")
