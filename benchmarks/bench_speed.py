"""Section 1 of ``make bench``: ours against torch, forward+backward in float32.

The 784-300-10 ReLU MLP at batch 128 (target: ours no slower than torch) and the ``cnn`` zoo
model at batch 64 (target: at most 1.5x torch). Ours: clear grads, forward, softmax
cross-entropy, backward; torch: zero_grad, forward, ``F.cross_entropy``, backward, with the
input requiring grad (ours' backward returns dL/dx); torch without the input gradient is
given as information.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch
from bench_common import Figure, Section, interleaved_medians, ours_step, to_float32, torch_step
from torch import nn

from gradparity.ours import Linear, ReLU, Sequential, Tanh
from gradparity.ours.zoo import cnn
from gradparity.reference import mirror

MLP_TARGET = 1.0
CNN_TARGET = 1.5
IMAGE_SIDE = 28  # the zoo's cnn as ``gradparity check --model cnn`` builds it: 28x28 images


@dataclass
class Workload:
    """A model, its torch twin in the same dtype, and one batch (x, integer targets)."""

    name: str
    model: Sequential
    twin: object
    x: np.ndarray
    target: np.ndarray


def mlp32(sizes: tuple[int, ...], batch: int, seed: int = 0, dtype: type = np.float32) -> Workload:
    """A Linear/ReLU MLP in ``dtype`` (``sizes`` in -> hidden... -> classes), x (batch,
    sizes[0])."""
    rng = np.random.default_rng(seed)
    layers: list[tuple[str, object]] = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        if i:
            layers.append((f"act{i}", ReLU()))
        layers.append((f"fc{i + 1}", Linear(n_in, n_out, rng=rng, dtype=dtype)))
    model = Sequential(*layers)  # type: ignore[arg-type]
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    target = rng.integers(0, sizes[-1], size=batch)
    name = "-".join(map(str, sizes)) + f" MLP, batch {batch}, {np.dtype(dtype).name}"
    return Workload(name, model, linear_twin32(model), x, target)


def linear_twin32(model: Sequential) -> nn.Sequential:
    """The torch twin of a Linear/ReLU/Tanh ours model, same names, weights and dtype, built in
    that dtype from the start (``mirror`` builds float64: a large float32 model would briefly
    hold a float64 copy, which a peak memory figure must not count)."""
    modules: dict[str, nn.Module] = {}
    for name, layer in model.named_layers():
        if isinstance(layer, Linear):
            n_in, n_out = layer.params["W"].shape
            wide = layer.params["W"].dtype == np.float64
            module = nn.Linear(n_in, n_out, dtype=torch.float64 if wide else torch.float32)
            with torch.no_grad():
                module.weight.copy_(torch.from_numpy(layer.params["W"].T))
                module.bias.copy_(torch.from_numpy(layer.params["b"]))
            modules[name] = module
        else:
            modules[name] = nn.Tanh() if isinstance(layer, Tanh) else nn.ReLU()
    return nn.Sequential(OrderedDict(modules))


def cnn32(batch: int, seed: int = 0, dtype: type = np.float32) -> Workload:
    """The ``cnn`` zoo model in ``dtype``, x (batch, 1, 28, 28), 10 classes."""
    model = cnn(IMAGE_SIDE, seed=seed)  # float64
    twin = mirror(model)
    if dtype == np.float32:
        model, twin = to_float32(model), twin.float()
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, 1, IMAGE_SIDE, IMAGE_SIDE)).astype(dtype)
    target = rng.integers(0, 10, size=batch)
    name = f"cnn zoo model, batch {batch}, {np.dtype(dtype).name}"
    return Workload(name, model, twin, x, target)  # type: ignore[arg-type]


def ours_vs_torch(work: Workload, target: float, repeats: int) -> list[Figure]:
    """Ours over torch (with dL/dx), and torch without dL/dx as information."""
    medians = interleaved_medians(
        {
            "ours": ours_step(work.model, work.x, work.target),
            "torch": torch_step(work.twin, work.x, work.target),  # type: ignore[arg-type]
            "torch_no_input_grad": torch_step(
                work.twin,  # type: ignore[arg-type]
                work.x,
                work.target,
                input_grad=False,
            ),
        },
        repeats,
    )
    return [
        Figure(work.name, "ours s", medians["ours"], "torch s", medians["torch"], target, repeats),
        Figure(
            f"{work.name} (torch without dL/dx)",
            "ours s",
            medians["ours"],
            "torch s",
            medians["torch_no_input_grad"],
            None,
            repeats,
            note="information",
        ),
    ]


def run(repeats: int, quick: bool) -> Section:
    """Section 1's figures (tiny batches with ``quick``)."""
    mlp_batch, cnn_batch = (8, 4) if quick else (128, 64)
    figures = ours_vs_torch(mlp32((784, 300, 10), mlp_batch), MLP_TARGET, repeats)
    figures += ours_vs_torch(cnn32(cnn_batch), CNN_TARGET, repeats)
    return Section(
        "speed",
        "ours vs torch, forward+backward, float32",
        figures,
        notes=[
            "torch runs with the input requiring grad: ours' backward returns dL/dx, which the "
            "harness compares, so torch is asked for it too; the rows 'without dL/dx' are "
            "information.",
        ],
    )
