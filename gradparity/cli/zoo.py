"""Named example setups for the command line: each builds ours, the reference, x and target."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gradparity.ours import assignment_data, assignment_network, mlp

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


MODELS: dict[str, Callable[[int], Setup]] = {"assignment": _assignment, "mlp": _mlp}
DEFAULT_MODELS = ("assignment", "mlp")


def build(name: str, seed: int = 0) -> Setup:
    """The named setup; KeyError lists the names there are."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](seed)
