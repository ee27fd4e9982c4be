"""Ready-made networks: the course assignment's and a 784-300-10 MLP."""

from __future__ import annotations

import itertools

import numpy as np

from gradparity.ours.containers import Sequential
from gradparity.ours.layers import Layer, Linear, Sigmoid


def assignment_network() -> Sequential:
    """The three-hidden-unit network of the course assignment, with its fixed weights.

    x (N, 2) -> fc1 (W (2, 3), b 0) -> sigmoid -> fc2 (V (3, 2), c 0) -> logits (N, 2).
    With x = [1, -1] and target 0: loss ln 2, dL/dV rows [-0.44039854, 0.44039854],
    dL/dc [-0.5, 0.5], dL/dW = 0, dL/db = 0.
    """
    fc1 = Linear(2, 3)
    fc1.params["W"] = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
    fc1.params["b"] = np.zeros(3)
    fc2 = Linear(3, 2)
    fc2.params["W"] = np.array([[1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    fc2.params["b"] = np.zeros(2)
    return Sequential(("fc1", fc1), ("act1", Sigmoid()), ("fc2", fc2))


def assignment_data() -> tuple[np.ndarray, np.ndarray]:
    """The assignment's single example: x (1, 2) = [[1, -1]], target (1,) = [0]."""
    return np.array([[1.0, -1.0]]), np.array([0])


def mlp(sizes: tuple[int, ...] = (784, 300, 10), seed: int = 0, activation=Sigmoid) -> Sequential:
    """A fully connected network, ``activation`` between Linear layers, random non-zero biases.

    Layers are named fc1, act1, fc2, ... ; x (N, sizes[0]) -> logits (N, sizes[-1]).
    """
    rng = np.random.default_rng(seed)
    layers: list[tuple[str, Layer]] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes), start=1):
        layers.append((f"fc{i}", Linear(n_in, n_out, rng=rng)))
        if i < len(sizes) - 1:
            layers.append((f"act{i}", activation()))
    return Sequential(*layers)
