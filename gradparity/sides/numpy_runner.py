"""The one protocol the engine runs ours' NumPy code through, whatever its shape: a layered
model (``run_numpy.LayerRunner``), one function returning gradients (``FunctionRunner``) or a
training step (``training_steps.TrainingStepRunner``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from gradparity.sides.function_run import UserRun, run_user


class NumpyRunner(Protocol):
    """Runs ours' code once on (x, target) and returns what it recorded (never raises for an
    error in the user's code: the record says what failed)."""

    def run(self, x: np.ndarray, target: np.ndarray) -> Any:
        """The record of one run on x (N, ...) and target."""
        ...


class FunctionRunner:
    """``grads(x, target)`` of ``compare_function``, run on copies of ``params``."""

    def __init__(self, grads: Callable, params: Any, flat: dict[str, np.ndarray]) -> None:
        self.grads, self.params, self.flat = grads, params, flat

    def run(self, x: np.ndarray, target: np.ndarray) -> UserRun:
        """The gradients, taps and errors of one call (the live parameters left as they were)."""
        return run_user(self.grads, self.params, self.flat, x, target)
