"""Measure float32 ``compare_training`` over long runs, judged by measured rounding.

Prints, per optimiser (SGD, SGD with momentum and weight decay, Adam), how many seeds of a
small float32 MLP trained for many steps raise any finding (must be 0) and the largest error
of any tensor at any step as a multiple of its budget (must stay below 1). Every step is
measured, not only the steps the report keeps.

Run: .venv/bin/python benchmarks/float32_training_long.py [--seeds N] [--steps N]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator

import numpy as np
import torch

import gradparity as gp
from gradparity.core.plan import TensorPair
from gradparity.core.tolerance import element_errors, ratio_to_allowed
from gradparity.ours import SGD, Adam, Sigmoid, Tanh, mlp
from gradparity.pipelines import training
from gradparity.reference import mirror

OPTIMIZERS = {
    "sgd": (lambda m: SGD(m, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "momentum": (
        lambda m: SGD(m, lr=0.05, momentum=0.9, weight_decay=0.01),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01),
    ),
    "adam": (lambda m: Adam(m, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
}


def float32_mlp(seed: int):
    """A 5-4-3 MLP (tanh or sigmoid by seed) with float32 parameters."""
    model = mlp((5, 4, 3), seed=seed, activation=Tanh if seed % 2 else Sigmoid)
    for _, layer in model.named_layers():
        for key in list(layer.params):
            layer.params[key] = layer.params[key].astype(np.float32)
    return model


def batches(seed: int, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``steps`` batches of 8 float32 rows (5 features) with labels in 0..2."""
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((8, 5)).astype(np.float32), rng.integers(0, 3, 8))
        for _ in range(steps)
    ]


@contextlib.contextmanager
def every_step_ratio() -> Iterator[list[float]]:
    """Inside: each float32 training step's entries are recorded; on leaving, the list
    yielded holds the worst error / allowed error of every judged tensor of every step."""
    # Each pair's values copied as paired: a side's optimiser state may be a view of a tensor
    # its later steps update in place. Its tolerance is set after pairing, read on leaving.
    recorded: list[tuple[TensorPair, np.ndarray, np.ndarray]] = []
    pairing = training.step_entries

    def recording(*args, **kwargs):
        entries = pairing(*args, **kwargs)
        recorded.extend(
            (e, np.array(e.ours, np.float64), np.array(e.reference, np.float64))
            for e in entries
            if isinstance(e, TensorPair) and e.ours is not None
        )
        return entries

    ratios: list[float] = []
    training.step_entries = recording
    try:
        yield ratios
    finally:
        training.step_entries = pairing
    for entry, ours, ref in recorded:
        if entry.tolerance is not None:  # the twin's own pairings are not judged
            error = element_errors(ours, ref)
            ratios.append(float(ratio_to_allowed(error, entry.tolerance.allowed(ref)).max()))


def long_run(seed: int, steps: int, optimizer: str):
    """A float32 training comparison of ``float32_mlp(seed)`` over ``steps`` batches."""
    model = float32_mlp(seed)
    ours_opt, ref_opt = OPTIMIZERS[optimizer]
    return gp.compare_training(
        model, mirror(model), batches(seed, steps), dtype="float32",
        ours_optimizer=ours_opt, reference_optimizer=ref_opt,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    for name in OPTIMIZERS:
        start, flagged, worst = time.perf_counter(), 0, 0.0
        for seed in range(args.seeds):
            with every_step_ratio() as ratios:
                report = long_run(seed, args.steps, name)
            flagged += bool(report.root_causes)
            worst = max(worst, *ratios)
        print(
            f"{name:9s} {args.seeds} seeds x {args.steps} steps: {flagged} with a finding, "
            f"worst error/budget {worst:.3f} ({time.perf_counter() - start:.0f} s)"
        )


if __name__ == "__main__":
    main()
