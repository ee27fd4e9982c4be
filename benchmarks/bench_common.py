"""What every ``make bench`` section shares: the figure record, interleaved medians, and the
bare forward+backward of each side that the harness is measured against.

A figure is one ratio: a numerator and a denominator measured in the same run (seconds or
bytes), with its target (``None`` for a figure given as information).
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

import gradparity as gp
from gradparity.ours.losses import SoftmaxCrossEntropy


@dataclass
class Figure:
    """One measured ratio: numerator / denominator, held to ``target`` (at most) when given."""

    name: str
    numerator_label: str
    numerator: float
    denominator_label: str
    denominator: float
    target: float | None
    repeats: int
    unit: str = "s"  # "s" (median seconds) or "bytes" (median peak RSS)
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.numerator / self.denominator

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    def to_dict(self) -> dict:
        """The JSON record: every field, plus ``ratio`` and ``met``."""
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


@dataclass
class Section:
    """One section's figures, the notes under its table, and anything else it measured."""

    key: str
    title: str
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    markdown_extra: str = ""  # a further Markdown table under the figures' (results.md only)

    def to_dict(self) -> dict:
        return {
            "title": self.title,
            "figures": [figure.to_dict() for figure in self.figures],
            "notes": self.notes,
            **self.extra,
        }


def interleaved_medians(
    calls: dict[str, Callable[[], object]], repeats: int, warmups: int = 1
) -> dict[str, float]:
    """Median wall seconds of each call, the calls taking turns so that a change in the
    machine's load falls on all of them alike; ``warmups`` untimed rounds first."""
    for _ in range(warmups):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def compare_accepts(option: str) -> bool:
    """Whether the installed ``gp.compare`` takes keyword ``option`` (the engine is growing
    ``stop_at_first`` and ``streaming``; the bench measures them once they exist)."""
    return option in inspect.signature(gp.compare).parameters


def clear_grads(model: object) -> None:
    """Empty every layer's gradients, as an optimiser's zero_grad does: ours accumulates."""
    for _, layer in model.named_layers():  # type: ignore[attr-defined]
        layer.grads.clear()


def ours_step(model: object, x: np.ndarray, target: np.ndarray) -> Callable[[], np.ndarray]:
    """The bare ours forward+backward: clear grads, forward, softmax cross-entropy, backward
    (returns dL/dx, which the harness compares)."""
    loss = SoftmaxCrossEntropy()

    def step() -> np.ndarray:
        clear_grads(model)
        loss.forward(model.forward(x), target)  # type: ignore[attr-defined]
        return model.backward(loss.backward())  # type: ignore[attr-defined]

    return step


def torch_step(
    module: torch.nn.Module, x: np.ndarray, target: np.ndarray, input_grad: bool = True
) -> Callable[[], None]:
    """The bare torch forward+backward: zero_grad, forward, ``F.cross_entropy``, backward;
    with ``input_grad`` the input requires grad, so dL/dx is computed as ours' backward does."""
    xt = torch.as_tensor(x).requires_grad_(input_grad)
    tt = torch.as_tensor(target)

    def step() -> None:
        module.zero_grad()
        xt.grad = None
        F.cross_entropy(module(xt), tt).backward()

    return step


def to_float32(model: object) -> object:
    """``model`` with every parameter cast to float32 in place (the zoo builds float64)."""
    for _, layer in model.named_layers():  # type: ignore[attr-defined]
        for key, value in layer.params.items():
            layer.params[key] = value.astype(np.float32)
    return model


def both_sides_figure(
    name: str,
    harness_seconds: float,
    bare: Iterable[float],
    target: float | None,
    repeats: int,
    note: str = "",
) -> Figure:
    """The harness's time over the sum of the bare runs (ours + torch) it is held against."""
    return Figure(
        name,
        "harness s",
        harness_seconds,
        "bare both sides s",
        sum(bare),
        target,
        repeats,
        note=note,
    )
